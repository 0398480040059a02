"""Dataset sources: local or downloaded files (MNIST, Fashion-MNIST, KMNIST, CIFAR-10,
CIFAR-100), offline datasets, and the user's own data (arrays, image folders, Hugging Face).

Every loader returns an `ArraySplits` of NumPy arrays; every missing, corrupt or undownloadable
file raises `lifelong.errors.DataError`.
"""

from __future__ import annotations

from lifelong.data.arrays import ArraySplits
from lifelong.data.cifar import load_cifar10
from lifelong.data.cifar100 import load_cifar100
from lifelong.data.custom import from_arrays, from_npz
from lifelong.data.custom_hf import from_hf_dataset
from lifelong.data.custom_images import from_image_folder
from lifelong.data.download import cache_dir, data_dirs, download, downloads_enabled, md5sum
from lifelong.data.embedded import load_digits_splits, load_mnist1d
from lifelong.data.idx import read_idx, write_idx
from lifelong.data.mnist import load_fashion_mnist, load_kmnist, load_mnist

__all__ = [
    "ArraySplits",
    "cache_dir",
    "data_dirs",
    "download",
    "downloads_enabled",
    "from_arrays",
    "from_hf_dataset",
    "from_image_folder",
    "from_npz",
    "load_cifar10",
    "load_cifar100",
    "load_digits_splits",
    "load_fashion_mnist",
    "load_kmnist",
    "load_mnist",
    "load_mnist1d",
    "md5sum",
    "read_idx",
    "write_idx",
]
