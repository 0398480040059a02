"""CIFAR-10: the canonical python tarball (found locally or downloaded), else a local JPEG copy.

Sources, in order of preference:

1. The canonical `cifar-10-python.tar.gz` (MD5-checked), or its already extracted
   `cifar-10-batches-py/` folder (each batch MD5-checked), in `DIR/cifar10/` or `DIR` itself for
   every `DIR` of `data_dirs()`. The pickled batches are read straight from the tarball, nothing is
   extracted to disk, and only NumPy arrays, lists, bytes and numbers are unpickled.
2. A JPEG copy, `cifar10_jpg_q75.zip` (`train|test/<class>/NNNN.jpg`), in `DIR/cifar10-jpg/` or
   `DIR`. JPEG is lossy, so a `LossyDataWarning` is issued (once per process). Decoding needs
   Pillow; the decoded arrays are cached as one `.npz` in `cache_dir()/cifar10/`, keyed by the
   zip's size and mtime, so later loads skip decoding. Images are ordered by split, class, then
   file name.
3. Otherwise the canonical tarball is downloaded into `cache_dir()/cifar10/`, unless downloads are
   disabled.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
import uuid
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from lifelong.data.arrays import ArraySplits
from lifelong.data.download import (
    cache_dir,
    cached_md5,
    data_dirs,
    download,
    downloads_enabled,
)
from lifelong.errors import DataError

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SHAPE = (32, 32, 3)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TARBALL = "cifar-10-python.tar.gz"
TARBALL_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
# MD5s of the files inside the official tarball, for an already extracted copy.
BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SUBDIRS = ("cifar10", "")  # for the canonical copy; the first receives downloads

JPEG_ZIP = "cifar10_jpg_q75.zip"
JPEG_SUBDIRS = ("cifar10-jpg", "")
_CACHE_VERSION = 1  # bump when the decoded layout changes, so old cache files are not used

_lossy_warned = False


class LossyDataWarning(UserWarning):
    """The data was decoded from a lossy copy: numbers are close to, not equal to, the original."""


def load_cifar10(
    data_dir: str | os.PathLike | None = None, *, download: bool | None = None
) -> ArraySplits:
    """CIFAR-10: uint8 HWC images `[50000, 32, 32, 3]` / `[10000, 32, 32, 3]`, int64 labels 0-9
    in the canonical class order (`CLASSES`: airplane, automobile, ..., truck).

    `data_dir` overrides `$LIFELONG_DATA`; `download=None` downloads the canonical tarball when no
    local copy is found unless `$LIFELONG_NO_DOWNLOAD` is set, `False` never downloads, `True`
    always may. See the module docstring for where copies are looked for.
    """
    return _load(data_dirs(data_dir), download)


def _load(dirs: list[Path], download_arg: bool | None) -> ArraySplits:
    """The first copy found in `dirs` (canonical before JPEG), else a download."""
    spec = _spec()
    found = find_canonical(spec, dirs)
    if found is not None:
        return found
    for d in dirs:
        for sub in JPEG_SUBDIRS:
            path = (d / sub if sub else d) / JPEG_ZIP
            if path.is_file():
                return _load_jpeg_zip(path)
    jpeg_places = [str((d / sub if sub else d) / JPEG_ZIP) for d in dirs for sub in JPEG_SUBDIRS]
    return download_canonical(
        spec, dirs, download_arg, download, also_searched=jpeg_places,
        alternative=f" (or DIR/{JPEG_SUBDIRS[0]}/ holds {JPEG_ZIP})",
    )


def _spec() -> CanonicalSpec:
    # Built at call time from the module constants, so that tests can patch them.
    return CanonicalSpec(
        "CIFAR-10", URL, TARBALL, TARBALL_MD5, BATCHES_DIR, TRAIN_BATCHES, TEST_BATCHES,
        BATCH_MD5, SUBDIRS, b"labels", len(CLASSES),
    )


# --- the canonical python version (shared with CIFAR-100) ---------------------------------------


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


# --- the JPEG copy ------------------------------------------------------------------------------


def _warn_lossy(path: Path) -> None:
    global _lossy_warned
    if _lossy_warned:
        return
    _lossy_warned = True
    warnings.warn(
        f"CIFAR-10 loaded from the lossy JPEG copy {path}: results are close to, not equal to, "
        f"those on canonical CIFAR-10; put the official {TARBALL} in a data dir for exact data",
        LossyDataWarning,
        stacklevel=5,
    )


def _load_jpeg_zip(path: Path) -> ArraySplits:
    """Decode the JPEG zip, or read its decoded arrays from the cache."""
    _warn_lossy(path)
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"cannot read CIFAR-10 JPEG copy {path}: {e}") from None
    cache = (
        cache_dir()
        / SUBDIRS[0]
        / f"{path.stem}.{st.st_size}-{st.st_mtime_ns}.v{_CACHE_VERSION}.npz"
    )
    splits = _read_cache(cache)
    if splits is None:
        splits = _decode_jpeg_zip(path)
        _write_cache(cache, splits)
    return splits


def _read_cache(cache: Path) -> ArraySplits | None:
    """The cached arrays, or None when the file is missing or unusable (it is then rewritten)."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except Exception:  # a corrupt or foreign file: decode again and replace it
        return None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPE or y.dtype != np.int64:
            return None
        if y.shape != (len(x),):
            return None
    return ArraySplits(**arrays)


