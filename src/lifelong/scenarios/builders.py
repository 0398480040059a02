"""Task sequences from any in-memory dataset (tensors or NumPy arrays).

- `split_by_classes`: each task holds a few classes (Split MNIST), or with `cumulative` the
  classes of every task so far (Dohare et al. 2024's class-incremental CIFAR-100);
  `split_scenario` does the same from an `ArraySplits` in one line;
- `permuted_inputs`: each task permutes the input features with its own fixed permutation;
- `rotated_inputs`: each task rotates the images by its own fixed angle (Rotated MNIST);
- `permuted_labels`: each task permutes the labels.

Each comes in task-, domain- or class-incremental form (van de Ven et al. 2022); the scenario's
`Readout` says which output units each task's labels index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.batch import Batch
from ..core.readout import SCENARIOS, Readout
from ..errors import ConfigError
from .task import Scenario, Task

Head = Literal["multi", "shared"]


def as_tensor(array: Any, name: str, *, labels: bool = False) -> Tensor:
    """A float32 (inputs) or int64 (labels) tensor from a NumPy array or tensor."""
    if isinstance(array, np.ndarray):
        array = torch.from_numpy(np.ascontiguousarray(array))
    if not isinstance(array, Tensor):
        raise ConfigError(f"{name} must be a NumPy array or a torch tensor, "
                          f"not {type(array).__name__}")
    if labels:
        if array.dtype.is_floating_point and not bool((array == array.round()).all()):
            raise ConfigError(f"{name} must hold integer class labels")
        if array.dim() != 1:
            raise ConfigError(f"{name} must be one label per sample (1-D), got shape "
                              f"{tuple(array.shape)}")
        return array.long()
    if array.dtype == torch.uint8:
        return array.float().div_(255)
    return array.float()


def _check(scenario: str, head: str) -> None:
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario '{scenario}'; accepted: {', '.join(SCENARIOS)}")
    if head not in ("multi", "shared"):
        raise ConfigError(f"unknown head '{head}'; accepted: multi, shared")


def _inputs(x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> tuple[Tensor, ...]:
    tensors = (as_tensor(x_train, "x_train"), as_tensor(y_train, "y_train", labels=True),
               as_tensor(x_test, "x_test"), as_tensor(y_test, "y_test", labels=True))
    for split, (x, y) in (("train", tensors[:2]), ("test", tensors[2:])):
        if len(x) != len(y):
            raise ConfigError(f"x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if len(x) == 0:
            raise ConfigError(f"x_{split} is empty")
    return tensors


def _batch_maker(x: Tensor, y: Tensor, task_id: int, index: Tensor | None = None,
                 permutation: Tensor | None = None,
                 transform: Callable[[Tensor], Tensor] | None = None):
    """A closure that builds the task's Batch when called (so big tasks exist one at a time)."""

    def make() -> Batch:
        inputs = x if index is None else x[index]
        if permutation is not None:
            flat = inputs.reshape(len(inputs), -1)[:, permutation]
            inputs = flat.reshape(inputs.shape)
        if transform is not None:
            inputs = transform(inputs)
        labels = y if index is None else y[index]
        return Batch(inputs, labels, torch.full((len(labels),), task_id, dtype=torch.long))

    return make


