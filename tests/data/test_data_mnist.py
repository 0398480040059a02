"""MNIST / Fashion-MNIST loaders on tiny fake files (and on the real files when present)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from lifelong.data import ArraySplits, load_fashion_mnist, load_mnist, md5sum
from lifelong.data import mnist as mnist_mod
from lifelong.errors import DataError

# the module (lifelong.data.download is also the name of its function)
download_mod = importlib.import_module("lifelong.data.download")

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _assert_same(got: ArraySplits, fake) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(got, field), getattr(fake, field))
    assert got.x_train.dtype == np.uint8 and got.y_train.dtype == np.int64
    assert got.y_test.dtype == np.int64


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a loader tries to download."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unexpected download")

    monkeypatch.setattr(mnist_mod, "download", refuse)


def test_loads_gz_files_from_data_dir(tmp_path: Path, fake_idx_dataset, no_download) -> None:
    fake = fake_idx_dataset(tmp_path / "data" / "mnist")
    got = load_mnist(tmp_path / "data")
    _assert_same(got, fake)
    assert got.x_train.shape == (12, 28, 28) and got.x_test.shape == (5, 28, 28)


def test_loads_raw_torchvision_layout_from_env(
    tmp_path: Path, fake_idx_dataset, monkeypatch: pytest.MonkeyPatch, no_download
) -> None:
    fake = fake_idx_dataset(tmp_path / "tv" / "MNIST" / "raw", gz=False)
    assert all(not p.name.endswith(".gz") for p in fake.files.values())
    monkeypatch.setenv("LIFELONG_DATA", str(tmp_path / "tv"))
    _assert_same(load_mnist(), fake)


def test_fashion_uses_its_own_folder(tmp_path: Path, fake_idx_dataset, no_download) -> None:
    fake_idx_dataset(tmp_path / "data" / "mnist", "mnist", seed=1)
    fake = fake_idx_dataset(tmp_path / "data" / "fashion-mnist", "fashion_mnist", seed=2)
    _assert_same(load_fashion_mnist(tmp_path / "data"), fake)


def test_corrupt_file_names_file_and_checksums(tmp_path: Path, fake_idx_dataset) -> None:
    fake = fake_idx_dataset(tmp_path / "mnist")
    path = fake.files[mnist_mod.TEST_LABELS]
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    expected = mnist_mod.SPECS["mnist"].files[mnist_mod.TEST_LABELS].md5_gz
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path)
    msg = str(err.value)
    assert str(path) in msg and expected in msg and md5sum(path) in msg
    assert "delete it" in msg and "\n" not in msg


def test_md5_is_checked_once_per_file_version(
    tmp_path: Path, fake_idx_dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_idx_dataset(tmp_path / "mnist")
    calls: list[Path] = []
    real_md5sum = download_mod.md5sum  # the files are hashed by lifelong.data.download
    monkeypatch.setattr(download_mod, "md5sum", lambda p: calls.append(p) or real_md5sum(p))
    load_mnist(tmp_path)
    load_mnist(tmp_path)
    assert len(calls) == 4

    # A changed file (new size and mtime) is hashed again and caught.
    path = fake.files[mnist_mod.TRAIN_IMAGES]
    path.write_bytes(path.read_bytes() + b"!")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(DataError, match="corrupt"):
        load_mnist(tmp_path)
    assert calls[-1] == path


@pytest.mark.parametrize("how", ["env", "argument"])
def test_missing_file_without_download_says_where_it_looked(
    tmp_path: Path,
    fake_idx_dataset,
    monkeypatch: pytest.MonkeyPatch,
    isolated_env: Path,
    no_download,
    how: str,
) -> None:
    fake = fake_idx_dataset(tmp_path / "data" / "mnist")
    fake.files[mnist_mod.TEST_IMAGES].unlink()
    kwargs = {}
    if how == "env":
        monkeypatch.setenv("LIFELONG_NO_DOWNLOAD", "1")
    else:
        kwargs["download"] = False
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path / "data", **kwargs)
    msg = str(err.value)
    assert mnist_mod.TEST_IMAGES in msg
    for folder in [
        tmp_path / "data" / "mnist",
        tmp_path / "data" / "MNIST" / "raw",
        isolated_env / "mnist",
        isolated_env / "MNIST" / "raw",
    ]:
        assert str(folder) in msg
    assert "--data-dir" in msg and "LIFELONG_DATA" in msg and "\n" not in msg


def test_missing_files_are_downloaded_into_the_cache(
    tmp_path: Path, fake_idx_dataset, monkeypatch: pytest.MonkeyPatch, http_server, isolated_env
) -> None:
    fake = fake_idx_dataset(http_server.root)
    spec = mnist_mod.SPECS["mnist"]
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    monkeypatch.setitem(
        mnist_mod.SPECS,
        "mnist",
        dataclasses.replace(spec, mirrors=(dead, http_server.url)),
    )
    _assert_same(load_mnist(tmp_path / "empty"), fake)
    assert sorted(p.name for p in (isolated_env / "mnist").iterdir()) == sorted(mnist_mod.FILES)

    http_server.stop()
    _assert_same(load_mnist(tmp_path / "empty"), fake)
    assert len(http_server.requests) == 4


def test_failed_download_explains(
    tmp_path: Path, fake_idx_dataset, monkeypatch: pytest.MonkeyPatch, http_server
) -> None:
    fake_idx_dataset(tmp_path / "unused")
    spec = mnist_mod.SPECS["mnist"]
    monkeypatch.setitem(
        mnist_mod.SPECS, "mnist", dataclasses.replace(spec, mirrors=(http_server.url,))
    )
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path / "empty")
    msg = str(err.value)
    assert http_server.url + mnist_mod.TRAIN_IMAGES in msg and "404" in msg
    assert str(tmp_path / "empty" / "mnist") in msg and "LIFELONG_DATA" in msg


def test_label_count_must_match(tmp_path: Path, fake_idx_dataset) -> None:
    fake_idx_dataset(tmp_path / "mnist", n_labels=11)
    with pytest.raises(DataError, match="12 images but .* has 11 labels"):
        load_mnist(tmp_path)


def test_labels_must_be_digits(tmp_path: Path, fake_idx_dataset) -> None:
    fake_idx_dataset(tmp_path / "mnist", n_train=200, max_label=12)
    with pytest.raises(DataError, match="label 12, expected 0..9"):
        load_mnist(tmp_path)


def test_recognises_the_other_dataset(tmp_path: Path, fake_idx_dataset) -> None:
    fake_idx_dataset(tmp_path / "x", "fashion_mnist", seed=2)
    fake = fake_idx_dataset(tmp_path / "x", "mnist", seed=1)
    for path in fake.files.values():
        shutil.move(path, tmp_path / path.name)
    with pytest.raises(DataError, match=r"it is the MNIST train-images-idx3-ubyte\.gz"):
        load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
def test_real_files_from_shared_data(loader, no_download) -> None:
    if not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"real MNIST / Fashion-MNIST files not present in {SHARED_DATA}")
    splits = loader(SHARED_DATA)
    assert splits.x_train.shape == (60000, 28, 28) and splits.x_test.shape == (10000, 28, 28)
    assert splits.y_train.shape == (60000,) and splits.y_test.shape == (10000,)
    assert splits.x_train.dtype == np.uint8 and splits.y_train.dtype == np.int64
    assert set(np.unique(splits.y_train)) == set(range(10)) == set(np.unique(splits.y_test))
    assert splits.num_classes == 10 and splits.x_train.max() == 255
