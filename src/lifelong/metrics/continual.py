"""Continual-learning metrics from the accuracy matrix.

R[i][j] is the accuracy on task j's test set after training task i (T tasks, T x T). Following
Lopez-Paz & Ranzato (2017) and Chaudhry et al. (2018):

- average accuracy  ACC = 1/T · Σ_j R[T-1][j]
- backward transfer BWT = 1/(T-1) · Σ_{j<T-1} (R[T-1][j] − R[j][j])           (negative: forgetting)
- forward transfer  FWT = 1/(T-1) · Σ_{j>0} (R[j-1][j] − b_j),  b_j the accuracy of the randomly
  initialised model on task j
- forgetting        F   = 1/(T-1) · Σ_{j<T-1} max_{j<=i<T-1} R[i][j] − R[T-1][j]

The metrics that compare tasks are undefined (None) for a single task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Matrix = Sequence[Sequence[float]] | np.ndarray


def _square(matrix: Matrix) -> np.ndarray:
    R = np.asarray(matrix, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"the accuracy matrix must be square and non-empty, got shape {R.shape}")
    return R


def average_accuracy(matrix: Matrix) -> float:
    return float(_square(matrix)[-1].mean())


def backward_transfer(matrix: Matrix) -> float | None:
    R = _square(matrix)
    T = len(R)
    if T < 2:
        return None
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def forward_transfer(matrix: Matrix, baseline: Sequence[float]) -> float | None:
    R = _square(matrix)
    T = len(R)
    if len(baseline) != T:
        raise ValueError(f"need one baseline accuracy per task ({T}), got {len(baseline)}")
    if T < 2:
        return None
    return float(np.mean([R[j - 1, j] - baseline[j] for j in range(1, T)]))


def forgetting(matrix: Matrix) -> float | None:
    R = _square(matrix)
    T = len(R)
    if T < 2:
        return None
    return float(np.mean([R[j:T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]))


def summarize(matrix: Matrix, baseline: Sequence[float] | None = None) -> dict[str, float | None]:
    """acc, bwt, fwt (None without a baseline) and forgetting in one dict."""
    return {
        "acc": average_accuracy(matrix),
        "bwt": backward_transfer(matrix),
        "fwt": None if baseline is None else forward_transfer(matrix, baseline),
        "forgetting": forgetting(matrix),
    }


def seed_stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the values present (not
    None, finite), their count, and the values as given: a metric over seeds."""
    present = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not present:
        return {"mean": None, "std": None, "count": 0, "values": list(values)}
    std = float(np.std(present, ddof=1)) if len(present) > 1 else 0.0
    return {"mean": float(np.mean(present)), "std": std, "count": len(present),
            "values": list(values)}
