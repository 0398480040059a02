"""Scenarios that split a labelled dataset into tasks of disjoint classes: `split_by_classes`
(Split MNIST; with `cumulative`, Dohare et al. 2024's class-incremental CIFAR-100) and
`split_scenario`, the same from an `ArraySplits` in one line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from ..core.readout import Readout
from ..errors import ConfigError
from .builders import Head, batch_maker, check_scenario_head, input_tensors
from .task import Scenario, Task


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
    check_scenario_head(scenario, head)
    if cumulative and scenario != "class":
        raise ConfigError(f"cumulative tasks need the class-incremental scenario, not "
                          f"'{scenario}': their labels must name the classes of earlier tasks")
    xtr, ytr, xte, yte = input_tensors(x_train, y_train, x_test, y_test)
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
            batch_maker(xtr, lookup[ytr.clamp(max=len(lookup) - 1)], t, train_index),
            batch_maker(xte, lookup[yte.clamp(max=len(lookup) - 1)], t, test_index),
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
