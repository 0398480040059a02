"""Bring your own data as arrays: `from_arrays` (NumPy, torch tensors or lists) and `from_npz`,
plus the checks and the held-out test split that every bring-your-own source shares (image folders:
`lifelong.data.custom_images`; Hugging Face datasets: `lifelong.data.custom_hf`).

Every function checks what it is given (shapes, dtypes, labels) and raises `DataError` naming the
problem; the result goes to any scenario builder, e.g. `lifelong.scenarios.split_scenario`.
Images come out as uint8 `[N, C, H, W]` (C = 1 for grayscale, 3 for colour), which the builders
scale to [0, 1] like MNIST's and the convolutional models take as they are. Without a test set,
a stratified `test_fraction` of each class is held out (drawn with `seed`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.data.arrays import ArraySplits
from lifelong.errors import ConfigError, DataError


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
    xtr = as_features(x_train, "x_train")
    xte = None if x_test is None else as_features(x_test, "x_test")
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
        return hold_out(xtr, ytr, test_fraction, seed, names)
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
        # numpy reads a file that is no zip as a pickle and suggests loading it unsafely
        reason = ("it is not a .npz (zip) file" if path.is_file() and not zipfile.is_zipfile(path)
                  else str(e).split(". ")[0].rstrip("."))
        raise DataError(f"cannot read {path} as a .npz of arrays: {reason}") from None
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


def as_features(value: Any, name: str) -> np.ndarray:
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


def hold_out(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int,
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
