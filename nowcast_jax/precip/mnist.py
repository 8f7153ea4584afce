"""MNIST digits: checksums, locating the files and a cached download.

numpy and the standard library only (never jax); the IDX files are read by
:mod:`nowcast_jax.precip.idx`.

Where the digits come from (:func:`locate_mnist`), first match wins:

1. an explicit ``path`` (a folder holding the ``.gz`` or raw IDX files); when given and the
   files are not there this is an error, never a silent fallback;
2. ``data_root()/mnist`` (``$NOWCAST_JAX_DATA/mnist`` or ``../shared/data/mnist``);
3. the cache folder (``cache_dir`` or :func:`mnist_cache_dir`);
4. with ``download=True`` only: a download into the cache (:func:`fetch_mnist`), each file
   checked against its md5 before it is moved into place.

Every file named in :data:`MNIST_FILES` is checked against its checksum when it is located
(``verify=True``), so a truncated or corrupted copy is reported, not silently read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Mapping

import numpy as np

from nowcast_jax._paths import data_root
from nowcast_jax.precip.idx import IDXFormatError, read_idx

# Canonical md5 of the four gzipped MNIST files (the test pair is also given in
# ../shared/data/README.md).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
}

# split -> (images file, labels file)
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Base URLs tried in order; a file's URL is base + file name.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

Opener = Callable[[str], BinaryIO]
"""``opener(url)`` returns a readable binary file object (a context manager is fine)."""


class ChecksumError(ValueError):
    """A file's digest does not match the expected one."""


class MNISTNotFoundError(FileNotFoundError):
    """The MNIST files are in none of the searched places (and no download was asked)."""


# --------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------


def _split_checksum(expected: str) -> tuple[str, str]:
    """``"md5:<hex>"``, ``"sha256:<hex>"`` or bare hex (32 chars md5, 64 sha256)."""
    if ":" in expected:
        algo, digest = expected.split(":", 1)
    else:
        digest = expected
        algo = {32: "md5", 64: "sha256"}.get(len(expected), "")
    algo, digest = algo.lower(), digest.lower()
    if algo not in ("md5", "sha256"):
        raise ValueError(f"checksum {expected!r}: use 'md5:<hex>', 'sha256:<hex>' or bare hex")
    return algo, digest


def file_digest(path: str | os.PathLike, algo: str = "md5") -> str:
    """Hex digest of a file's bytes (``algo`` = "md5" or "sha256")."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: str | os.PathLike, expected: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the ``expected`` digest.

    ``expected``: ``"md5:<hex>"``, ``"sha256:<hex>"`` or bare hex (length picks the algo).
    """
    algo, digest = _split_checksum(expected)
    got = file_digest(path, algo)
    if got != digest:
        raise ChecksumError(f"{path}: {algo} is {got}, expected {digest} (corrupt or wrong file)")


# --------------------------------------------------------------------------------------
# Locating and downloading
# --------------------------------------------------------------------------------------


