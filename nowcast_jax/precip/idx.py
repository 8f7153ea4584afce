"""The IDX file format of the MNIST digits: :func:`read_idx` (gzipped or raw) and :func:`write_idx`.

numpy and the standard library only (never jax).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np


class IDXFormatError(ValueError):
    """An IDX file is malformed: bad magic, bad dimensions, wrong number of bytes."""


# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Whole content of ``path``, gunzipped when it starts with the gzip magic."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, gzip.BadGzipFile) as err:  # truncated / corrupt stream
        raise IDXFormatError(f"{path}: corrupt or truncated gzip stream ({err})") from err


def _parse_idx(buf: bytes, name: str) -> np.ndarray:
    """Parse an in-memory IDX buffer; ``name`` only labels the errors."""
    if len(buf) < 4:
        raise IDXFormatError(f"{name}: {len(buf)} bytes, too short for an IDX header (4 bytes)")
    zero0, zero1, type_code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 != 0 or zero1 != 0:
        raise IDXFormatError(
            f"{name}: bad magic {buf[:4].hex()}: an IDX file starts with two zero bytes"
        )
    if type_code not in _IDX_DTYPES:
        raise IDXFormatError(
            f"{name}: bad magic {buf[:4].hex()}: unknown IDX type byte 0x{type_code:02x} "
            f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})"
        )
    if ndim == 0:
        raise IDXFormatError(f"{name}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(buf) < header_len:
        raise IDXFormatError(
            f"{name}: truncated header: {ndim} dimensions need {header_len} bytes, "
            f"file has {len(buf)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(buf) - header_len
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes"
        raise IDXFormatError(
            f"{name}: {what}: shape {shape} of {dtype} needs {expected} data bytes, "
            f"file has {got}"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header_len).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzipped or raw (detected from the content, not the name).

    Returns an array of the declared shape in native byte order, e.g. ``uint8 [N, 28, 28]``
    for MNIST images and ``uint8 [N]`` for labels. Raises :class:`IDXFormatError` naming
    the problem (bad magic, unknown type, truncated header or data, trailing bytes).
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``compress`` or the name ends in .gz).

    Supported dtypes: uint8, int8, int16, int32, float32, float64; at most 255 dims.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(d).newbyteorder("="): c for c, d in _IDX_DTYPES.items()}
    key = array.dtype.newbyteorder("=")
    if key not in codes:
        raise TypeError(f"write_idx: unsupported dtype {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: IDX needs 1..255 dimensions, got {array.ndim}")
    code = codes[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
