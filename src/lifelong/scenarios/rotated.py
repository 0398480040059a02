"""Scenarios whose every task holds the whole dataset with every image rotated by the task's fixed
angle (`rotated_inputs`, Rotated MNIST), and the exact bilinear rotation they use."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .builders import Head, batch_maker, input_tensors, label_offset, repeated_readout
from .task import Scenario, Task


def rotated_inputs(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
    num_tasks: int | None = None,
    angles: Sequence[float] | None = None,
    scenario: str = "domain",
    head: Head = "multi",
    mask_unseen: bool = True,
    name: str = "rotated",
) -> Scenario:
    """Each task is the whole dataset with every image rotated by the task's fixed angle.

    `angles` are in degrees, counter-clockwise as an image is displayed (row 0 at the top): a
    rotation by 90 is `numpy.rot90(image)`. By default `num_tasks` (10) angles are spread evenly
    over [0, 180), so the first task is unrotated: 180·t/num_tasks for task t. Images have shape
    `(N, C, H, W)`, `(N, H, W)` or `(N, H·W)` (flattened square images) and keep it; rotation is
    about the image centre, bilinear, and fills what comes from outside the image with zeros:
    `grid_sample(mode="bilinear", padding_mode="zeros")` on an `affine_grid`, except that
    multiples of 90° move pixels exactly. Each task's grid and interpolation weights are made once;
    its rotated images are made when the task's data is asked for, not kept for the training set
    (num_tasks rotated copies of a big dataset would not fit). Labels as in `permuted_inputs`: in
    class-incremental form, task t's label c is unit t·C + c.
    """
    xtr, ytr, xte, yte = input_tensors(x_train, y_train, x_test, y_test)
    angles = _rotation_angles(num_tasks, angles)
    chw = _image_layout(tuple(xtr.shape[1:]))
    num_classes = int(max(ytr.max(), yte.max())) + 1
    readout = repeated_readout(name, scenario, head, len(angles), num_classes, mask_unseen)
    tasks = []
    for t, angle in enumerate(angles):
        rotate = None
        if angle % 360:
            rotate = _Rotation(_rotation_grid(angle, chw[1], chw[2]), chw)
        offset = label_offset(scenario, t, num_classes)
        tasks.append(Task(t, f"rotation {angle:g}°", tuple(range(num_classes)),
                          batch_maker(xtr, ytr + offset, t, transform=rotate),
                          batch_maker(xte, yte + offset, t, transform=rotate), cache=False))
    return Scenario(name, scenario, tasks, readout, tuple(xtr.shape[1:]))


def _rotation_angles(num_tasks: int | None, angles: Sequence[float] | None) -> list[float]:
    if angles is None:
        count = 10 if num_tasks is None else num_tasks
        if count < 1:
            raise ConfigError(f"rotated: num_tasks must be at least 1, got {count}")
        return [180.0 * t / count for t in range(count)]
    angles = [float(a) for a in angles]
    if not angles:
        raise ConfigError("rotated: angles is empty; give one angle (degrees) per task")
    if not all(math.isfinite(a) for a in angles):
        raise ConfigError(f"rotated: angles must be finite numbers of degrees, got {angles}")
    if num_tasks is not None and num_tasks != len(angles):
        raise ConfigError(f"rotated: num_tasks is {num_tasks} but {len(angles)} angles are given; "
                          "give one of them, or as many angles as tasks")
    return angles


def _image_layout(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of inputs of per-sample shape `shape`: (C, H, W), (H, W) or a flattened square."""
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        side = math.isqrt(shape[0])
        return (1, side, side)
    raise ConfigError(f"rotated: inputs of shape {shape} are not images; expected (C, H, W), "
                      "(H, W) or flattened square images (H·H values)")


def _rotation_grid(degrees: float, height: int, width: int) -> Tensor:
    """`affine_grid`'s float64 grid for a rotation by `degrees`, counter-clockwise as displayed.

    Each output pixel (x right, y down, in pixels from the centre) reads the input at
    (x cos a − y sin a, x sin a + y cos a); in the grid's coordinates, normalised by the half
    width and half height, the off-diagonal terms carry the aspect ratio.
    """
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    theta = torch.tensor([[cos, -sin * height / width, 0.0],
                          [sin * width / height, cos, 0.0]], dtype=torch.float64)
    return F.affine_grid(theta[None], [1, 1, height, width], align_corners=False)


class _Rotation:
    """Bilinear sampling at a fixed grid with zeros outside the image: what
    `grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)` computes, as four
    gathers with weights prepared once. Source positions within 1e-9 pixel of a pixel centre are
    snapped to it, so that multiples of 90° move pixels exactly (grid_sample's own float
    arithmetic leaves weights of 1e-16 on neighbours)."""

    def __init__(self, grid: Tensor, chw: tuple[int, int, int]) -> None:
        self.chw = chw
        _, height, width = chw
        # grid_sample's unnormalisation (align_corners=False): pixel = ((g + 1) * size - 1) / 2
        px = ((grid[0, ..., 0] + 1) * width - 1) / 2
        py = ((grid[0, ..., 1] + 1) * height - 1) / 2
        px = torch.where((px - px.round()).abs() < 1e-9, px.round(), px).flatten()
        py = torch.where((py - py.round()).abs() < 1e-9, py.round(), py).flatten()
        x0, y0 = px.floor(), py.floor()
        fx, fy = px - x0, py - y0
        indices, weights = [], []
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                xs, ys = x0 + dx, y0 + dy
                inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
                indices.append((ys.clamp(0, height - 1) * width + xs.clamp(0, width - 1)).long())
                weights.append(torch.where(inside, wy * wx, 0.0))
        self.index = torch.stack(indices)  # [4, H*W]
        self.weight = torch.stack(weights).float()  # [4, H*W]; exactly 0 or 1 at 90° multiples

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.index.shape[1])  # one row per image channel
        index, weight = self.index.to(x.device), self.weight.to(x.device, x.dtype)
        out = torch.index_select(flat, 1, index[0]).mul_(weight[0])
        for k in range(1, 4):
            out.addcmul_(torch.index_select(flat, 1, index[k]), weight[k])
        return out.reshape(x.shape)
