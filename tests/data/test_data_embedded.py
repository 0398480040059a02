"""Offline datasets: scikit-learn digits with a fixed split, and generated MNIST-1D."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest

from lifelong.data import ArraySplits, embedded, load_digits_splits, load_mnist1d
from lifelong.errors import ConfigError, DataError


def test_digits_split_is_fixed_stratified_and_scaled() -> None:
    np.random.seed(1)
    a = load_digits_splits()
    np.random.seed(2)
    b = load_digits_splits()
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))

    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.shape[1] == 64 and len(a.y_train) + len(a.y_test) == 1797
    assert a.x_train.min() == 0.0 and a.x_train.max() == 1.0 and a.x_test.max() <= 1.0
    np.testing.assert_array_equal(a.x_train * 16, np.round(a.x_train * 16))

    per_class = np.bincount(np.concatenate([a.y_train, a.y_test]))
    np.testing.assert_array_equal(np.bincount(a.y_test), np.round(0.2 * per_class))
    assert a.num_classes == 10


def test_digits_test_fraction() -> None:
    small = load_digits_splits(test_fraction=0.1)
    assert 170 <= len(small.y_test) <= 190
    with pytest.raises(ConfigError):
        load_digits_splits(test_fraction=1.0)


def test_mnist1d_offline_deterministic_and_side_effect_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("mnist1d tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    embedded._mnist1d_arrays.cache_clear()
    random.seed(5)
    np.random.seed(5)
    data = load_mnist1d()
    assert (random.random(), np.random.random()) == (random.Random(5).random(), _np_first(5))
    assert os.listdir(tmp_path) == []

    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert set(np.unique(data.y_train)) == set(range(10))

    data.x_train[:] = 0  # callers get copies: the in-process cache is not mutated
    again = load_mnist1d()
    assert again.x_train.std() > 0.5
    np.testing.assert_array_equal(again.y_test, data.y_test)


def _np_first(seed: int) -> float:
    return float(np.random.RandomState(seed).random_sample())


def test_array_splits_checks_lengths() -> None:
    x, y = np.zeros((3, 2)), np.zeros(3, dtype=np.int64)
    s = ArraySplits(x, y, x[:1], y[:1])
    assert "float64[3, 2]" in repr(s)
    with pytest.raises(DataError, match="2 rows but y_test has 1"):
        ArraySplits(x, y, x[:2], y[:1])
