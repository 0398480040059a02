"""Rotated inputs: exact multiples of 90° against numpy.rot90, other angles against SciPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.errors import ConfigError
from lifelong.scenarios import rotated_inputs


def _images(shape: tuple[int, ...], n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % 3


@pytest.mark.parametrize("layout", ["chw", "hw", "flat"])
def test_multiples_of_90_degrees_are_numpy_rot90(layout: str) -> None:
    x, y = _images((2, 7, 7) if layout == "chw" else (7, 7))
    given = x.reshape(len(x), -1) if layout == "flat" else x
    s = rotated_inputs(given, y, given, y, angles=[0, 90, 180, 270, -90])
    for task, k in zip(s.tasks, [0, 1, 2, 3, -1]):
        # counter-clockwise as displayed (row 0 on top) = numpy.rot90 over (row, column)
        rotated = np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1))).reshape(given.shape)
        expected = torch.from_numpy(rotated).float() / 255  # the builders scale uint8 to [0, 1]
        assert torch.equal(task.train_data().x, expected), task.name
        assert torch.equal(task.test_data().x, expected)
    assert s.input_shape == given.shape[1:]


@pytest.mark.parametrize("shape", [(1, 12, 20), (3, 9, 7)])
def test_other_angles_match_scipy_bilinear_rotation(shape: tuple[int, ...]) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x, y = _images(shape, n=3)
    angles = [30.0, -47.0, 135.0]
    s = rotated_inputs(x, y, x, y, angles=angles)
    for task, angle in zip(s.tasks, angles):
        # bilinear (order 1) about the centre, zeros from outside the image, same size
        expected = ndimage.rotate(x / 255.0, angle, axes=(-2, -1), reshape=False, order=1,
                                  mode="grid-constant", cval=0.0)
        got = task.train_data().x.double().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_default_angles_labels_and_one_grid_per_task(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = torch.nn.functional.affine_grid
    monkeypatch.setattr(torch.nn.functional, "affine_grid",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x, y = _images((5, 5))
    s = rotated_inputs(x, y, x[:3], y[:3], num_tasks=4, scenario="class")
    assert [t.name for t in s.tasks] == ["rotation 0°", "rotation 45°", "rotation 90°",
                                         "rotation 135°"]
    assert len(calls) == 3  # one grid per rotated task, made when the scenario is built
    first = s.tasks[0].train_data()
    assert torch.equal(first.x, torch.from_numpy(x).float() / 255)  # the first task is unrotated
    for t, task in enumerate(s.tasks):
        batch = task.train_data()
        assert torch.equal(batch.y, torch.from_numpy(y) + 3 * t)  # class-IL: unit t·C + c
        assert batch.task_ids.eq(t).all()
    assert len(calls) == 3  # materialising the data made no new grid
    assert s.num_outputs == 12 and s.readout.units(2) == [6, 7, 8]
    domain = rotated_inputs(x, y, x, y, num_tasks=2)
    assert torch.equal(domain.tasks[1].train_data().y, torch.from_numpy(y))
    assert domain.num_outputs == 3


@pytest.mark.parametrize("kwargs,message", [
    ({"num_tasks": 3, "angles": [0, 90]}, "num_tasks is 3 but 2 angles are given"),
    ({"angles": []}, "angles is empty"),
    ({"num_tasks": 0}, "num_tasks must be at least 1"),
    ({"angles": [0, float("nan")]}, "angles must be finite"),
])
def test_bad_angles(kwargs, message) -> None:
    x, y = _images((4, 4))
    with pytest.raises(ConfigError, match=message):
        rotated_inputs(x, y, x, y, **kwargs)


def test_inputs_that_are_not_images_are_refused() -> None:
    x, y = _images((10,))
    with pytest.raises(ConfigError, match=r"inputs of shape \(10,\) are not images"):
        rotated_inputs(x, y, x, y)
