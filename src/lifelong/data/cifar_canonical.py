"""The canonical python release of CIFAR-10 and CIFAR-100, read safely: where copies are looked
for, MD5 checks, the download, and the pickled batches read straight from the tarball (or an
extracted folder) with a restricted unpickler.

`CanonicalSpec` names one release; `lifelong.data.cifar` (CIFAR-10) and `lifelong.data.cifar100`
build theirs from their module constants and share everything here. Nothing is extracted to disk
and only NumPy arrays, lists, bytes and numbers are unpickled, so a tampered batch cannot run code.
"""

from __future__ import annotations

import codecs
import pickle
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifelong.data.arrays import ArraySplits
from lifelong.data.download import cache_dir, cached_md5, downloads_enabled
from lifelong.errors import DataError

IMAGE_SHAPE = (32, 32, 3)  # HWC, of CIFAR-10 and CIFAR-100 alike


@dataclass(frozen=True)
class CanonicalSpec:
    """One canonical CIFAR release: its python tarball, the pickled batches it holds, and where
    copies are looked for."""

    name: str  # "CIFAR-10", in messages
    url: str
    tarball: str
    tarball_md5: str
    batches_dir: str  # the folder inside the tarball, and the name of an extracted copy
    train_batches: tuple[str, ...]
    test_batches: tuple[str, ...]
    batch_md5: Mapping[str, str]  # of each batch, to check an extracted copy
    subdirs: tuple[str, ...]  # searched under each data dir; the first receives downloads
    label_key: bytes  # b"labels" (CIFAR-10), b"fine_labels" or b"coarse_labels" (CIFAR-100)
    num_classes: int


def find_canonical(spec: CanonicalSpec, dirs: list[Path]) -> ArraySplits | None:
    """The first canonical copy (tarball or extracted folder) in `dirs`, MD5-checked; else None."""
    for d in dirs:
        for sub in spec.subdirs:
            base = d / sub if sub else d
            if (base / spec.tarball).is_file():
                verify_md5(spec.name, base / spec.tarball, spec.tarball_md5)
                return read_tarball(spec, base / spec.tarball)
            if (base / spec.batches_dir).is_dir():
                return read_batches_dir(spec, base / spec.batches_dir)
    return None


def download_canonical(
    spec: CanonicalSpec,
    dirs: list[Path],
    download_arg: bool | None,
    fetch: Callable[[list[str], Path, str], Path],
    *,
    also_searched: Sequence[str] = (),
    alternative: str = "",
) -> ArraySplits:
    """Download the tarball into the cache with `fetch` (`lifelong.data.download`, passed by the
    caller so that tests can replace it), or raise a `DataError` saying where copies were looked
    for when downloads are disabled or fail."""
    places = [(d / sub if sub else d) for d in dirs for sub in spec.subdirs]
    searched = "; ".join(
        [f"{p / spec.tarball} or {p / spec.batches_dir}/" for p in places] + list(also_searched)
    )
    missing_roots = [str(d) for d in dirs[:-1] if not d.is_dir()]
    note = f" ({', '.join(missing_roots)} does not exist)" if missing_roots else ""
    fix = (
        f"fix: pass --data-dir DIR or set LIFELONG_DATA=DIR, where DIR/{spec.subdirs[0]}/ holds "
        f"the official {spec.tarball}{alternative}"
    )
    if not downloads_enabled(download_arg):
        raise DataError(
            f"{spec.name} not found; searched: {searched}{note}; downloads are disabled "
            f"(download=False or LIFELONG_NO_DOWNLOAD is set); {fix}; or allow downloads "
            "(download=True, or unset LIFELONG_NO_DOWNLOAD)"
        )
    dest = cache_dir() / spec.subdirs[0] / spec.tarball
    try:
        path = fetch([spec.url], dest, spec.tarball_md5)
    except DataError as e:
        raise DataError(
            f"{spec.name} not found (searched: {searched}{note}) and {e}; {fix}"
        ) from None
    return read_tarball(spec, path)