def split_by_classes(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
    classes_per_task: int | None = 2,
    task_classes: Sequence[Sequence[int]] | None = None,
    scenario: str = "task",
    head: Head = "multi",
    class_order: Sequence[int] | Literal["sorted", "random"] = "sorted",
    seed: int = 0,
    mask_unseen: bool = True,
    name: str = "split",
    class_names: Sequence[str] | None = None,
    cumulative: bool = False,
) -> Scenario:
    """Split a labelled dataset into tasks of disjoint classes.

    Tasks take `classes_per_task` classes in `class_order` ("sorted", "random" with `seed`, or an
    explicit list), or exactly the groups in `task_classes`. Labels: task-incremental, each task's
    classes in order (0..k-1) with its own head (`head="multi"`) or the shared class units
    masked to the task (`head="shared"`); domain-incremental, 0..k-1 through one shared head;
    class-incremental, one unit per class in class order (classes of later tasks masked until
    seen when `mask_unseen`).

    `cumulative` (class-incremental only): task t trains on the classes of tasks 0..t, not just
    its new ones (Dohare et al. 2024, class-incremental CIFAR-100); its test set still holds its
    new classes only, so that each class is tested once per row of the accuracy matrix: after
    task t, the accuracy on every class seen so far is the mean of row t over tasks 0..t, weighted
    by their test-set sizes (the plain mean when classes have equally many test samples). Such
    training sets are rebuilt when asked for rather than kept, as they grow with every task.
    """
    _check(scenario, head)
    if cumulative and scenario != "class":
        raise ConfigError(f"cumulative tasks need the class-incremental scenario, not "
                          f"'{scenario}': their labels must name the classes of earlier tasks")
    xtr, ytr, xte, yte = _inputs(x_train, y_train, x_test, y_test)
    present = sorted(set(ytr.unique().tolist()))
    if task_classes is None:
        if isinstance(class_order, str):
            if class_order == "sorted":
                order = present
            elif class_order == "random":
                rng = np.random.default_rng(seed)
                order = [present[i] for i in rng.permutation(len(present))]
            else:
                raise ConfigError(f"class_order '{class_order}' is not accepted; use sorted, "
                                  "random or a list of classes")
        else:
            order = [int(c) for c in class_order]
        if not classes_per_task or classes_per_task < 1:
            raise ConfigError("classes_per_task must be a positive integer")
        if len(order) % classes_per_task:
            raise ConfigError(f"{len(order)} classes do not split into tasks of "
                              f"{classes_per_task}; pass task_classes to group them yourself")
        task_classes = [order[i:i + classes_per_task]
                        for i in range(0, len(order), classes_per_task)]
    groups = [[int(c) for c in group] for group in task_classes]
    flat = [c for group in groups for c in group]
    if len(set(flat)) != len(flat):
        raise ConfigError("a class appears in more than one task; split tasks must be disjoint")
    missing = sorted(set(flat) - set(present))
    if missing:
        raise ConfigError(f"classes {missing} have no training samples; present: {present}")
    unit_of_class = {c: i for i, c in enumerate(flat)}  # class-IL unit = position in class order

    if scenario == "task":
        if head == "multi":
            offsets = np.cumsum([0] + [len(g) for g in groups])
            units = [list(range(offsets[t], offsets[t] + len(g))) for t, g in enumerate(groups)]
        else:
            units = [[unit_of_class[c] for c in g] for g in groups]
        readout = Readout("task", len(flat), units)
    elif scenario == "domain":
        width = max(len(g) for g in groups)
        readout = Readout("domain", width, [list(range(len(g))) for g in groups])
    else:
        readout = Readout("class", len(flat), [[unit_of_class[c] for c in g] for g in groups],
                          mask_unseen=mask_unseen)

    tasks = []
    for t, group in enumerate(groups):
        trained = [c for g in groups[:t + 1] for c in g] if cumulative else group
        label_of = {c: (unit_of_class[c] if scenario == "class" else group.index(c))
                    for c in trained}
        lookup = torch.full((max(present + flat) + 1,), -1, dtype=torch.long)
        for c, label in label_of.items():
            lookup[c] = label
        train_index = torch.isin(ytr, torch.tensor(trained)).nonzero().squeeze(1)
        test_index = torch.isin(yte, torch.tensor(group)).nonzero().squeeze(1)
        if len(test_index) == 0:
            raise ConfigError(f"task {t} (classes {group}) has no test samples")
        earlier = len(trained) - len(group)
        task_name = f"classes {','.join(map(str, group))}"
        tasks.append(Task(
            t, task_name + (f" + {earlier} earlier" if earlier else ""), tuple(group),
            _batch_maker(xtr, lookup[ytr.clamp(max=len(lookup) - 1)], t, train_index),
            _batch_maker(xte, lookup[yte.clamp(max=len(lookup) - 1)], t, test_index),
            cache=not cumulative,
        ))
    return Scenario(name, scenario, tasks, readout, tuple(xtr.shape[1:]),
                    list(class_names) if class_names is not None else None)


def split_scenario(splits: Any, *, classes_per_task: int | None = 2, scenario: str = "task",
                   **options: Any) -> Scenario:
    """`split_by_classes` on a dataset's train and test arrays in one line.

    `splits` is an `ArraySplits` (`lifelong.data.from_arrays`, `from_image_folder`,
    `from_hf_dataset`, or any loader of `lifelong.data`); its class names, if any, name the
    scenario's classes. `options` are those of `split_by_classes`, e.g.
    `split_scenario(from_image_folder("photos/"), classes_per_task=2, scenario="class")`.
    """
    options.setdefault("class_names", getattr(splits, "class_names", None))
    return split_by_classes(splits.x_train, splits.y_train, splits.x_test, splits.y_test,
                            classes_per_task=classes_per_task, scenario=scenario, **options)


