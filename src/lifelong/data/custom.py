"""Bring your own data: arrays, a folder of images, or a Hugging Face dataset, as `ArraySplits`.

Every function checks what it is given (shapes, dtypes, labels) and raises `DataError` naming the
problem; the result goes to any scenario builder, e.g. `lifelong.scenarios.split_scenario`.
Images come out as uint8 `[N, C, H, W]` (C = 1 for grayscale, 3 for colour), which the builders
scale to [0, 1] like MNIST's and the convolutional models take as they are. Without a test set,
a stratified `test_fraction` of each class is held out (drawn with `seed`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.data.arrays import ArraySplits
from lifelong.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GRAY_MODES = ("1", "L", "LA")  # PIL modes decoded as one channel when every image has one

Size = int | tuple[int, int]


# --- arrays -------------------------------------------------------------------------------------


def from_arrays(
    x_train: Any,
    y_train: Any,
    x_test: Any = None,
    y_test: Any = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
) -> ArraySplits:
    """Check a dataset given as arrays (NumPy, torch tensors or lists) and return its splits.

    `x_*`: one row per sample, numbers of shape `[N, features...]` (uint8 images are kept as
    uint8). `y_*`: one class label per sample, integers >= 0, or strings (then numbered in sorted
    order, which become `class_names`). Without `x_test`/`y_test`, `test_fraction` of each class
    is held out as the test set (at least one sample per class in each split), drawn with `seed`.
    """
    if (x_test is None) != (y_test is None):
        raise DataError("give both x_test and y_test, or neither (then test_fraction of the "
                        "training data is held out)")
    xtr = _features(x_train, "x_train")
    xte = None if x_test is None else _features(x_test, "x_test")
    labels, names = _labels([y_train] if y_test is None else [y_train, y_test],
                            ["y_train", "y_test"], class_names)
    ytr = labels[0]
    for x, y, split in ((xtr, ytr, "train"), (xte, labels[-1], "test")):
        if x is None:
            continue
        if len(x) != len(y):
            raise DataError(f"x_{split} has {len(x)} samples but y_{split} has {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"x_{split} is empty")
    if xte is None:
        return _hold_out(xtr, ytr, test_fraction, seed, names)
    yte = labels[1]
    if xte.shape[1:] != xtr.shape[1:]:
        raise DataError(f"x_test samples have shape {xte.shape[1:]} but x_train samples "
                        f"{xtr.shape[1:]}; both splits need the same shape")
    unseen = sorted(set(np.unique(yte).tolist()) - set(np.unique(ytr).tolist()))
    if unseen:
        raise DataError(f"y_test has classes {unseen[:10]} that y_train lacks; every test class "
                        "needs training samples")
    return ArraySplits(xtr, ytr, xte, yte, class_names=names)


def from_npz(path: str | os.PathLike, *, test_fraction: float = 0.2, seed: int = 0) -> ArraySplits:
    """`from_arrays` on the arrays `x_train`, `y_train` (and optionally `x_test`, `y_test`,
    `class_names`) of a `.npz` file, as written by `numpy.savez`. Nothing is unpickled."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise DataError(f"arrays file {path} does not exist") from None
    except (OSError, ValueError) as e:  # not a zip, a pickled object array, ...
        raise DataError(f"cannot read {path} as a .npz of arrays: {e}") from None
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing or (("x_test" in arrays) != ("y_test" in arrays)):
        raise DataError(f"{path} holds {', '.join(sorted(arrays)) or 'no arrays'}; expected "
                        "x_train and y_train, optionally x_test and y_test (and class_names)")
    names = arrays.get("class_names")
    return from_arrays(arrays["x_train"], arrays["y_train"], arrays.get("x_test"),
                       arrays.get("y_test"), test_fraction, seed,
                       class_names=None if names is None else [str(n) for n in names])


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except ValueError as e:  # ragged nested lists
        raise DataError(f"{name} is not a regular array: {e}") from None


