"""Reading and writing the IDX format of MNIST-style datasets (raw or gzip-compressed).

An IDX file is two zero bytes, a dtype code, the number of dimensions, one big-endian uint32 per
dimension, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lifelong.errors import ConfigError, DataError

# IDX dtype code -> big-endian numpy dtype.
_CODE_TO_DTYPE: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_TO_CODE: dict[tuple[str, int], int] = {
    (dt.kind, dt.itemsize): code for code, dt in _CODE_TO_DTYPE.items()
}
_UINT32_MAX = 2**32 - 1


def _open(path: Path, mode: str) -> BinaryIO:
    if not path.name.endswith(".gz"):
        return open(path, mode)
    if "w" in mode:
        # mtime=0 keeps written files byte-identical across runs.
        return gzip.GzipFile(filename=str(path), mode=mode, mtime=0)
    return gzip.open(path, mode)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed if its name ends in `.gz`) into a native-endian array.

    Raises `DataError`, naming the file, if it is missing, not IDX, truncated or has trailing data.
    The returned array is writable and owns its memory.
    """
    path = Path(path)
    try:
        with _open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError, zlib.error) as e:
        # gzip raises BadGzipFile (an OSError), EOFError on a cut stream, zlib.error on bad data.
        raise DataError(f"cannot read IDX file {path}: {e}") from None

    if len(data) < 4:
        raise DataError(f"{path} is not an IDX file: only {len(data)} bytes")
    zero0, zero1, code, ndim = data[:4]
    if zero0 or zero1:
        raise DataError(f"{path} is not an IDX file: bad magic {data[:4].hex()}")
    if code not in _CODE_TO_DTYPE:
        known = ", ".join(f"0x{c:02X}" for c in _CODE_TO_DTYPE)
        raise DataError(
            f"{path} is not a valid IDX file: unknown dtype code 0x{code:02X} ({known})"
        )
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_len:
        raise DataError(f"{path} is truncated or corrupt: IDX header declares {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _CODE_TO_DTYPE[code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "corrupt (trailing data)"
        raise DataError(
            f"{path} is {what}: header declares shape {list(dims)} of {dtype.name} "
            f"({expected} bytes) but the payload has {actual} bytes"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write `array` as an IDX file, gzip-compressed if `path` ends in `.gz`; returns the path.

    Accepted dtypes: uint8, int8, int16, int32, float32, float64 (any byte order); at least one
    dimension, each below 2**32.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _KIND_TO_CODE.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ConfigError(
            f"cannot write dtype {array.dtype} to IDX; accepted: uint8, int8, int16, int32, "
            "float32, float64"
        )
    if not 1 <= array.ndim <= 255 or any(d > _UINT32_MAX for d in array.shape):
        raise ConfigError(
            f"cannot write shape {list(array.shape)} to IDX; need 1 to 255 dimensions < 2**32"
        )
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    payload = np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()
    with _open(path, "wb") as f:
        f.write(header)
        f.write(payload)
    return path
