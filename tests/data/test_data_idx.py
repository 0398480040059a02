"""IDX reading and writing: format bytes, round trips, and clear errors on bad files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from lifelong.data import read_idx, write_idx
from lifelong.errors import ConfigError, DataError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _sample(dtype: type, shape: tuple[int, ...] = (3, 4, 5)) -> np.ndarray:
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    flat = np.linspace(float(info.min) / 2, float(info.max) / 2, num=int(np.prod(shape)))
    arr = flat.astype(dtype).reshape(shape)
    arr.flat[0], arr.flat[-1] = info.min, info.max
    return arr


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip(tmp_path: Path, dtype: type, suffix: str) -> None:
    arr = _sample(dtype)
    path = write_idx(tmp_path / f"a.idx{suffix}", arr)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert back.flags.writeable and back.flags.owndata
    with open(path, "rb") as f:
        is_gzip = f.read(2) == b"\x1f\x8b"
    assert is_gzip == (suffix == ".gz")


@pytest.mark.parametrize("shape", [(7,), (0, 28, 28), (2, 1, 3, 1)])
def test_round_trip_shapes(tmp_path: Path, shape: tuple[int, ...]) -> None:
    arr = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.gz", arr)), arr)
    assert read_idx(tmp_path / "a.gz").shape == shape


def test_written_bytes_follow_the_format(tmp_path: Path) -> None:
    arr = np.array([[1, -2, 3], [4, 5, 258]], dtype="<i4")
    path = write_idx(tmp_path / "a.idx", arr)
    expected = bytes([0, 0, 0x0C, 2]) + struct.pack(">II", 2, 3) + struct.pack(">6i", *arr.flat)
    assert path.read_bytes() == expected
    with gzip.open(write_idx(tmp_path / "a.idx.gz", arr)) as f:
        assert f.read() == expected


def test_reads_a_hand_made_ubyte_file(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + bytes([7, 2, 1, 0]))
    back = read_idx(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, [7, 2, 1, 0])


def test_big_endian_input_round_trips(tmp_path: Path) -> None:
    arr = np.array([1.5, -2.25, 1e30], dtype=">f4")
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a", arr)), arr.astype("<f4"))


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_truncated_payload_names_the_file(tmp_path: Path, suffix: str) -> None:
    good = tmp_path / "good"
    write_idx(good, np.zeros((4, 28, 28), dtype=np.uint8))
    bad = tmp_path / f"cut-idx3-ubyte{suffix}"
    data = good.read_bytes()[:-1]
    if suffix:
        bad.write_bytes(gzip.compress(data))
    else:
        bad.write_bytes(data)
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(bad)
    assert str(bad) in str(err.value)


def test_trailing_data_is_an_error(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a", np.zeros(3, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DataError, match="trailing") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_cut_gzip_stream_names_the_file(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "a.gz", np.arange(1000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_not_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.gz"
    path.write_bytes(b"this is not gzip data")
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "header, pattern",
    [
        (bytes([1, 0, 8, 1]) + struct.pack(">I", 0), "magic"),
        (bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 0), "dtype code 0x0A"),
        (bytes([0, 0, 8, 3]) + struct.pack(">I", 5), "header"),
        (bytes([0, 0, 8]), "only 3 bytes"),
        (bytes([0, 0, 8, 0]), "0 dimensions"),
    ],
)
def test_bad_header_names_the_file(tmp_path: Path, header: bytes, pattern: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(header)
    with pytest.raises(DataError, match=pattern) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope.gz")


@pytest.mark.parametrize("bad", [np.zeros(3, dtype=np.int64), np.zeros(3, dtype=bool), 5])
def test_write_rejects_unsupported_arrays(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError):
        write_idx(tmp_path / "a", bad)
    assert not (tmp_path / "a").exists()
