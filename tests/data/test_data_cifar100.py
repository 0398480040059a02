"""CIFAR-100 loader on tiny files written here in the official format (no network)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from cifar_fakes import _pickled
from cifar_fakes import cifar100_batch as _batch
from cifar_fakes import cifar100_batches as _batches
from cifar_fakes import write_cifar100_tarball as _write_tarball

from lifelong.data import cifar100 as cifar100_mod
from lifelong.data import load_cifar100, md5sum
from lifelong.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unexpected download")

    monkeypatch.setattr(cifar100_mod, "download", refuse)


@pytest.fixture
def fake_tarball(monkeypatch: pytest.MonkeyPatch):
    """Write a tiny canonical tarball and accept its MD5 as the official one (as for CIFAR-10)."""

    def make(path: Path, batches: dict[str, dict]) -> Path:
        _write_tarball(path, batches)
        monkeypatch.setattr(cifar100_mod, "TARBALL_MD5", md5sum(path))
        return path

    return make


def _expected(batch: dict, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    x = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, np.array(batch[key], np.int64)


def test_canonical_file_and_checksums() -> None:
    # The published values (cs.toronto.edu; torchvision's datasets.CIFAR100).
    assert cifar100_mod.URL == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert cifar100_mod.TARBALL_MD5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert cifar100_mod.BATCH_MD5 == {"train": "16019d7e3df5f24257cddd939b257f8d",
                                      "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}


@pytest.mark.parametrize("labels,key", [("fine", b"fine_labels"), ("coarse", b"coarse_labels")])
def test_tarball_loads_fine_or_coarse_labels(tmp_path: Path, fake_tarball, labels, key) -> None:
    batches = _batches()
    fake_tarball(tmp_path / "data" / "cifar100" / cifar100_mod.TARBALL, batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy deprecation warning from the unpickler
        got = load_cifar100(tmp_path / "data", labels=labels)
    for split, name in (("train", "train"), ("test", "test")):
        x, y = _expected(batches[name], key)
        np.testing.assert_array_equal(getattr(got, f"x_{split}"), x)
        np.testing.assert_array_equal(getattr(got, f"y_{split}"), y)
    assert got.x_train.shape == (6, 32, 32, 3) and got.x_train.dtype == np.uint8
    assert got.y_train.dtype == np.int64
    # red channel of pixel (row 2, column 5) of image 0 is byte 2*32 + 5 of its CHW row
    assert got.x_train[0, 2, 5, 0] == batches["train"][b"data"][0, 2 * 32 + 5]
    assert not (tmp_path / "data" / "cifar100" / cifar100_mod.BATCHES_DIR).exists()  # no extraction


def test_corrupt_tarball_names_file_and_checksums(tmp_path: Path, fake_tarball) -> None:
    path = fake_tarball(tmp_path / cifar100_mod.TARBALL, _batches())
    expected = cifar100_mod.TARBALL_MD5
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path)
    msg = str(err.value)
    assert str(path) in msg and expected in msg and md5sum(path) in msg
    assert "CIFAR-100" in msg and "delete it" in msg


@pytest.mark.parametrize("how", ["argument", "env"])
def test_missing_with_downloads_disabled_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path, how: str
) -> None:
    kwargs = {"download": False} if how == "argument" else {}
    if how == "env":
        monkeypatch.setenv("LIFELONG_NO_DOWNLOAD", "1")
    with pytest.raises(DataError) as err:
        load_cifar100(tmp_path / "nowhere", **kwargs)
    msg = str(err.value)
    for place in (
        tmp_path / "nowhere" / "cifar100" / cifar100_mod.TARBALL,
        tmp_path / "nowhere" / cifar100_mod.TARBALL,
        tmp_path / "nowhere" / cifar100_mod.BATCHES_DIR,
        isolated_env / "cifar100" / cifar100_mod.TARBALL,
    ):
        assert str(place) in msg
    assert "CIFAR-100 not found" in msg and "downloads are disabled" in msg
    assert "does not exist" in msg and "--data-dir" in msg and "\n" not in msg


def test_extracted_folder_is_checked_and_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = _batches()
    folder = tmp_path / cifar100_mod.BATCHES_DIR
    folder.mkdir()
    for name, batch in batches.items():
        (folder / name).write_bytes(_pickled(batch))
    monkeypatch.setattr(cifar100_mod, "BATCH_MD5", {n: md5sum(folder / n) for n in batches})
    got = load_cifar100(tmp_path)
    np.testing.assert_array_equal(got.x_test, _expected(batches["test"], b"fine_labels")[0])
    np.testing.assert_array_equal(got.y_train, batches["train"][b"fine_labels"])

    (folder / "test").write_bytes(_pickled(_batch(3, 9)))  # another file: wrong checksum
    with pytest.raises(DataError, match=r"test is corrupt or not the official CIFAR-100 test"):
        load_cifar100(tmp_path)


def test_downloads_into_the_cache_once(
    tmp_path: Path, fake_tarball, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    source = fake_tarball(tmp_path / "server" / cifar100_mod.TARBALL, _batches())
    calls: list[tuple] = []

    def fake_download(urls, dest, md5):
        calls.append((list(urls), Path(dest), md5))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(source.read_bytes())
        return Path(dest)

    monkeypatch.setattr(cifar100_mod, "download", fake_download)
    first = load_cifar100(tmp_path / "empty")
    dest = isolated_env / "cifar100" / cifar100_mod.TARBALL
    assert calls == [([cifar100_mod.URL], dest, cifar100_mod.TARBALL_MD5)]
    again = load_cifar100(tmp_path / "empty")  # found in the cache now
    assert len(calls) == 1
    np.testing.assert_array_equal(again.x_train, first.x_train)


def test_label_out_of_range_is_refused(tmp_path: Path, fake_tarball) -> None:
    fake_tarball(tmp_path / cifar100_mod.TARBALL, _batches(coarse_max=25))
    load_cifar100(tmp_path)  # the fine labels are fine
    with pytest.raises(DataError, match=r"has label 2\d, expected 0..19"):
        load_cifar100(tmp_path, labels="coarse")


def test_unknown_labels_kind(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="labels 'medium' is not accepted; use fine or coarse"):
        load_cifar100(tmp_path, labels="medium")  # type: ignore[arg-type]
