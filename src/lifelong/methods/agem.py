"""Averaged gradient episodic memory, A-GEM (Chaudhry et al. 2019).

At each update, g_ref is the gradient of the loss on a random batch from the episodic memory. If
the new gradient g conflicts with it (g·g_ref < 0), g is projected onto the half-space where it
does not: g ← g − (g·g_ref)/(g_ref·g_ref) · g_ref. The projection runs in the optimizer's step
pre-hook, so it applies to whatever loop calls `optimizer.step()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Literal

import torch

from ..core.batch import Batch, BatchLike
from ..core.config import option
from ..core.method import Method
from ..core.registry import register_method
from ..functional import project_away_from_conflict_
from ..memory import MemoryConfig
from .replay import _whole


@dataclasses.dataclass
class AGEMConfig(MemoryConfig):
    buffer: Literal["reservoir", "class-balanced"] = option(
        "class-balanced", "class-balanced: an episodic memory filled at the end of each task; "
        "reservoir: task-free, updated every batch")
    ref_batch_size: int = option(256, "memory samples for the reference gradient g_ref", low=1)
    eps: float = option(1e-12, "added to g_ref·g_ref before dividing", low=0)


@register_method
class AGEM(Method):
    name = "agem"
    description = "A-GEM: project gradients that would increase the loss on the memory"
    Config = AGEMConfig
    stores_data = True
    state_attrs = ("memory",)

    def __init__(self, config: AGEMConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.memory = self.config.build(None)

    @property
    def needs_task_boundaries(self) -> bool:  # type: ignore[override]
        return self.config.buffer == "class-balanced"

    def on_attach(self) -> None:
        self.memory.generator = self.generator

    def prepare_batch(self, batch: Batch) -> Batch:
        if self.config.buffer == "reservoir":  # task-free: the memory follows the stream
            self.memory.add(batch)
        return batch

    def uses(self, hook: str) -> bool:
        if hook == "prepare_batch":
            return self.config.buffer == "reservoir"
        return super().uses(hook)

    def transform_grads(self) -> None:
        reference_batch = self.memory.sample(self.config.ref_batch_size)
        if reference_batch is None:
            return
        pairs = [(p, p.grad) for p in self.params if p.grad is not None]
        with torch.enable_grad():
            loss = self.task_loss(reference_batch)
            reference = torch.autograd.grad(loss, [p for p, _ in pairs], allow_unused=True)
        grads, refs = [], []
        for (_, grad), ref in zip(pairs, reference):
            if ref is not None:
                grads.append(grad)
                refs.append(ref)
        project_away_from_conflict_(grads, refs, self.config.eps, reference_is_scratch=True)

    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        if self.config.buffer == "class-balanced":
            self.memory.add_task(_whole(data))
