"""Task sequences from any in-memory dataset (tensors or NumPy arrays): what every builder shares.

The builders, one module per form of task sequence:

- `lifelong.scenarios.split`: `split_by_classes`, each task holds a few classes (Split MNIST), or
  with `cumulative` the classes of every task so far (Dohare et al. 2024's class-incremental
  CIFAR-100); `split_scenario` does the same from an `ArraySplits` in one line;
- `lifelong.scenarios.permuted`: `permuted_inputs`, each task permutes the input features with its
  own fixed permutation; `permuted_labels`, each task permutes the labels;
- `lifelong.scenarios.rotated`: `rotated_inputs`, each task rotates the images by its own fixed
  angle (Rotated MNIST).

Each comes in task-, domain- or class-incremental form (van de Ven et al. 2022); the scenario's
`Readout` says which output units each task's labels index. Here: tensors from the user's arrays,
the check of scenario and head, the closures that build a task's batches, and the readout of
tasks that all use every class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..core.batch import Batch
from ..core.readout import SCENARIOS, Readout
from ..errors import ConfigError

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


def check_scenario_head(scenario: str, head: str) -> None:
    """Refuse, in one line, a scenario or head that no builder knows."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario '{scenario}'; accepted: {', '.join(SCENARIOS)}")
    if head not in ("multi", "shared"):
        raise ConfigError(f"unknown head '{head}'; accepted: multi, shared")


def input_tensors(x_train: Any, y_train: Any, x_test: Any, y_test: Any) -> tuple[Tensor, ...]:
    tensors = (as_tensor(x_train, "x_train"), as_tensor(y_train, "y_train", labels=True),
               as_tensor(x_test, "x_test"), as_tensor(y_test, "y_test", labels=True))
    for split, (x, y) in (("train", tensors[:2]), ("test", tensors[2:])):
        if len(x) != len(y):
            raise ConfigError(f"x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if len(x) == 0:
            raise ConfigError(f"x_{split} is empty")
    return tensors


def batch_maker(x: Tensor, y: Tensor, task_id: int, index: Tensor | None = None,
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


def repeated_readout(name: str, scenario: str, head: str, num_tasks: int, num_classes: int,
                     mask_unseen: bool) -> Readout:
    """The readout of a scenario whose every task uses all `num_classes` classes."""
    check_scenario_head(scenario, head)
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


def label_offset(scenario: str, task: int, num_classes: int) -> int:
    """Class-incremental tasks that reuse labels get their own units: label + t·C."""
    return task * num_classes if scenario == "class" else 0
