"""Test helpers: a tiny synthetic split scenario and model, so method tests run in milliseconds."""

from __future__ import annotations

import os

import torch

from lifelong.scenarios import Scenario, split_by_classes

torch.set_num_threads(1)

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def blobs(num_classes: int = 4, per_class: int = 24, features: int = 8, seed: int = 0,
          spread: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around random class centres: easy to learn, quick to forget."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, features, generator=generator) * 2
    y = torch.arange(num_classes).repeat_interleave(per_class)
    x = centres[y] + spread * torch.randn(len(y), features, generator=generator)
    return x, y


def toy_scenario(kind: str = "task", num_classes: int = 4, classes_per_task: int = 2,
                 **options) -> Scenario:
    x_train, y_train = blobs(num_classes, seed=0)
    x_test, y_test = blobs(num_classes, per_class=10, seed=1)
    # same centres for train and test: regenerate the test points around the training centres
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(num_classes, x_train.shape[1], generator=generator) * 2
    x_test = centres[y_test] + 0.6 * torch.randn(len(y_test), x_train.shape[1],
                                                   generator=torch.Generator().manual_seed(5))
    return split_by_classes(x_train, y_train, x_test, y_test, classes_per_task=classes_per_task,
                            scenario=kind, name="toy", **options)


def tiny_mlp(inputs: int = 8, outputs: int = 4, hidden: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, outputs))


def train_tasks(method, model, optimizer, scenario, tasks, *, epochs: int = 3,
                generator: torch.Generator | None = None, batch_size: int = 8) -> None:
    """Train `method` on `tasks` of `scenario` in turn, as lifelong's experiment does
    (`lifelong.training.lifecycle.fit_task`)."""
    from lifelong.training.lifecycle import fit_task

    generator = generator or torch.Generator().manual_seed(0)
    for t in tasks:
        fit_task(model, optimizer, method, scenario.readout, t, scenario.tasks[t].train_data(),
                 batch_size=batch_size, epochs=epochs, generator=generator)
