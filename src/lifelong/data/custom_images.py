"""Bring your own data as a folder of images: `from_image_folder` (torchvision's ImageFolder
layout), and the decoding into uint8 `[N, C, H, W]` that Hugging Face image columns share
(`lifelong.data.custom_hf`). Decoding needs Pillow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.data.arrays import ArraySplits
from lifelong.data.custom import hold_out
from lifelong.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GRAY_MODES = ("1", "L", "LA")  # PIL modes decoded as one channel when every image has one

Size = int | tuple[int, int]


def from_image_folder(
    path: str | os.PathLike,
    test_folder: str | os.PathLike | None = None,
    size: Size | None = None,
    *,
    mode: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ArraySplits:
    """Images in class subfolders: `path/<class>/<image>` (torchvision's ImageFolder layout).

    The test set is `test_folder/<class>/...` if given; else `path/test/` when `path` holds just
    `train/` and `test/` (each with class subfolders); else a stratified `test_fraction` of each
    class. Classes are the training subfolders in sorted order (label i = the i-th name, kept in
    `class_names`); images inside a class folder are found at any depth, in sorted order; hidden
    files and files without an image extension are skipped.

    `size`: resize every image to `size` (int: square; or (height, width)), bilinear; without it
    all images must have the same size. `mode`: "L" (grayscale, 1 channel) or "RGB"; by default
    "L" if every image is grayscale, else "RGB". Returns uint8 `[N, C, H, W]` images.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    test_root = None if test_folder is None else Path(test_folder)
    if test_root is not None and not test_root.is_dir():
        raise DataError(f"test image folder {test_root} does not exist or is not a folder")
    subfolders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if test_root is None and subfolders == {"train", "test"}:
        root, test_root = root / "train", root / "test"

    train_files = _list_images(root)
    classes = tuple(sorted(train_files))
    index = {c: i for i, c in enumerate(classes)}
    test_files = _list_images(test_root) if test_root is not None else {}
    extra = sorted(set(test_files) - set(classes))
    if extra:
        raise DataError(f"test folder {test_root} has classes {extra} that {root} lacks; every "
                        "test class needs a training folder of the same name")

    def flat(files: dict[str, list[Path]]) -> tuple[list[Path], np.ndarray]:
        paths = [p for c in sorted(files) for p in files[c]]
        return paths, np.array([index[c] for c in sorted(files) for _ in files[c]], np.int64)

    train_paths, y_train = flat(train_files)
    test_paths, y_test = flat(test_files)
    images = _decode_files(train_paths + test_paths, mode, size)
    x_train, x_test = images[:len(train_paths)], images[len(train_paths):]
    if test_root is None:
        return hold_out(x_train, y_train, test_fraction, seed, classes)
    return ArraySplits(x_train, y_train, x_test, y_test, class_names=classes)


def _list_images(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (sorted), for every class subfolder of `folder`."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class subfolders; expected {folder}/<class>/<image> "
                        "(or train/ and test/ folders, each with class subfolders)")
    out = {}
    for class_dir in classes:
        files = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
        )
        if not files:
            raise DataError(f"class folder {class_dir} holds no images (looked for "
                            f"{', '.join(IMAGE_EXTENSIONS)})")
        out[class_dir.name] = files
    return out


def _decode_files(paths: list[Path], mode: str | None, size: Size | None) -> np.ndarray:
    Image = _pil()

    def opened(path: Path):
        try:
            return Image.open(path)
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"cannot read image {path}: {e}") from None

    if mode is None:  # headers only: PIL decodes lazily
        gray = True
        for path in paths:
            with opened(path) as img:
                gray = gray and img.mode in GRAY_MODES
        mode = "L" if gray else "RGB"

    def load(path: Path) -> Any:
        img = opened(path)
        try:
            img.load()
        except (OSError, ValueError) as e:
            img.close()
            raise DataError(f"cannot decode image {path}: {e}") from None
        return img

    return images_to_array((load(p) for p in paths), [str(p) for p in paths], mode, size)


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install pillow") from None
    return Image


def images_to_array(images: Any, names: list[str], mode: str, size: Size | None) -> np.ndarray:
    """uint8 `[N, C, H, W]` from PIL images (closed here) in `mode`, resized to `size` if given."""
    Image = _pil()
    if mode not in ("L", "RGB"):
        raise ConfigError(f"image mode '{mode}' is not accepted; use L (grayscale) or RGB")
    target = None
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height < 1 or width < 1:
            raise ConfigError(f"image size must be positive, got {size}")
        target = (int(width), int(height))  # PIL sizes are (width, height)
    out = None
    first = ""
    for i, (img, name) in enumerate(zip(images, names)):
        with img:
            if target is not None and img.size != target:
                img = img.convert(mode).resize(target, Image.Resampling.BILINEAR)
            a = np.asarray(img.convert(mode), dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if out is None:
            out = np.empty((len(names), *a.shape), np.uint8)
            first = name
        elif a.shape != out.shape[1:]:
            raise DataError(f"image {name} is {a.shape[2]}x{a.shape[1]} but {first} is "
                            f"{out.shape[3]}x{out.shape[2]} (width x height); pass size= to "
                            "resize them all")
        out[i] = a
    if out is None:
        raise DataError("no images found")
    return out
