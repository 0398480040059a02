"""CIFAR-10 loader on tiny files written here (and the real JPEG zip's listing when present)."""

from __future__ import annotations

import datetime
import io
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cifar_fakes import BATCHES, _pickled
from cifar_fakes import fake_batches as _fake_batches
from cifar_fakes import write_tarball as _write_tarball

from lifelong.data import ArraySplits, load_cifar10, md5sum
from lifelong.data import cifar as cifar_mod
from lifelong.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL_ZIP = SHARED_DATA / "cifar10-jpg" / "cifar10_jpg_q75.zip"


@pytest.fixture(autouse=True)
def no_cifar_download(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On top of conftest's isolated_env: a fresh lossy-copy warning and no real downloads."""
    monkeypatch.setattr(cifar_mod, "_lossy_warned", False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unexpected download")

    monkeypatch.setattr(cifar_mod, "download", refuse)


# --- canonical python format --------------------------------------------------------------------
def _expected(batches: dict[str, dict], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    data = np.concatenate([batches[n][b"data"] for n in names])
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.concatenate([batches[n][b"labels"] for n in names]).astype(np.int64)
    return x, y


def _assert_canonical(got: ArraySplits, batches: dict[str, dict]) -> None:
    x_train, y_train = _expected(batches, cifar_mod.TRAIN_BATCHES)
    x_test, y_test = _expected(batches, cifar_mod.TEST_BATCHES)
    assert got.x_train.shape == (10, 32, 32, 3) and got.x_test.shape == (4, 32, 32, 3)
    assert got.x_train.dtype == np.uint8 and got.y_train.dtype == np.int64
    assert got.x_train.flags.c_contiguous
    np.testing.assert_array_equal(got.x_train, x_train)
    np.testing.assert_array_equal(got.y_train, y_train)
    np.testing.assert_array_equal(got.x_test, x_test)
    np.testing.assert_array_equal(got.y_test, y_test)
    # CHW rows -> HWC: pixel (h=5, w=7), channel c of image 0 sits at c*1024 + 5*32 + 7.
    row = batches["data_batch_1"][b"data"][0]
    for c in range(3):
        assert got.x_train[0, 5, 7, c] == row[c * 1024 + 5 * 32 + 7]


def test_tarball_round_trip(tmp_path: Path, fake_tarball) -> None:
    batches = _fake_batches()
    fake_tarball(tmp_path / "data" / "cifar10" / cifar_mod.TARBALL, batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no lossy warning, no NumPy deprecation warning
        got = load_cifar10(tmp_path / "data", download=True)
    _assert_canonical(got, batches)
    assert not any(tmp_path.joinpath("data", "cifar10").glob(f"{cifar_mod.BATCHES_DIR}*"))


def test_tarball_with_wrong_md5_is_rejected(tmp_path: Path) -> None:
    _write_tarball(tmp_path / "data" / cifar_mod.TARBALL, _fake_batches())
    with pytest.raises(DataError, match="corrupt or not the official CIFAR-10"):
        load_cifar10(tmp_path / "data")


def test_extracted_batches_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _fake_batches()
    folder = tmp_path / "data" / cifar_mod.BATCHES_DIR
    folder.mkdir(parents=True)
    for name, b in batches.items():
        (folder / name).write_bytes(_pickled(b))
    monkeypatch.setattr(cifar_mod, "BATCH_MD5", {n: md5sum(folder / n) for n in BATCHES})
    _assert_canonical(load_cifar10(tmp_path / "data"), batches)


def test_missing_batch_is_an_error(tmp_path: Path, fake_tarball) -> None:
    batches = _fake_batches()
    del batches["data_batch_4"]
    fake_tarball(tmp_path / "data" / cifar_mod.TARBALL, batches)
    with pytest.raises(DataError, match="lacks data_batch_4"):
        load_cifar10(tmp_path / "data")


def test_batch_pickle_may_not_name_other_objects(tmp_path: Path, fake_tarball) -> None:
    batches = _fake_batches()
    bad = dict(batches["test_batch"], extra=datetime.date(2020, 1, 1))
    fake_tarball(tmp_path / "data" / cifar_mod.TARBALL, batches, {"test_batch": _pickled(bad)})
    with pytest.raises(DataError, match="datetime.date"):
        load_cifar10(tmp_path / "data")


def test_canonical_preferred_over_jpeg_copy(tmp_path: Path, fake_tarball) -> None:
    batches = _fake_batches()
    _write_jpeg_zip(tmp_path / "jpg" / "cifar10-jpg" / cifar_mod.JPEG_ZIP)
    # The canonical copy is in the cache, searched last, yet wins over the JPEG copy.
    fake_tarball(tmp_path / "cache" / "cifar10" / cifar_mod.TARBALL, batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_canonical(load_cifar10(tmp_path / "jpg"), batches)


def test_downloads_canonical_tarball_into_cache(
    tmp_path: Path, fake_tarball, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = _fake_batches()
    source = fake_tarball(tmp_path / "server" / cifar_mod.TARBALL, batches)
    calls: list[tuple] = []

    def fake_download(urls, dest, md5):
        calls.append((list(urls), Path(dest), md5))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(source.read_bytes())
        return Path(dest)

    monkeypatch.setattr(cifar_mod, "download", fake_download)
    _assert_canonical(load_cifar10(tmp_path / "empty"), batches)
    dest = tmp_path / "cache" / "cifar10" / cifar_mod.TARBALL
    assert calls == [([cifar_mod.URL], dest, cifar_mod.TARBALL_MD5)]
    _assert_canonical(load_cifar10(tmp_path / "empty"), batches)  # found in the cache now
    assert len(calls) == 1


@pytest.mark.parametrize("how", ["argument", "env"])
def test_nothing_found_with_downloads_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    kwargs = {"download": False} if how == "argument" else {}
    if how == "env":
        monkeypatch.setenv("LIFELONG_NO_DOWNLOAD", "1")
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "nowhere", **kwargs)
    msg = str(info.value)
    for place in (
        tmp_path / "nowhere" / "cifar10" / cifar_mod.TARBALL,
        tmp_path / "nowhere" / cifar_mod.BATCHES_DIR,
        tmp_path / "nowhere" / "cifar10-jpg" / cifar_mod.JPEG_ZIP,
        tmp_path / "cache" / "cifar10" / cifar_mod.TARBALL,
        tmp_path / "cache" / "cifar10-jpg" / cifar_mod.JPEG_ZIP,
    ):
        assert str(place) in msg
    assert "does not exist" in msg and "downloads are disabled" in msg
    assert "LIFELONG_DATA" in msg and "--data-dir" in msg


# --- JPEG copy ----------------------------------------------------------------------------------

# (split, class folder, file name) -> solid colour; listed out of order on purpose.
JPEGS = {
    ("train", "truck", "0001.jpg"): (200, 30, 40),
    ("train", "truck", "0000.jpg"): (10, 220, 60),
    ("train", "airplane", "0000.jpg"): (120, 130, 140),
    ("train", "cat", "0000.jpg"): (250, 250, 5),
    ("test", "ship", "0000.jpg"): (0, 0, 255),
    ("test", "automobile", "0000.jpg"): (60, 90, 180),
}


def _write_jpeg_zip(path: Path, jpegs: dict = JPEGS) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("test", "train"):  # directory entries, as in the real zip
            zf.writestr(f"{split}/", b"")
        for (split, cls, name), colour in jpegs.items():
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), colour).save(buf, "JPEG", quality=100)
            zf.writestr(f"{split}/{cls}/{name}", buf.getvalue())
    return path


def test_jpeg_zip_decoded_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zip_path = _write_jpeg_zip(tmp_path / "data" / "cifar10-jpg" / cifar_mod.JPEG_ZIP)
    with pytest.warns(cifar_mod.LossyDataWarning, match="lossy JPEG copy"):
        got = load_cifar10(tmp_path / "data", download=False)
    assert got.x_train.shape == (4, 32, 32, 3) and got.x_test.shape == (2, 32, 32, 3)
    assert got.x_train.dtype == np.uint8 and got.y_train.dtype == np.int64
    # Ordered by split, class index (airplane=0, cat=3, truck=9, automobile=1, ship=8), file name.
    np.testing.assert_array_equal(got.y_train, [0, 3, 9, 9])
    np.testing.assert_array_equal(got.y_test, [1, 8])
    order = [("train", "airplane", "0000.jpg"), ("train", "cat", "0000.jpg")]
    order += [("train", "truck", "0000.jpg"), ("train", "truck", "0001.jpg")]
    for x, key in zip(got.x_train, order):
        assert np.abs(x.astype(int) - JPEGS[key]).max() <= 3
    assert np.abs(got.x_test[1].astype(int) - JPEGS[("test", "ship", "0000.jpg")]).max() <= 3

    cache_files = list((tmp_path / "cache" / "cifar10").iterdir())
    assert len(cache_files) == 1 and cache_files[0].suffix == ".npz"  # no temp file left behind

    def no_decode(path: Path) -> None:
        raise AssertionError(f"decoded {path} again instead of reading the cache")

    monkeypatch.setattr(cifar_mod, "_decode_jpeg_zip", no_decode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the lossy warning was already given once
        again = load_cifar10(tmp_path / "data", download=False)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, field), getattr(got, field))
    assert zip_path.is_file()


def test_corrupt_cache_file_is_replaced(tmp_path: Path) -> None:
    _write_jpeg_zip(tmp_path / "cifar10_jpg_q75.zip")  # in the data dir itself
    with pytest.warns(cifar_mod.LossyDataWarning):
        first = load_cifar10(tmp_path)
    (cache_file,) = (tmp_path / "cache" / "cifar10").iterdir()
    cache_file.write_bytes(b"half a file")
    again = load_cifar10(tmp_path)
    np.testing.assert_array_equal(again.x_train, first.x_train)
    with np.load(cache_file) as z:
        np.testing.assert_array_equal(z["x_test"], first.x_test)


def test_jpeg_unknown_class_folder(tmp_path: Path) -> None:
    jpegs = {**JPEGS, ("train", "unicorn", "0000.jpg"): (1, 2, 3)}
    _write_jpeg_zip(tmp_path / "cifar10-jpg" / cifar_mod.JPEG_ZIP, jpegs)
    with pytest.warns(cifar_mod.LossyDataWarning), pytest.raises(DataError, match="'unicorn'"):
        load_cifar10(tmp_path)


def test_jpeg_without_pillow_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_jpeg_zip(tmp_path / "cifar10-jpg" / cifar_mod.JPEG_ZIP)
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` fail
    with pytest.warns(cifar_mod.LossyDataWarning):
        with pytest.raises(DataError, match="pip install pillow"):
            load_cifar10(tmp_path)


@pytest.mark.skipif(
    not REAL_ZIP.is_file(),
    reason=f"the real CIFAR-10 JPEG copy is not at {REAL_ZIP} (the ../shared/data folder); "
    "only its listing is checked, never all 60k images decoded",
)
def test_real_jpeg_zip_layout() -> None:
    """The real zip's listing is what the loader expects (decoding it all is too slow here)."""
    from PIL import Image

    counts: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(REAL_ZIP) as zf:
        jpgs = [n for n in zf.namelist() if n.endswith(".jpg")]
        for name in jpgs:
            split, cls, _ = name.split("/")
            counts[split, cls] = counts.get((split, cls), 0) + 1
        with Image.open(io.BytesIO(zf.read(jpgs[0]))) as img:
            assert img.size == (32, 32) and img.format == "JPEG"
    assert counts == {
        **{("train", c): 5000 for c in cifar_mod.CLASSES},
        **{("test", c): 1000 for c in cifar_mod.CLASSES},
    }