def _features(value: Any, name: str) -> np.ndarray:
    x = _to_numpy(value, name)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name} has dtype {x.dtype}; expected numbers (bool, integer or float)")
    if x.ndim < 2:
        raise DataError(f"{name} has shape {x.shape}; expected one row per sample, [N, "
                        "features...] (for one feature per sample use x[:, None])")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{name} holds {int((~np.isfinite(x)).sum())} NaN or infinite values")
    return x


def _labels(values: list[Any], names: list[str], class_names: Sequence[str] | None
            ) -> tuple[list[np.ndarray], tuple[str, ...] | None]:
    """int64 labels of each split; string labels are numbered by sorted name."""
    for v, name in zip(values, names):
        if isinstance(v, (list, tuple)) and len({isinstance(e, str) for e in v}) > 1:
            raise DataError(f"{name} mixes strings with other values; class labels must be all "
                            "integers or all strings")
    arrays = [_to_numpy(v, n) for v, n in zip(values, names)]
    for y, name in zip(arrays, names):
        if y.ndim != 1:
            raise DataError(f"{name} has shape {y.shape}; expected one class label per sample "
                            "([N]; for one-hot labels use y.argmax(1))")
    text = [y.dtype.kind == "U" or (y.dtype.kind == "O" and y.size > 0
                                    and all(isinstance(v, str) for v in y.tolist()))
            for y in arrays]
    if any(text):
        if not all(text):
            raise DataError(f"{' and '.join(names[:len(arrays)])} must both hold integer labels "
                            "or both strings")
        if class_names is not None:
            raise DataError("string labels name their classes; do not pass class_names too")
        found = sorted({v for y in arrays for v in y.tolist()})
        index = {c: i for i, c in enumerate(found)}
        return [np.array([index[v] for v in y.tolist()], np.int64) for y in arrays], tuple(found)
    out = []
    for y, name in zip(arrays, names):
        if y.dtype.kind == "O":  # e.g. a list of Python ints with a None among them
            y = np.asarray(y.tolist())
        if y.dtype.kind not in "iuf":
            raise DataError(f"{name} has dtype {y.dtype}; expected integer class labels "
                            "(or strings)")
        if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise DataError(f"{name} holds non-integer values; expected integer class labels")
        if y.size and y.min() < 0:
            raise DataError(f"{name} has label {y.min()}; class labels must be >= 0")
        out.append(y.astype(np.int64))
    names_out = None if class_names is None else tuple(str(c) for c in class_names)
    top = max((int(y.max()) for y in out if y.size), default=-1)
    if names_out is not None and len(names_out) <= top:
        raise DataError(f"{len(names_out)} class names for labels up to {top}")
    return out, names_out


