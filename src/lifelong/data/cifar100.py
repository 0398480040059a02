"""CIFAR-100: the canonical python tarball, found locally or downloaded.

The canonical `cifar-100-python.tar.gz` (MD5-checked), or its already extracted
`cifar-100-python/` folder (`train` and `test` each MD5-checked), is looked for in `DIR/cifar100/`
or `DIR` itself for every `DIR` of `data_dirs()`; otherwise the tarball is downloaded into
`cache_dir()/cifar100/`, unless downloads are disabled. The two pickled batches are read straight
from the tarball with the restricted unpickler shared with CIFAR-10
(`lifelong.data.cifar_canonical`): nothing is extracted to disk and only NumPy arrays, lists,
bytes and numbers are unpickled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from lifelong.data.arrays import ArraySplits
from lifelong.data.cifar_canonical import CanonicalSpec, download_canonical, find_canonical
from lifelong.data.download import data_dirs, download
from lifelong.errors import ConfigError

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
TARBALL = "cifar-100-python.tar.gz"
TARBALL_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
BATCHES_DIR = "cifar-100-python"
TRAIN_BATCHES = ("train",)
TEST_BATCHES = ("test",)
# MD5s of the files inside the official tarball (as listed by torchvision's datasets.CIFAR100),
# to check an already extracted copy.
BATCH_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
}
SUBDIRS = ("cifar100", "")  # the first receives downloads
# The pickles' label keys and how many classes each labelling has.
LABELS = {"fine": (b"fine_labels", 100), "coarse": (b"coarse_labels", 20)}


def load_cifar100(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
    labels: Literal["fine", "coarse"] = "fine",
) -> ArraySplits:
    """CIFAR-100 (Krizhevsky 2009): uint8 HWC images `[50000, 32, 32, 3]` / `[10000, 32, 32, 3]`
    and int64 labels: the 100 fine classes (0-99, `labels="fine"`) or the 20 superclasses (0-19,
    `labels="coarse"`), numbered as in the official files.

    `data_dir` overrides `$LIFELONG_DATA`; `download=None` downloads the canonical tarball when no
    local copy is found unless `$LIFELONG_NO_DOWNLOAD` is set, `False` never downloads, `True`
    always may. See the module docstring for where copies are looked for.
    """
    if labels not in LABELS:
        raise ConfigError(f"CIFAR-100 labels '{labels}' is not accepted; use fine or coarse")
    label_key, num_classes = LABELS[labels]
    # Built at call time from the module constants, so that tests can patch them.
    spec = CanonicalSpec(
        "CIFAR-100", URL, TARBALL, TARBALL_MD5, BATCHES_DIR, TRAIN_BATCHES, TEST_BATCHES,
        BATCH_MD5, SUBDIRS, label_key, num_classes,
    )
    dirs = data_dirs(data_dir)
    found = find_canonical(spec, dirs)
    if found is not None:
        return found
    return download_canonical(spec, dirs, download, _fetch)


def _fetch(urls: list[str], dest: Path, md5: str) -> Path:
    # Inside load_cifar100 `download` is the argument; here it is this module's download function,
    # looked up at call time so that tests can replace it.
    return download(urls, dest, md5)
