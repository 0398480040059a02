"""Tiny CIFAR-10 files in the canonical python-pickle format, written by the tests."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from lifelong.data import cifar as cifar_mod
from lifelong.data import cifar100 as cifar100_mod

BATCHES = (*cifar_mod.TRAIN_BATCHES, *cifar_mod.TEST_BATCHES)


def _batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": f"batch {seed}".encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def _pickled(batch: dict) -> bytes:
    # Protocol 2 like the official (Python 2) files, which name the NumPy 1 module.
    raw = pickle.dumps(batch, protocol=2)
    raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    return raw


def fake_batches() -> dict[str, dict]:
    sizes = {"data_batch_1": 3, "data_batch_2": 2, "data_batch_3": 1, "data_batch_4": 2}
    sizes |= {"data_batch_5": 2, "test_batch": 4}
    return {name: _batch(sizes[name], seed) for seed, name in enumerate(BATCHES)}


def _write_tar(path: Path, folder: str, files: dict[str, bytes]) -> Path:
    """A .tar.gz holding `folder/` and `folder/NAME` for each file, as the official archives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_tarball(path: Path, batches: dict[str, dict], raw: dict[str, bytes] | None = None):
    files = {"batches.meta": pickle.dumps({b"label_names": []}), "readme.html": b"<html/>"}
    files |= {name: _pickled(b) for name, b in batches.items()} | (raw or {})
    return _write_tar(path, cifar_mod.BATCHES_DIR, files)


# --- CIFAR-100 ---------------------------------------------------------------------------------
def cifar100_batch(n: int, seed: int, coarse_max: int = 19,
                   fine_labels: list[int] | None = None) -> dict[bytes, object]:
    """A batch as the official files hold it (fine and coarse labels, CHW rows of 3072 bytes)."""
    rng = np.random.default_rng(seed)
    return {
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
        b"batch_label": f"batch {seed}".encode(),
        b"fine_labels": (list(fine_labels) if fine_labels is not None
                         else [int(v) for v in rng.integers(0, 100, n)]),
        b"coarse_labels": [int(v) for v in rng.integers(0, coarse_max + 1, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }


def cifar100_batches(**kwargs) -> dict[str, dict]:
    return {"train": cifar100_batch(6, 1, **kwargs), "test": cifar100_batch(3, 2, **kwargs)}


def write_cifar100_tarball(path: Path, batches: dict[str, dict]) -> Path:
    files = {name: _pickled(b) for name, b in batches.items()}
    files["meta"] = pickle.dumps({b"fine_label_names": [], b"coarse_label_names": []})
    return _write_tar(path, cifar100_mod.BATCHES_DIR, files)