def verify_md5(dataset: str, path: Path, expected: str) -> None:
    """Raise `DataError` unless `path` has MD5 `expected` (hashed once per path, size and mtime)."""
    try:
        actual = cached_md5(path)
    except OSError as e:
        raise DataError(f"cannot read {dataset} file {path}: {e}") from None
    if actual != expected:
        raise DataError(
            f"{path} is corrupt or not the official {dataset} {path.name}: md5 {actual}, expected "
            f"{expected}; delete it (a missing file is downloaded again) or replace it with the "
            "official file"
        )


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: dicts, lists, bytes, numbers and NumPy arrays,
    so a tampered batch cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # The array reconstructors, under their NumPy 1 and NumPy 2 module names.
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
        ("numpy.core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],
        ("numpy._core.numeric", "_frombuffer"): np.zeros(1).__reduce_ex__(5)[0],
        # How Python 3 writes bytes at protocol 2 (a pure function of a str and a codec name).
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}") from None



def _read_batch(spec: CanonicalSpec, f, where: str) -> tuple[np.ndarray, np.ndarray]:
    """HWC uint8 images and int64 labels of one pickled batch (read from file object `f`)."""
    try:
        batch = _BatchUnpickler(f, encoding="bytes").load()
        data, labels = batch[b"data"], batch[spec.label_key]
    except Exception as e:  # any malformed pickle: UnpicklingError, EOFError, KeyError, ...
        raise DataError(f"{spec.name} batch {where} is not a valid python batch: {e!r}") from None
    labels = np.asarray(labels)
    rows = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (rows,):
        desc = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data)
        raise DataError(f"{spec.name} batch {where} holds data {desc}, expected uint8 [N, {rows}]")
    if labels.ndim != 1 or len(labels) != len(data) or labels.dtype.kind not in "iu":
        raise DataError(
            f"{spec.name} batch {where} has {len(data)} images but labels "
            f"{labels.dtype} {list(labels.shape)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise DataError(
            f"{spec.name} batch {where} has label {bad}, expected 0..{spec.num_classes - 1}"
        )
    h, w, c = IMAGE_SHAPE
    x = np.ascontiguousarray(data.reshape(len(data), c, h, w).transpose(0, 2, 3, 1))
    return x, labels.astype(np.int64)


def _assemble(
    spec: CanonicalSpec, batches: dict[str, tuple[np.ndarray, np.ndarray]], source: Path
) -> ArraySplits:
    missing = [n for n in (*spec.train_batches, *spec.test_batches) if n not in batches]
    if missing:
        raise DataError(f"{spec.name} copy {source} lacks {', '.join(missing)}")

    def cat(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = zip(*(batches[n] for n in names))
        return np.concatenate(xs), np.concatenate(ys)

    return ArraySplits(*cat(spec.train_batches), *cat(spec.test_batches))


def read_tarball(spec: CanonicalSpec, path: Path) -> ArraySplits:
    """Read the batches from the tarball in one streaming pass, extracting nothing."""
    wanted = {f"{spec.batches_dir}/{n}": n for n in (*spec.train_batches, *spec.test_batches)}
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None or not member.isfile():
                    continue
                f = tar.extractfile(member)
                assert f is not None  # a regular file
                batches[name] = _read_batch(spec, f, f"{path}:{member.name}")
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(f"cannot read {spec.name} tarball {path}: {e}") from None
    return _assemble(spec, batches, path)


def read_batches_dir(spec: CanonicalSpec, folder: Path) -> ArraySplits:
    """Read the batches of an extracted copy (`cifar-10-batches-py/`), each MD5-checked."""
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in (*spec.train_batches, *spec.test_batches):
        path = folder / name
        if not path.is_file():
            continue  # reported by _assemble
        verify_md5(spec.name, path, spec.batch_md5[name])
        try:
            with open(path, "rb") as f:
                batches[name] = _read_batch(spec, f, str(path))
        except OSError as e:
            raise DataError(f"cannot read {spec.name} file {path}: {e}") from None
    return _assemble(spec, batches, folder)
