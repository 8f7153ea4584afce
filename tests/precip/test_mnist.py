"""MNIST: the IDX reader (precip.idx), checksums, locating and the cached download (no network: fake openers
and file:// URLs only)."""

from __future__ import annotations

import gzip
import hashlib
import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from nowcast_jax.precip import mnist
from nowcast_jax.precip.idx import IDXFormatError, read_idx, write_idx
from nowcast_jax.precip.mnist import (
    ChecksumError,
    MNISTNotFoundError,
    fetch_mnist,
    load_mnist,
    locate_mnist,
    verify_checksum,
)

# From ../shared/data/README.md (kept literal here so the test is independent of the module).
README_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
TEST_NAMES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any urlopen that is not a local file:// URL."""
    real = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        if not str(url).startswith("file:"):
            raise AssertionError(f"test tried to reach the network: {url}")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


# ---------------------------------------------------------------------------------------
# IDX format
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5),
        np.array([7, 2, 1, 0, 4], dtype=np.uint8),
        np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        np.array([[-70000, 5], [3, 2**30]], dtype=np.int32),
    ],
    ids=["uint8-3d", "uint8-1d", "float32", "int32"],
)
def test_idx_round_trip(tmp_path, array, compress):
    path = write_idx(tmp_path / ("x.idx.gz" if compress else "x.idx"), array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if compress else b"\x00\x00")
    got = read_idx(path)
    assert got.dtype == array.dtype.newbyteorder("=") and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_idx_header_layout(tmp_path):
    """Big-endian header by hand: magic 0x00000803, then the three dims."""
    path = write_idx(tmp_path / "x", np.zeros((2, 3, 4), np.uint8), compress=False)
    raw = path.read_bytes()
    assert raw[:16] == bytes.fromhex("00000803 00000002 00000003 00000004")
    assert len(raw) == 16 + 24


def test_gzip_detected_from_content_not_name(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "labels-without-suffix", arr, compress=True)
    np.testing.assert_array_equal(read_idx(path), arr)


def _write(tmp_path, data: bytes, name="bad.idx") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data, message",
    [
        (bytes.fromhex("01000801 00000003") + b"abc", "bad magic"),
        (bytes.fromhex("00000701 00000003") + b"abc", "unknown IDX type"),
        (bytes.fromhex("00000800"), "0 dimensions"),
        (b"\x00\x00", "too short"),
        (bytes.fromhex("00000803 0000000a"), "truncated header"),
        (bytes.fromhex("00000801 00000005") + b"abc", "truncated"),
        (bytes.fromhex("00000801 00000002") + b"abc", "trailing bytes"),
        (bytes.fromhex("00000c01 00000002") + b"\x00" * 7, "needs 8 data bytes"),
    ],
    ids=["magic", "type", "ndim0", "short", "header", "data", "trailing", "int32-bytes"],
)
def test_idx_errors_name_the_problem(tmp_path, data, message):
    with pytest.raises(IDXFormatError, match=message) as err:
        read_idx(_write(tmp_path, data))
    assert "bad.idx" in str(err.value)


