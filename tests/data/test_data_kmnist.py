"""KMNIST loader: the IDX mechanism of MNIST, with only the official .gz files accepted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lifelong.data import load_kmnist, md5sum
from lifelong.data import mnist as mnist_mod
from lifelong.errors import DataError


@pytest.fixture(autouse=True)
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unexpected download")

    monkeypatch.setattr(mnist_mod, "download", refuse)


def _gz_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the decompressed MD5s the fake-dataset fixture added, as in the real KMNIST spec."""
    spec = mnist_mod.SPECS["kmnist"]
    files = {name: mnist_mod.FileSpec(fs.md5_gz) for name, fs in spec.files.items()}
    monkeypatch.setitem(mnist_mod.SPECS, "kmnist", dataclasses.replace(spec, files=files))


def test_official_files() -> None:
    # torchvision's datasets.KMNIST.resources; no checksum of the decompressed files is published.
    spec = mnist_mod.SPECS["kmnist"]
    assert {name: fs.md5_gz for name, fs in spec.files.items()} == {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    }
    assert all(fs.md5_raw is None for fs in spec.files.values())
    assert all(m.endswith("codh.rois.ac.jp/kmnist/dataset/kmnist/") for m in spec.mirrors)


@pytest.mark.parametrize("folder", ["kmnist", "KMNIST/raw"])
def test_loads_gz_files(tmp_path: Path, fake_idx_dataset, monkeypatch, folder: str) -> None:
    fake = fake_idx_dataset(tmp_path / "data" / folder, "kmnist", seed=3)
    _gz_only(monkeypatch)
    got = load_kmnist(tmp_path / "data")
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(got, field), getattr(fake, field))
    assert got.x_train.dtype == np.uint8 and got.y_train.dtype == np.int64


def test_decompressed_files_are_not_trusted(
    tmp_path: Path, fake_idx_dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_idx_dataset(tmp_path / "kmnist", "kmnist", gz=False)
    _gz_only(monkeypatch)
    with pytest.raises(DataError) as err:
        load_kmnist(tmp_path, download=False)
    msg = str(err.value)
    raw = fake.files[mnist_mod.TRAIN_IMAGES]
    assert "KMNIST file train-images-idx3-ubyte.gz not found" in msg
    assert f"{raw} was not used: no official MD5 of the decompressed file" in msg
    assert str(tmp_path / "kmnist") in msg and str(tmp_path / "KMNIST" / "raw") in msg


def test_corrupt_file_names_kmnist_and_checksums(
    tmp_path: Path, fake_idx_dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_idx_dataset(tmp_path / "kmnist", "kmnist")
    _gz_only(monkeypatch)
    path = fake.files[mnist_mod.TRAIN_LABELS]
    expected = mnist_mod.SPECS["kmnist"].files[mnist_mod.TRAIN_LABELS].md5_gz
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(DataError) as err:
        load_kmnist(tmp_path)
    msg = str(err.value)
    assert "official KMNIST" in msg and str(path) in msg
    assert expected in msg and md5sum(path) in msg