def _hold_out(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int,
              class_names: tuple[str, ...] | None) -> ArraySplits:
    """Stratified split: round(test_fraction·n) of each class's n samples (at least one, and at
    least one left for training) go to the test set; both splits keep the original order."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got "
                          f"{test_fraction}")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < 2:
            raise DataError(f"class {c} has {len(members)} sample; holding out a test set needs "
                            "at least 2 per class (or give x_test and y_test)")
        count = min(max(round(test_fraction * len(members)), 1), len(members) - 1)
        test[rng.choice(members, size=count, replace=False)] = True
    return ArraySplits(x[~test], y[~test], x[test], y[test], class_names=class_names)


# --- a folder of images --------------------------------------------------------------------------


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
        return _hold_out(x_train, y_train, test_fraction, seed, classes)
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
                gray = gray and img.mode in _GRAY_MODES
        mode = "L" if gray else "RGB"

    def load(path: Path) -> Any:
        img = opened(path)
        try:
            img.load()
        except (OSError, ValueError) as e:
            img.close()
            raise DataError(f"cannot decode image {path}: {e}") from None
        return img

    return _images_to_array((load(p) for p in paths), [str(p) for p in paths], mode, size)


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading images needs Pillow: pip install pillow") from None
    return Image


def _images_to_array(images: Any, names: list[str], mode: str, size: Size | None) -> np.ndarray:
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


# --- Hugging Face datasets -----------------------------------------------------------------------


def from_hf_dataset(
    dataset_or_name: Any,
    image_column: str | None = None,
    label_column: str = "label",
    split_train: str = "train",
    split_test: str = "test",
    *,
    size: Size | None = None,
    mode: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ArraySplits:
    """A Hugging Face `datasets` dataset: a `DatasetDict` (its `split_train` and `split_test`
    splits), a single `Dataset`, or a hub name (`datasets.load_dataset(name)`, which downloads).

    `image_column`: the inputs; by default the one column of `Image` type, else the one column
    besides `label_column`. Image columns become uint8 `[N, C, H, W]` (`size` and `mode` as in
    `from_image_folder`); other columns must hold numbers of one shape. Labels: a `ClassLabel`
    (its names become `class_names`), integers, or strings. Without a test split, a stratified
    `test_fraction` of the training split is held out. Needs `pip install lifelong[hf]`.
    """
    datasets = _import_datasets()
    data = dataset_or_name
    if isinstance(data, str):
        data = datasets.load_dataset(data)
    if isinstance(data, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise DataError("streaming (iterable) datasets are not supported; load the dataset "
                        "without streaming=True")
    if isinstance(data, datasets.DatasetDict):
        if split_train not in data:
            raise DataError(f"the dataset has no split '{split_train}'; it has "
                            f"{', '.join(data)} (pass split_train=)")
        train, test = data[split_train], data.get(split_test)
    elif isinstance(data, datasets.Dataset):
        train, test = data, None
    else:
        raise DataError(f"from_hf_dataset takes a datasets.Dataset, a DatasetDict or a hub "
                        f"name, not {type(data).__name__}")

    columns = list(train.column_names)
    if label_column not in columns:
        raise DataError(f"the dataset has no label column '{label_column}'; its columns are "
                        f"{', '.join(columns)} (pass label_column=)")
    if image_column is None:
        image_column = _input_column(train, label_column, datasets)
    elif image_column not in columns:
        raise DataError(f"the dataset has no column '{image_column}'; its columns are "
                        f"{', '.join(columns)}")
    if test is not None:
        for column in (image_column, label_column):
            if column not in test.column_names:
                raise DataError(f"split '{split_test}' has no column '{column}'")

    splits = {split_train: train} | ({} if test is None else {split_test: test})
    if isinstance(train.features[image_column], datasets.Image):
        images = {name: list(split[image_column]) for name, split in splits.items()}  # decoded once
        if mode is None:
            gray = all(img.mode in _GRAY_MODES for imgs in images.values() for img in imgs)
            mode = "L" if gray else "RGB"
        x = {name: _images_to_array(imgs, [f"{name}[{i}]" for i in range(len(imgs))], mode, size)
             for name, imgs in images.items()}
    else:
        x = {name: _features(split.with_format("numpy")[:][image_column],
                             f"column '{image_column}' of split '{name}'")
             for name, split in splits.items()}

    feature = train.features[label_column]
    class_names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    y_test = None if test is None else np.asarray(test[label_column])
    x_test = None if test is None else x[split_test]
    return from_arrays(x[split_train], np.asarray(train[label_column]), x_test, y_test,
                       test_fraction, seed, class_names=class_names)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError("from_hf_dataset needs the Hugging Face datasets package: "
                        "pip install lifelong[hf] (or pip install datasets)") from None
    return datasets


def _input_column(train: Any, label_column: str, datasets: Any) -> str:
    images = [c for c, f in train.features.items() if isinstance(f, datasets.Image)]
    if len(images) == 1:
        return images[0]
    others = [c for c in train.column_names if c != label_column]
    if not images and len(others) == 1:
        return others[0]
    candidates = images or others
    raise DataError(f"cannot tell which column holds the inputs ({', '.join(candidates)}); "
                    "pass image_column=")
