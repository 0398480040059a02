"""Scenarios whose every task holds the whole dataset with its own fixed permutation: of the
input features (`permuted_inputs`, Permuted MNIST) or of the labels (`permuted_labels`)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from .builders import Head, batch_maker, input_tensors, label_offset, repeated_readout
from .task import Scenario, Task


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
    xtr, ytr, xte, yte = input_tensors(*arrays)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    readout = repeated_readout(name, scenario, head, num_tasks, num_classes, mask_unseen)
    generator = torch.Generator().manual_seed(seed)
    size = xtr[0].numel() if what == "inputs" else num_classes
    tasks = []
    for t in range(num_tasks):
        permutation = torch.randperm(size, generator=generator)
        identity = t == 0 and not permute_first
        offset = label_offset(scenario, t, num_classes)
        if what == "inputs":
            pixels = None if identity else permutation
            make_train = batch_maker(xtr, ytr + offset, t, permutation=pixels)
            make_test = batch_maker(xte, yte + offset, t, permutation=pixels)
        else:
            mapping = torch.arange(num_classes) if identity else permutation
            make_train = batch_maker(xtr, mapping[ytr] + offset, t)
            make_test = batch_maker(xte, mapping[yte] + offset, t)
        # permuted inputs are rebuilt when needed: num_tasks copies of a big set would not fit
        tasks.append(Task(t, f"{'permutation' if what == 'inputs' else 'labels'} {t}",
                          tuple(range(num_classes)), make_train, make_test,
                          cache=what == "labels"))
    return Scenario(name, scenario, tasks, readout, tuple(xtr.shape[1:]))
