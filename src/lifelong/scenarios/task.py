"""Tasks and scenarios: what the trainer consumes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from ..core.batch import Batch
from ..core.readout import Readout, ScenarioKind

Materialize = Callable[[], Batch]


class Task:
    """One task: its id, its classes, and its training and test sets.

    The sets are built on demand (`train_data()` / `test_data()`) so that scenarios with many
    large tasks (permuted MNIST) hold only the base dataset plus one task at a time. Labels are
    already in the scenario's label space (see `Readout`) and every row carries the task id.
    """

    def __init__(self, id: int, name: str, classes: tuple[int, ...], make_train: Materialize,
                 make_test: Materialize, *, cache: bool = True) -> None:
        self.id = id
        self.name = name
        self.classes = classes
        self._make = {"train": make_train, "test": make_test}
        self._cache_train = cache
        self._cached: dict[tuple[str, str], Batch] = {}

    def train_data(self, device: torch.device | str = "cpu") -> Batch:
        return self._get("train", device, self._cache_train)

    def test_data(self, device: torch.device | str = "cpu") -> Batch:
        return self._get("test", device, True)

    def _get(self, split: str, device: torch.device | str, cache: bool) -> Batch:
        key = (split, str(torch.device(device)))
        if key in self._cached:
            return self._cached[key]
        batch = self._make[split]().to(device)
        if cache:
            self._cached[key] = batch
        return batch

    def __repr__(self) -> str:
        return f"Task({self.id}, {self.name!r}, classes={list(self.classes)})"


@dataclasses.dataclass
class Scenario:
    """A sequence of tasks, how outputs are read for each (the readout), and the input shape."""

    name: str
    kind: ScenarioKind
    tasks: list[Task]
    readout: Readout
    input_shape: tuple[int, ...]
    class_names: list[str] | None = None
    text: Any = None  # a text scenario's `TextSpec` (tokenizer's model, format, vocabulary)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def per_token(self) -> bool:
        """Language modelling (text mlm/clm): accuracy is per token, not per sample."""
        return self.text is not None and self.text.format in ("mlm", "clm")

    @property
    def num_outputs(self) -> int:
        return self.readout.num_outputs

    def describe(self) -> str:
        return (f"{self.name} ({self.kind}-incremental): {self.num_tasks} tasks, "
                f"inputs {'x'.join(map(str, self.input_shape))}, {self.num_outputs} output units")