def _repeated_tasks(name: str, scenario: str, head: str, num_tasks: int, num_classes: int,
                    mask_unseen: bool) -> Readout:
    """The readout of a scenario whose every task uses all `num_classes` classes."""
    _check(scenario, head)
    if num_tasks < 1:
        raise ConfigError(f"{name}: num_tasks must be at least 1, got {num_tasks}")
    if scenario == "task" and head == "multi":
        units = [list(range(t * num_classes, (t + 1) * num_classes)) for t in range(num_tasks)]
        return Readout("task", num_tasks * num_classes, units)
    if scenario == "task":  # one shared head: every task reads the same units
        return Readout("task", num_classes, [list(range(num_classes))] * num_tasks)
    if scenario == "domain":
        return Readout("domain", num_classes, [list(range(num_classes))] * num_tasks)
    units = [list(range(t * num_classes, (t + 1) * num_classes)) for t in range(num_tasks)]
    return Readout("class", num_tasks * num_classes, units, mask_unseen=mask_unseen)


def _label_offset(scenario: str, task: int, num_classes: int) -> int:
    """Class-incremental tasks that reuse labels get their own units: label + t·C."""
    return task * num_classes if scenario == "class" else 0


def permuted_inputs(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
    num_tasks: int = 10,
    scenario: str = "domain",
    head: Head = "multi",
    seed: int = 0,
    permute_first: bool = False,
    mask_unseen: bool = True,
    name: str = "permuted",
) -> Scenario:
    """Each task is the whole dataset with the input features shuffled by a fixed permutation.

    The first task keeps the original order unless `permute_first`. In class-incremental form,
    task t's label c is unit t·C + c (van de Ven et al. 2022).
    """
    return _permuted("inputs", (x_train, y_train, x_test, y_test), num_tasks, scenario, head,
                     seed, permute_first, mask_unseen, name)


def permuted_labels(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, *,
    num_tasks: int = 10,
    scenario: str = "domain",
    head: Head = "multi",
    seed: int = 0,
    permute_first: bool = True,
    mask_unseen: bool = True,
    name: str = "label-permuted",
) -> Scenario:
    """Each task relabels the whole dataset with its own permutation of the classes."""
    return _permuted("labels", (x_train, y_train, x_test, y_test), num_tasks, scenario, head,
                     seed, permute_first, mask_unseen, name)


def _permuted(what: Literal["inputs", "labels"], arrays: tuple[Any, ...], num_tasks: int,
              scenario: str, head: str, seed: int, permute_first: bool, mask_unseen: bool,
              name: str) -> Scenario:
    """Tasks that all hold every sample, each with its own permutation of inputs or labels."""
    xtr, ytr, xte, yte = _inputs(*arrays)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    readout = _repeated_tasks(name, scenario, head, num_tasks, num_classes, mask_unseen)
    generator = torch.Generator().manual_seed(seed)
    size = xtr[0].numel() if what == "inputs" else num_classes
    tasks = []
    for t in range(num_tasks):
        permutation = torch.randperm(size, generator=generator)
        identity = t == 0 and not permute_first
        offset = _label_offset(scenario, t, num_classes)
        if what == "inputs":
            pixels = None if identity else permutation
            make_train = _batch_maker(xtr, ytr + offset, t, permutation=pixels)
            make_test = _batch_maker(xte, yte + offset, t, permutation=pixels)
        else:
            mapping = torch.arange(num_classes) if identity else permutation
            make_train = _batch_maker(xtr, mapping[ytr] + offset, t)
            make_test = _batch_maker(xte, mapping[yte] + offset, t)
        # permuted inputs are rebuilt when needed: num_tasks copies of a big set would not fit
        tasks.append(Task(t, f"{'permutation' if what == 'inputs' else 'labels'} {t}",
                          tuple(range(num_classes)), make_train, make_test,
                          cache=what == "labels"))
    return Scenario(name, scenario, tasks, readout, tuple(xtr.shape[1:]))


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
    xtr, ytr, xte, yte = _inputs(x_train, y_train, x_test, y_test)
    angles = _rotation_angles(num_tasks, angles)
    chw = _image_layout(tuple(xtr.shape[1:]))
    num_classes = int(max(ytr.max(), yte.max())) + 1
    readout = _repeated_tasks(name, scenario, head, len(angles), num_classes, mask_unseen)
    tasks = []
    for t, angle in enumerate(angles):
        rotate = None
        if angle % 360:
            rotate = _Rotation(_rotation_grid(angle, chw[1], chw[2]), chw)
        offset = _label_offset(scenario, t, num_classes)
        tasks.append(Task(t, f"rotation {angle:g}°", tuple(range(num_classes)),
                          _batch_maker(xtr, ytr + offset, t, transform=rotate),
                          _batch_maker(xte, yte + offset, t, transform=rotate), cache=False))
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
