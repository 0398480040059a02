"""MNIST, Fashion-MNIST and KMNIST from their four official IDX files: found locally or downloaded.

Each file is looked for in every directory of `data_dirs()`, in the dataset's usual subfolders
(`mnist/`, torchvision's `MNIST/raw/`, then the directory itself), compressed (`.gz`) or not. Every
file found is MD5-checked against the official checksum (once per path, size and mtime in a
process). A file found nowhere is downloaded into the cache, unless downloads are disabled.
A decompressed file is only accepted where the MD5 of the decompressed official file is known
(not for KMNIST, whose publishers and torchvision give the `.gz` MD5s only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifelong.data.arrays import ArraySplits
from lifelong.data.download import (
    cache_dir,
    cached_md5,
    data_dirs,
    download,
    downloads_enabled,
)
from lifelong.data.idx import read_idx
from lifelong.errors import DataError

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


@dataclass(frozen=True)
class FileSpec:
    """Official MD5s of one file, compressed (as published) and decompressed (None where no
    trustworthy checksum of the decompressed file is known: only the `.gz` is then accepted)."""

    md5_gz: str
    md5_raw: str | None = None


@dataclass(frozen=True)
class IdxDatasetSpec:
    """Where an IDX image dataset lives and how to recognise its files."""

    name: str
    subdirs: tuple[str, ...]  # searched under each data dir in order; the first receives downloads
    mirrors: tuple[str, ...]  # base URLs, each ending in "/"
    files: Mapping[str, FileSpec]  # official .gz file name -> checksums
    image_shape: tuple[int, int] = (28, 28)
    num_classes: int = 10


# The *.gz MD5s are the official ones; the raw MD5s are those of the decompressed official files.
SPECS: dict[str, IdxDatasetSpec] = {
    "mnist": IdxDatasetSpec(
        name="MNIST",
        subdirs=("mnist", "MNIST/raw", ""),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        files={
            TRAIN_IMAGES: FileSpec(
                "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"
            ),
            TRAIN_LABELS: FileSpec(
                "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"
            ),
            TEST_IMAGES: FileSpec(
                "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"
            ),
            TEST_LABELS: FileSpec(
                "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"
            ),
        },
    ),
    "fashion_mnist": IdxDatasetSpec(
        name="Fashion-MNIST",
        subdirs=("fashion-mnist", "FashionMNIST/raw", ""),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files={
            TRAIN_IMAGES: FileSpec(
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"
            ),
            TRAIN_LABELS: FileSpec(
                "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"
            ),
            TEST_IMAGES: FileSpec(
                "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"
            ),
            TEST_LABELS: FileSpec(
                "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"
            ),
        },
    ),
    # Kuzushiji-MNIST (Clanuwat et al. 2018), CC BY-SA 4.0. The .gz MD5s are those of torchvision's
    # datasets.KMNIST (the same in every copy we checked); no published MD5 of the decompressed
    # files was found, so only the .gz files are accepted.
    "kmnist": IdxDatasetSpec(
        name="KMNIST",
        subdirs=("kmnist", "KMNIST/raw", ""),
        mirrors=(
            "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        ),
        files={
            TRAIN_IMAGES: FileSpec("bdb82020997e1d708af4cf47b453dcf7"),
            TRAIN_LABELS: FileSpec("e144d726b3acfaa3e44228e80efcd344"),
            TEST_IMAGES: FileSpec("5c965bf0a639b31b8f53240b1b52f4d7"),
            TEST_LABELS: FileSpec("7320c461ea6c1c855c0b718fb2a4b134"),
        },
    ),
}


def load_mnist(
    data_dir: str | os.PathLike | None = None, *, download: bool | None = None
) -> ArraySplits:
    """MNIST: uint8 images `[60000, 28, 28]` / `[10000, 28, 28]`, int64 labels 0-9.

    `data_dir` overrides `$LIFELONG_DATA`; `download=None` downloads missing files unless
    `$LIFELONG_NO_DOWNLOAD` is set, `False` never downloads, `True` always may.
    """
    return load_idx_dataset(SPECS["mnist"], data_dir, download=download)


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None, *, download: bool | None = None
) -> ArraySplits:
    """Fashion-MNIST: uint8 images `[60000, 28, 28]` / `[10000, 28, 28]`, int64 labels 0-9.

    Arguments as for `load_mnist`.
    """
    return load_idx_dataset(SPECS["fashion_mnist"], data_dir, download=download)


def load_kmnist(
    data_dir: str | os.PathLike | None = None, *, download: bool | None = None
) -> ArraySplits:
    """KMNIST (Kuzushiji-MNIST, Clanuwat et al. 2018): 10 classes of cursive Japanese
    characters, uint8 images `[60000, 28, 28]` / `[10000, 28, 28]`, int64 labels 0-9.

    Files are looked for in `DIR/kmnist/`, torchvision's `DIR/KMNIST/raw/` or `DIR` itself, as the
    official `.gz` files only (see the module docstring). Arguments as for `load_mnist`.
    """
    return load_idx_dataset(SPECS["kmnist"], data_dir, download=download)


def load_idx_dataset(
    spec: IdxDatasetSpec, data_dir: str | os.PathLike | None = None, *, download: bool | None = None
) -> ArraySplits:
    """Load the four files of `spec` (see the module docstring for where they are looked for)."""
    dirs = data_dirs(data_dir)
    paths = {name: _locate(spec, name, dirs, download) for name in FILES}
    x_train, y_train = _checked_pair(spec, paths[TRAIN_IMAGES], paths[TRAIN_LABELS])
    x_test, y_test = _checked_pair(spec, paths[TEST_IMAGES], paths[TEST_LABELS])
    return ArraySplits(x_train, y_train, x_test, y_test)


def _names(spec: IdxDatasetSpec, name: str) -> tuple[str, ...]:
    """Accepted names of file `name`: the .gz, then the decompressed file if it can be checked."""
    raw = name.removesuffix(".gz")
    return (name, raw) if spec.files[name].md5_raw else (name,)


def _candidates(spec: IdxDatasetSpec, name: str, dirs: list[Path]) -> list[Path]:
    """Every path where `name` may be, in search order (the .gz before the decompressed file)."""
    return [d / sub / n for d in dirs for sub in spec.subdirs for n in _names(spec, name)]


def _locate(spec: IdxDatasetSpec, name: str, dirs: list[Path], download_arg: bool | None) -> Path:
    """The verified path of `name`, downloading it into the cache if it is found nowhere."""
    for path in _candidates(spec, name, dirs):
        if path.is_file():
            _verify(spec, name, path)
            return path

    searched = ", ".join(str(d / sub) if sub else str(d) for d in dirs for sub in spec.subdirs)
    missing_roots = [str(d) for d in dirs[:-1] if not d.is_dir()]
    note = f" ({', '.join(missing_roots)} does not exist)" if missing_roots else ""
    fix = (
        f"fix: pass --data-dir DIR or set LIFELONG_DATA=DIR, where DIR/{spec.subdirs[0]}/ holds "
        f"the official {name}"
    )
    raw = name.removesuffix(".gz")
    what = f"{name} (or {raw})" if len(_names(spec, name)) > 1 else name
    if len(_names(spec, name)) == 1:
        unverifiable = [d / sub / raw for d in dirs for sub in spec.subdirs]
        unverifiable = [p for p in unverifiable if p.is_file()]
        if unverifiable:
            note += (
                f"; {unverifiable[0]} was not used: no official MD5 of the decompressed file is "
                f"known, so only the official {name} can be verified"
            )
    if not downloads_enabled(download_arg):
        raise DataError(
            f"{spec.name} file {what} not found; searched: {searched}{note}; downloads are "
            f"disabled (download=False or LIFELONG_NO_DOWNLOAD is set); {fix}"
        )
    dest = cache_dir() / spec.subdirs[0] / name
    try:
        return download([m + name for m in spec.mirrors], dest, spec.files[name].md5_gz)
    except DataError as e:
        raise DataError(
            f"{spec.name} file {name} not found (searched: {searched}{note}) and {e}; {fix}"
        ) from None


def _verify(spec: IdxDatasetSpec, name: str, path: Path) -> None:
    """Raise `DataError` unless `path` has the official MD5 (compressed or not, by its name)."""
    expected = spec.files[name].md5_gz if path.name.endswith(".gz") else spec.files[name].md5_raw
    try:
        actual = cached_md5(path)
    except OSError as e:
        raise DataError(f"cannot read {spec.name} file {path}: {e}") from None
    if actual == expected:
        return
    hint = _recognise(actual)
    raise DataError(
        f"{path} is corrupt or not the official {spec.name} {path.name}: md5 {actual}, expected "
        f"{expected}{hint}; delete it (a missing file is downloaded again) or replace it with "
        "the official file"
    )


def _recognise(md5: str) -> str:
    """' (it is the MNIST train-images-...)' when `md5` is another known file, else ''."""
    for spec in SPECS.values():
        for fname, fs in spec.files.items():
            if md5 == fs.md5_gz:
                return f" (it is the {spec.name} {fname})"
            if fs.md5_raw and md5 == fs.md5_raw:
                return f" (it is the {spec.name} {fname.removesuffix('.gz')})"
    return ""


def _checked_pair(
    spec: IdxDatasetSpec, images_path: Path, labels_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Images and int64 labels of one split, after checking shapes, dtypes and label range."""
    x, y = read_idx(images_path), read_idx(labels_path)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != spec.image_shape:
        raise DataError(
            f"{spec.name} file {images_path} holds {x.dtype} {list(x.shape)}, expected uint8 "
            f"[N, {spec.image_shape[0]}, {spec.image_shape[1]}]"
        )
    if y.dtype != np.uint8 or y.ndim != 1:
        raise DataError(
            f"{spec.name} file {labels_path} holds {y.dtype} {list(y.shape)}, expected uint8 [N]"
        )
    if len(x) != len(y):
        raise DataError(
            f"{spec.name} file {images_path} has {len(x)} images "
            f"but {labels_path} has {len(y)} labels"
        )
    if y.size and int(y.max()) >= spec.num_classes:
        raise DataError(
            f"{spec.name} file {labels_path} has label {int(y.max())}, "
            f"expected 0..{spec.num_classes - 1}"
        )
    return x, y.astype(np.int64)
