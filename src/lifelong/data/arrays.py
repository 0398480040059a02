"""`ArraySplits`: the train and test arrays of one in-memory dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lifelong.errors import DataError


@dataclass(frozen=True, eq=False)
class ArraySplits:
    """Train and test arrays of one dataset, as returned by every loader in `lifelong.data`.

    `x_*` may have any dtype and shape `[N, ...]` (uint8 `[N, 28, 28]` for MNIST, float32 `[N, 64]`
    for digits); `y_*` are int64 class labels of shape `[N]`; `class_names`, when known, names
    label i (`class_names[i]`). Comparison is by identity (`eq=False`) because element-wise `==`
    on arrays has no single truth value.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if y.ndim != 1:
                raise DataError(f"y_{split} must be 1-D class labels, got shape {tuple(y.shape)}")
            if x.ndim < 1 or len(x) != len(y):
                rows = len(x) if x.ndim else 0
                raise DataError(f"x_{split} has {rows} rows but y_{split} has {len(y)} labels")
        if self.class_names is not None and len(self.class_names) < self.num_classes:
            raise DataError(
                f"{len(self.class_names)} class names for labels up to {self.num_classes - 1}"
            )

    @property
    def num_classes(self) -> int:
        """One more than the largest label in either split (0 when both are empty)."""
        tops = [int(y.max()) for y in (self.y_train, self.y_test) if y.size]
        return max(tops) + 1 if tops else 0

    def __repr__(self) -> str:
        def desc(a: np.ndarray) -> str:
            return f"{a.dtype}{list(a.shape)}"

        return (
            f"ArraySplits(x_train={desc(self.x_train)}, y_train={desc(self.y_train)}, "
            f"x_test={desc(self.x_test)}, y_test={desc(self.y_test)}"
            + (f", {len(self.class_names)} class names)" if self.class_names else ")")
        )