def _write_cache(cache: Path, splits: ArraySplits) -> None:
    """Write the arrays atomically (a unique temp file, then `os.replace`); failure is harmless."""
    tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:  # a file object, so np.savez adds no ".npz" to the temp name
            np.savez(
                f,
                x_train=splits.x_train,
                y_train=splits.y_train,
                x_test=splits.x_test,
                y_test=splits.y_test,
            )
        os.replace(tmp, cache)
    except OSError as e:
        warnings.warn(
            f"could not cache the decoded CIFAR-10 JPEG copy at {cache} ({e}); it will be "
            "decoded again next time (set LIFELONG_CACHE to a writable directory)",
            stacklevel=5,
        )
    finally:
        tmp.unlink(missing_ok=True)


def _decode_jpeg_zip(path: Path) -> ArraySplits:
    """Decode every `train|test/<class>/*.jpg` in the zip, ordered by split, class, file name."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            f"reading the CIFAR-10 JPEG copy {path} needs Pillow: pip install pillow "
            f"(or put the official {TARBALL} in a data dir)"
        ) from None

    index = {c: i for i, c in enumerate(CLASSES)}
    entries: dict[str, list[tuple[int, str, zipfile.ZipInfo]]] = {"train": [], "test": []}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                p = PurePosixPath(info.filename)
                if info.is_dir() or p.suffix.lower() not in (".jpg", ".jpeg"):
                    continue
                if p.name.startswith("._") or "__MACOSX" in p.parts:
                    continue  # macOS resource forks, not images
                if len(p.parts) < 3 or p.parts[-3] not in entries:
                    raise DataError(
                        f"unexpected entry {info.filename} in CIFAR-10 JPEG copy {path}: "
                        "expected train/<class>/<name>.jpg or test/<class>/<name>.jpg"
                    )
                label = index.get(p.parts[-2].lower())
                if label is None:
                    raise DataError(
                        f"unknown CIFAR-10 class folder {p.parts[-2]!r} ({info.filename}) in "
                        f"{path}; expected one of: {', '.join(CLASSES)}"
                    )
                entries[p.parts[-3]].append((label, p.name, info))

            out = []
            for split, items in entries.items():
                if not items:
                    raise DataError(f"CIFAR-10 JPEG copy {path} has no {split}/ images")
                items.sort(key=lambda t: (t[0], t[1]))
                x = np.empty((len(items), *IMAGE_SHAPE), np.uint8)
                for i, (_, _, info) in enumerate(items):
                    try:
                        with Image.open(io.BytesIO(zf.read(info)), formats=("JPEG",)) as img:
                            a = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
                    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is OSError
                        raise DataError(
                            f"cannot decode {info.filename} in CIFAR-10 JPEG copy {path}: {e}"
                        ) from None
                    if a.shape != IMAGE_SHAPE:
                        raise DataError(
                            f"{info.filename} in CIFAR-10 JPEG copy {path} is "
                            f"{a.shape[1]}x{a.shape[0]}, expected 32x32"
                        )
                    x[i] = a
                out += [x, np.array([t[0] for t in items], np.int64)]
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read CIFAR-10 JPEG copy {path}: {e}") from None
    return ArraySplits(*out)
