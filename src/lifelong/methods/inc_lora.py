"""Incremental LoRA (IncLoRA), the baseline of O-LoRA (Wang et al. 2023) and MIGU (Du et al. 2024):
one new LoRA adapter per task.

When a task starts (from the second on), a new adapter joins every adapted layer; the earlier
adapters are frozen but stay in the forward pass, so a layer computes
W·x + Σ_k (α/r)·B_k·A_k·x over all adapters k so far. Only the newest adapter (and a
classification head) learns. No task id is needed at test time: every adapter is always active.

A task id seen again (the same `before_task(t)` twice in a row) keeps training its adapter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.registry import register_method
from .lora import LoRAConfig, LoRAMethod


@dataclasses.dataclass
class IncLoRAConfig(LoRAConfig):
    """The options of `lora`; a class of its own so that messages name inc-lora."""


@register_method
class IncLoRA(LoRAMethod):
    """One LoRA adapter per task; earlier adapters frozen and still active."""

    name = "inc-lora"
    description = "a new LoRA adapter per task; earlier adapters frozen but still active (IncLoRA)"
    Config = IncLoRAConfig
    needs_task_boundaries = True
    state_attrs = ("adapter_tasks",)

    def __init__(self, config: LoRAConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.adapter_tasks: list[int] = []  # the task each adapter was trained on

    def on_attach(self) -> None:
        self.adapter_tasks = []
        super().on_attach()

    def before_task(self, task: int) -> None:
        super().before_task(task)
        if not self.adapter_tasks:  # the adapter made at attach serves the first task
            self.adapter_tasks.append(task)
        elif task != self.adapter_tasks[-1]:
            self.add_adapter()
            self.adapter_tasks.append(task)