def mnist_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nowcast_jax/mnist`` (``~/.cache/nowcast_jax/mnist`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nowcast_jax" / "mnist"


def _split_names(split: str) -> tuple[str, str]:
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown MNIST split {split!r}; expected one of {sorted(SPLIT_FILES)}")
    return SPLIT_FILES[split]


def _find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or, for ``x.gz``, the raw ``folder/x``; None when neither exists."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _files_in(folder: Path, split: str, verify: bool) -> dict[str, Path] | None:
    """Map file name -> path when every file of ``split`` is in ``folder``; else None.

    Gzipped files are checked against :data:`MNIST_FILES` when ``verify`` (raw, already
    gunzipped copies have no published checksum and are validated by the IDX reader).
    """
    found = {}
    for name in _split_names(split):
        path = _find_file(folder, name)
        if path is None:
            return None
        if verify and path.name == name:
            verify_checksum(path, MNIST_FILES[name])
        found[name] = path
    return found


def _default_opener(url: str) -> BinaryIO:
    return urllib.request.urlopen(url, timeout=60)  # noqa: S310 (http(s)/file URLs only)


def _download_one(
    name: str,
    dest_dir: Path,
    mirrors: Iterable[str],
    opener: Opener,
    checksum: str,
) -> Path:
    """Fetch ``name`` from the first working mirror into ``dest_dir``, checksum verified.

    The file is written to a temporary name in ``dest_dir`` and renamed only after its
    checksum matches, so an interrupted download never leaves a half file under the real
    name. Raises :class:`ChecksumError` if a mirror serves wrong bytes (no further mirror
    is tried: a wrong file is a red flag, not a network hiccup) and :class:`OSError` if
    every mirror fails.
    """
    errors = []
    for base in mirrors:
        url = base + name if base.endswith("/") else f"{base}/{name}"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest_dir)
        tmp = Path(tmp_name)
        try:
            try:
                with os.fdopen(fd, "wb") as out:
                    with contextlib.closing(opener(url)) as src:
                        shutil.copyfileobj(src, out)
            except (OSError, ValueError) as err:  # URLError is an OSError; bad URL a ValueError
                errors.append(f"{url}: {err}")
                continue
            try:
                verify_checksum(tmp, checksum)
            except ChecksumError as err:
                raise ChecksumError(f"downloaded {url}: {err}") from None
            final = dest_dir / name
            os.replace(tmp, final)
            return final
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError(f"could not download {name}: " + "; ".join(errors or ["no mirrors given"]))


def fetch_mnist(
    dest_dir: str | os.PathLike | None = None,
    *,
    split: str = "test",
    mirrors: Iterable[str] | None = None,
    opener: Opener | None = None,
    checksums: Mapping[str, str] | None = None,
    on_corrupt: str = "refetch",
) -> Path:
    """Make sure the ``split`` files are in ``dest_dir`` (default: the cache), downloading.

    Args:
      dest_dir: target folder (created); default :func:`mnist_cache_dir`.
      split: ``"test"`` (10,000 digits) or ``"train"`` (60,000).
      mirrors: base URLs tried in order (default :data:`MNIST_MIRRORS`); ``file://`` works.
      opener: ``opener(url) -> binary file object`` (default ``urllib.request.urlopen``);
        inject a fake in tests so nothing touches the network.
      checksums: file name -> expected checksum (default :data:`MNIST_FILES`).
      on_corrupt: what to do with a file already in ``dest_dir`` whose checksum is wrong:
        ``"refetch"`` (warn, download again) or ``"error"`` (raise :class:`ChecksumError`).

    Files already present with the right checksum are not downloaded again.
    Returns ``dest_dir``.
    """
    if on_corrupt not in ("refetch", "error"):
        raise ValueError(f"on_corrupt must be 'refetch' or 'error', got {on_corrupt!r}")
    dest = Path(dest_dir) if dest_dir is not None else mnist_cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    mirrors = tuple(MNIST_MIRRORS if mirrors is None else mirrors)
    opener = opener or _default_opener
    checksums = dict(MNIST_FILES if checksums is None else checksums)
    for name in _split_names(split):
        if name not in checksums:
            raise ValueError(f"no checksum for {name}: refusing to download unverified files")
        if not _cached(dest / name, checksums[name], on_corrupt):
            _download_one(name, dest, mirrors, opener, checksums[name])
    return dest


def _cached(target: Path, checksum: str, on_corrupt: str) -> bool:
    """Whether ``target`` is there with the right checksum; a corrupt copy is removed (warned)
    with ``on_corrupt="refetch"``, else reported."""
    if not target.is_file():
        return False
    try:
        verify_checksum(target, checksum)
        return True
    except ChecksumError as err:
        if on_corrupt == "error":
            raise ChecksumError(f"corrupt cached file: {err}; delete it to re-download") from None
        warnings.warn(f"corrupt cached file, downloading again: {err}", stacklevel=3)
        target.unlink()
        return False


def locate_mnist(
    path: str | os.PathLike | None = None,
    *,
    split: str = "test",
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    verify: bool = True,
    mirrors: Iterable[str] | None = None,
    opener: Opener | None = None,
) -> Path:
    """Return the folder holding the MNIST ``split`` files (see the module doc for the order).

    Raises :class:`MNISTNotFoundError` listing every place searched, :class:`ChecksumError`
    for a corrupt file found in a user or data folder (those are never overwritten; a
    corrupt *cache* file is re-downloaded when ``download`` else reported).
    """
    if path is not None:
        return _given_folder(Path(path).expanduser(), split, verify)
    searched = []
    root = data_root()
    if root is not None and os.environ.get("NOWCAST_JAX_DATA") and not root.is_dir():
        raise MNISTNotFoundError(f"NOWCAST_JAX_DATA={root} does not exist (typo?)")
    if root is not None:
        folder = root / "mnist"
        searched.append(str(folder))
        if folder.is_dir() and _files_in(folder, split, verify) is not None:
            return folder
    cache = Path(cache_dir).expanduser() if cache_dir is not None else mnist_cache_dir()
    searched.append(str(cache))
    if download:
        return fetch_mnist(cache, split=split, mirrors=mirrors, opener=opener)
    try:
        if cache.is_dir() and _files_in(cache, split, verify) is not None:
            return cache
    except ChecksumError as err:
        raise ChecksumError(f"corrupt cached file: {err}; pass download=True to fetch it again") from None
    raise MNISTNotFoundError(
        f"MNIST {split} files {list(_split_names(split))} not found; searched: "
        + ", ".join(searched)
        + ". Pass a path, set NOWCAST_JAX_DATA, or download=True to fetch into the cache."
    )


def _given_folder(folder: Path, split: str, verify: bool) -> Path:
    """``folder`` when it holds the ``split`` files (checked); else :class:`MNISTNotFoundError`."""
    if not folder.is_dir() or _files_in(folder, split, verify) is None:
        raise MNISTNotFoundError(f"MNIST {split} files {list(_split_names(split))} not found in {folder} (given path)")
    return folder


def load_mnist(
    path: str | os.PathLike | None = None, *, split: str = "test", **locate_kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """Locate and read one split: ``(images uint8 [N, 28, 28], labels uint8 [N])``.

    ``locate_kwargs`` go to :func:`locate_mnist` (``cache_dir``, ``download``, ...).
    """
    folder = locate_mnist(path, split=split, **locate_kwargs)
    img_name, lab_name = _split_names(split)
    images = read_idx(_find_file(folder, img_name))
    labels = read_idx(_find_file(folder, lab_name))
    if images.ndim != 3 or labels.ndim != 1:
        raise IDXFormatError(
            f"{folder}: expected images [N, H, W] and labels [N], got {images.shape} and {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise IDXFormatError(
            f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels"
        )
    return images, labels
