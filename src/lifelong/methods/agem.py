"""Averaged gradient episodic memory, A-GEM (Chaudhry et al. 2019).

At each update, g_ref is the gradient of the loss on a random batch from the episodic memory. If
the new gradient g conflicts with it (g·g_ref < 0), g is projected onto the half-space where it
does not: g ← g − (g·g_ref)/(g_ref·g_ref) · g_ref. The projection runs in the optimizer's step
pre-hook, so it applies to whatever loop calls `optimizer.step()`.

BatchNorm: g_ref is computed like g, with the model in the mode the training step used (train
mode: the memory batch normalised by its own statistics), so that the two gradients compare like
with like; but the reference pass is a probe, not training, so the running statistics are put
back afterwards and only the training batches move them (the authors' code lets the memory
passes update them too).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..core.batch import Batch
from ..core.config import option
from ..core.registry import register_method
from ..functional import project_away_from_conflict_
from ..memory import MemoryConfig, MemoryMethod


@dataclasses.dataclass
class AGEMConfig(MemoryConfig):
    buffer: Literal["reservoir", "class-balanced"] = option(
        "class-balanced", "class-balanced: an episodic memory filled at the end of each task; "
        "reservoir: task-free, updated every batch")
    ref_batch_size: int = option(256, "memory samples for the reference gradient g_ref", low=1)
    eps: float = option(1e-12, "added to g_ref·g_ref before dividing", low=0)


@register_method
class AGEM(MemoryMethod):
    name = "agem"
    description = "A-GEM: project gradients that would increase the loss on the memory"
    Config = AGEMConfig

    def prepare_batch(self, batch: Batch) -> Batch:
        self.observe(batch)  # task-free (reservoir) memories follow the stream
        return batch

    def uses(self, hook: str) -> bool:
        if hook == "prepare_batch":
            return self.config.buffer == "reservoir"
        return super().uses(hook)

    def transform_grads(self) -> None:
        reference_batch = self.memory.sample(self.config.ref_batch_size)
        if reference_batch is None:
            return
        params = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in params]
        refs = self.loss_gradients(reference_batch, params)  # BatchNorm stats untouched
        project_away_from_conflict_(grads, refs, self.config.eps, reference_is_scratch=True)
