"""CIFAR-10: the canonical python tarball (found locally or downloaded), else a local JPEG copy.

Sources, in order of preference:

1. The canonical `cifar-10-python.tar.gz` (MD5-checked), or its already extracted
   `cifar-10-batches-py/` folder (each batch MD5-checked), in `DIR/cifar10/` or `DIR` itself for
   every `DIR` of `data_dirs()`. The pickled batches are read straight from the tarball, nothing is
   extracted to disk, and only NumPy arrays, lists, bytes and numbers are unpickled
   (`lifelong.data.cifar_canonical`, shared with CIFAR-100).
2. A JPEG copy, `cifar10_jpg_q75.zip` (`train|test/<class>/NNNN.jpg`), in `DIR/cifar10-jpg/` or
   `DIR`. JPEG is lossy, so a `LossyDataWarning` is issued (once per process). Decoding needs
   Pillow; the decoded arrays are cached as one `.npz` in `cache_dir()/cifar10/`, keyed by the
   zip's size and mtime, so later loads skip decoding. Images are ordered by split, class, then
   file name.
3. Otherwise the canonical tarball is downloaded into `cache_dir()/cifar10/`, unless downloads are
   disabled.
"""

from __future__ import annotations

import io
import os
import uuid
import warnings
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from lifelong.data.arrays import ArraySplits
from lifelong.data.cifar_canonical import (
    IMAGE_SHAPE,
    CanonicalSpec,
    download_canonical,
    find_canonical,
)
from lifelong.data.download import cache_dir, data_dirs, download
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