def test_truncated_gzip_stream(tmp_path):
    good = gzip.compress(bytes.fromhex("00000801 00000100") + bytes(256))
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(_write(tmp_path, good[: len(good) // 2], "cut.gz"))


def test_truncated_data_inside_valid_gzip(tmp_path):
    data = gzip.compress(bytes.fromhex("00000803 00000002 0000001c 0000001c") + bytes(28 * 28))
    with pytest.raises(IDXFormatError, match=r"truncated: shape \(2, 28, 28\)"):
        read_idx(_write(tmp_path, data, "short.gz"))


# ---------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------


def test_module_checksums_match_readme():
    for name, md5 in README_MD5.items():
        assert mnist.MNIST_FILES[name] == f"md5:{md5}"


def test_real_files_checksum_and_content(mnist_dir):
    for name, md5 in README_MD5.items():
        verify_checksum(mnist_dir / name, md5)  # bare hex = md5
        verify_checksum(mnist_dir / name, f"md5:{md5}")
    images = read_idx(mnist_dir / TEST_NAMES[0])
    labels = read_idx(mnist_dir / TEST_NAMES[1])
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    np.testing.assert_array_equal(labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])  # well-known head
    assert images.max() == 255 and images.min() == 0


def test_checksum_mismatch_and_sha256(tmp_path):
    path = _write(tmp_path, b"hello digits", "f.bin")
    sha = hashlib.sha256(b"hello digits").hexdigest()
    verify_checksum(path, f"sha256:{sha}")
    verify_checksum(path, sha)  # 64 hex chars -> sha256
    with pytest.raises(ChecksumError, match=r"f\.bin: md5 is .* expected 0{32}"):
        verify_checksum(path, "0" * 32)
    with pytest.raises(ChecksumError, match="sha256"):
        verify_checksum(path, "sha256:" + "1" * 64)
    with pytest.raises(ValueError, match="checksum"):
        verify_checksum(path, "crc32:1234")


# ---------------------------------------------------------------------------------------
# Cached download with a fake opener
# ---------------------------------------------------------------------------------------


class FakeServer:
    """``opener(url)``: serves ``files[name]`` for any URL ending in ``/name``; counts calls."""

    def __init__(self, files: dict[str, bytes], fail_prefixes=()):
        self.files = dict(files)
        self.fail_prefixes = tuple(fail_prefixes)
        self.calls: list[str] = []

    def __call__(self, url: str):
        self.calls.append(url)
        if url.startswith(self.fail_prefixes):
            raise OSError("mirror down")
        return io.BytesIO(self.files[url.rsplit("/", 1)[1]])


@pytest.fixture
def small_files():
    """Tiny stand-ins for the test split: (bytes by name, md5 by name)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = np.arange(6, dtype=np.uint8)
    blobs = {}
    for name, arr in zip(TEST_NAMES, (images, labels)):
        buf = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() + arr.tobytes()
        blobs[name] = gzip.compress(buf, mtime=0)
    sums = {name: "md5:" + hashlib.md5(b).hexdigest() for name, b in blobs.items()}
    return blobs, sums, images


MIRROR = "https://mirror.invalid/mnist/"


def test_download_once_then_cache_hit(tmp_path, small_files):
    blobs, sums, images = small_files
    server = FakeServer(blobs)
    cache = tmp_path / "cache"
    out = fetch_mnist(cache, opener=server, mirrors=[MIRROR], checksums=sums)
    assert out == cache and sorted(server.calls) == sorted(MIRROR + n for n in TEST_NAMES)
    np.testing.assert_array_equal(read_idx(cache / TEST_NAMES[0]), images)
    fetch_mnist(cache, opener=server, mirrors=[MIRROR], checksums=sums)
    assert len(server.calls) == 2, "second call must be served from the cache"
    assert sorted(p.name for p in cache.iterdir()) == sorted(TEST_NAMES)  # no .part leftovers


def test_corrupt_cache_is_refetched_or_refused(tmp_path, small_files):
    blobs, sums, _ = small_files
    server = FakeServer(blobs)
    cache = fetch_mnist(tmp_path, opener=server, mirrors=[MIRROR], checksums=sums)
    target = cache / TEST_NAMES[0]
    target.write_bytes(blobs[TEST_NAMES[0]][:-10])  # truncated cached file
    with pytest.raises(ChecksumError, match="corrupt cached file"):
        fetch_mnist(cache, opener=server, mirrors=[MIRROR], checksums=sums, on_corrupt="error")
    assert len(server.calls) == 2
    with pytest.warns(UserWarning, match="corrupt cached file"):
        fetch_mnist(cache, opener=server, mirrors=[MIRROR], checksums=sums)
    assert server.calls[2:] == [MIRROR + TEST_NAMES[0]]  # only the bad file again
    assert target.read_bytes() == blobs[TEST_NAMES[0]]


def test_wrong_bytes_from_mirror_are_refused(tmp_path, small_files):
    blobs, sums, _ = small_files
    bad = dict(blobs, **{TEST_NAMES[1]: blobs[TEST_NAMES[1]] + b"x"})
    with pytest.raises(ChecksumError, match="downloaded https://mirror.invalid/mnist/t10k-labels"):
        fetch_mnist(tmp_path, opener=FakeServer(bad), mirrors=[MIRROR], checksums=sums)
    assert not (tmp_path / TEST_NAMES[1]).exists()
    assert not list(tmp_path.glob("*.part")), "partial download left behind"


def test_mirror_fallback_and_all_down(tmp_path, small_files):
    blobs, sums, _ = small_files
    server = FakeServer(blobs, fail_prefixes=("https://down.invalid/",))
    fetch_mnist(tmp_path / "a", opener=server, mirrors=["https://down.invalid/", MIRROR], checksums=sums)
    assert [u.split("/")[2] for u in server.calls] == ["down.invalid", "mirror.invalid"] * 2
    with pytest.raises(OSError, match="could not download .*mirror down"):
        fetch_mnist(tmp_path / "b", opener=server, mirrors=["https://down.invalid/"], checksums=sums)


def test_refuses_files_without_checksum(tmp_path, small_files):
    blobs, _, _ = small_files
    with pytest.raises(ValueError, match="no checksum"):
        fetch_mnist(tmp_path, opener=FakeServer(blobs), mirrors=[MIRROR], checksums={})


def test_file_url_with_default_opener(tmp_path, small_files):
    """The real urllib path, offline: mirrors given as file:// URLs."""
    blobs, sums, _ = small_files
    served = tmp_path / "served"
    served.mkdir()
    for name, b in blobs.items():
        (served / name).write_bytes(b)
    missing = (tmp_path / "nowhere").as_uri() + "/"
    fetch_mnist(tmp_path / "cache", mirrors=[missing, served.as_uri() + "/"], checksums=sums)
    for name, b in blobs.items():
        assert (tmp_path / "cache" / name).read_bytes() == b


# ---------------------------------------------------------------------------------------
# locate_mnist / load_mnist
# ---------------------------------------------------------------------------------------


def test_mnist_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert mnist.mnist_cache_dir() == tmp_path / "nowcast_jax" / "mnist"


def test_locate_explicit_and_data_root(mnist_dir, monkeypatch, tmp_path):
    assert locate_mnist(mnist_dir) == mnist_dir
    with pytest.raises(MNISTNotFoundError, match="given path"):
        locate_mnist(tmp_path)
    monkeypatch.setenv("NOWCAST_JAX_DATA", str(mnist_dir.parent))
    assert locate_mnist(cache_dir=tmp_path / "unused") == mnist_dir
    monkeypatch.setenv("NOWCAST_JAX_DATA", str(tmp_path / "typo"))
    with pytest.raises(MNISTNotFoundError, match="typo"):
        locate_mnist(cache_dir=tmp_path / "unused")


def test_locate_download_into_cache(mnist_dir, monkeypatch, tmp_path):
    """Data root without mnist -> not found; download=True fills the cache (real md5s)."""
    empty_root = tmp_path / "data"
    empty_root.mkdir()
    monkeypatch.setenv("NOWCAST_JAX_DATA", str(empty_root))
    cache = tmp_path / "cache"
    with pytest.raises(MNISTNotFoundError, match="searched: .*data/mnist, .*cache"):
        locate_mnist(cache_dir=cache)
    mirror = mnist_dir.as_uri() + "/"
    assert locate_mnist(cache_dir=cache, download=True, mirrors=[mirror]) == cache
    assert locate_mnist(cache_dir=cache) == cache  # now a plain cache hit
    (cache / TEST_NAMES[1]).write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ChecksumError, match="download=True"):
        locate_mnist(cache_dir=cache)
    with pytest.warns(UserWarning, match="corrupt"):
        locate_mnist(cache_dir=cache, download=True, mirrors=[mirror])
    verify_checksum(cache / TEST_NAMES[1], README_MD5[TEST_NAMES[1]])


def test_corrupt_user_file_is_reported_not_overwritten(mnist_dir, tmp_path):
    for name in TEST_NAMES:
        (tmp_path / name).write_bytes((mnist_dir / name).read_bytes())
    (tmp_path / TEST_NAMES[0]).write_bytes((mnist_dir / TEST_NAMES[0]).read_bytes()[:-1])
    with pytest.raises(ChecksumError, match="t10k-images"):
        locate_mnist(tmp_path)


def test_load_raw_ungzipped_copies(mnist_dir, tmp_path):
    for name in TEST_NAMES:
        (tmp_path / name.removesuffix(".gz")).write_bytes(gzip.decompress((mnist_dir / name).read_bytes()))
    images, labels = load_mnist(tmp_path)
    ref_images, ref_labels = load_mnist(mnist_dir)
    np.testing.assert_array_equal(images, ref_images)
    np.testing.assert_array_equal(labels, ref_labels)


def test_load_rejects_mismatched_counts(tmp_path):
    write_idx(tmp_path / TEST_NAMES[0], np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / TEST_NAMES[1], np.zeros(4, np.uint8))
    with pytest.raises(IDXFormatError, match="3 images but 4 labels"):
        load_mnist(tmp_path, verify=False)
