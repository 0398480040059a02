"""How a model's output units map to each task's labels.

A model always returns all of its output units. The readout turns them into the logits a task's
labels index, which is what differs between the three scenarios of van de Ven et al. (2022):

- task-incremental: each task owns a group of units (a "head"); a sample's logits are its task's
  units, gathered into task-local positions (label c of task t is unit `units[t][c]`). With
  `head="multi"` every task has its own units; with `head="shared"` tasks that share classes
  share units (a single head masked to the task's classes).
- domain-incremental: every task uses all units with the same labels.
- class-incremental: one unit per class; optionally (van de Ven's protocol) only the classes seen
  so far are active, the rest masked to -inf, during training and evaluation.

`Readout.identity()` (no scenario) returns the output unchanged: a user's own model and loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

ScenarioKind = Literal["task", "domain", "class"]
SCENARIOS: tuple[str, ...] = ("task", "domain", "class")


class Readout:
    def __init__(
        self,
        kind: ScenarioKind | Literal["none"],
        num_outputs: int,
        task_units: Sequence[Sequence[int]],
        *,
        mask_unseen: bool = True,
    ) -> None:
        self.kind = kind
        self.num_outputs = num_outputs
        self.task_units = [list(map(int, units)) for units in task_units]
        self.mask_unseen = mask_unseen and kind == "class"
        width = max((len(u) for u in self.task_units), default=0)
        # Row t: the units of task t, padded with -1 where a task has fewer labels.
        table = torch.full((max(len(self.task_units), 1), max(width, 1)), -1, dtype=torch.long)
        for t, units in enumerate(self.task_units):
            table[t, : len(units)] = torch.tensor(units, dtype=torch.long)
        self._table = table
        self._padded = bool((table < 0).any())
        self._active = torch.zeros(num_outputs, dtype=torch.bool)
        self._all_active = False

    @classmethod
    def identity(cls) -> Readout:
        return cls("none", 0, [])

    def to(self, device: torch.device | str) -> Readout:
        self._table = self._table.to(device)
        self._active = self._active.to(device)
        return self

    # --- state: which tasks' units are active (class-incremental masking) ---------------------
    def begin_task(self, task: int) -> None:
        """Activate task `task`'s units (classes seen so far stay active)."""
        if self.kind == "class" and task < len(self.task_units):
            self._active[self.task_units[task]] = True
            self._all_active = bool(self._active.all())

    @property
    def active(self) -> Tensor:
        return self._active

    def set_active(self, active: Tensor) -> None:
        self._active = active.to(self._active.device).clone()
        self._all_active = bool(self._active.all())

    @property
    def unit_table(self) -> Tensor:
        """[tasks, width]: row t holds task t's units in label order, padded with -1."""
        return self._table

    def units(self, tasks: int | Sequence[int]) -> list[int]:
        """Output units that hold the labels of `tasks` (sorted, without duplicates)."""
        tasks = [tasks] if isinstance(tasks, int) else list(tasks)
        if self.kind in ("none", "domain"):
            return list(range(self.num_outputs))
        return sorted({u for t in tasks for u in self.task_units[t]})

    # --- the hot path --------------------------------------------------------------------------
    def select(self, output: Tensor, task_ids: Tensor | None = None) -> Tensor:
        """The logits that the labels of each sample's task index."""
        if self.kind == "task":
            if task_ids is None:
                raise ValueError("task-incremental readout needs the task id of every sample")
            index = self._table[task_ids]
            if not self._padded:
                return output.gather(1, index)
            logits = output.gather(1, index.clamp(min=0))
            return logits.masked_fill(index < 0, float("-inf"))
        if self.mask_unseen and not self._all_active:
            return output.masked_fill(~self._active, float("-inf"))
        return output

    def __repr__(self) -> str:
        return f"Readout(kind={self.kind!r}, num_outputs={self.num_outputs})"
