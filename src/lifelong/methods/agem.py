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

Data parallelism: each replica samples its own memory (the memories differ, as the shards do);
g_ref is the gradient on all the replicas' memory batches together (the per-replica gradients
weighted by their batch sizes and averaged, one collective per step), so that every replica
projects DDP's averaged g onto the same half-space.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor

from ..core.batch import Batch
from ..core.config import option
from ..core.registry import register_method
from ..functional import project_away_from_conflict_
from ..integrations.distributed import all_reduce_sum_and_count_, is_distributed
from .memory import MemoryConfig, MemoryMethod


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
    needs_task_boundaries = True  # with the default buffer, class-balanced

    def prepare_batch(self, batch: Batch) -> Batch:
        self.observe(batch)  # task-free (reservoir) memories follow the stream
        return batch

    def uses(self, hook: str) -> bool:
        if hook == "prepare_batch":
            return self.config.buffer == "reservoir"
        return super().uses(hook)

    def transform_grads(self) -> None:
        params = [p for p in self.params if p.grad is not None]
        refs = self.reference_gradient(params)
        if refs is not None:
            project_away_from_conflict_([p.grad for p in params], refs, self.config.eps,
                                        reference_is_scratch=True)

    def reference_gradient(self, params: list[Tensor]) -> list[Tensor] | None:
        """g_ref for `params` on a random memory batch (BatchNorm statistics untouched); under
        data parallelism on every replica's batch; None while no memory holds a sample."""
        batch = self.memory.sample(self.config.ref_batch_size)
        if not is_distributed():
            return None if batch is None else self.loss_gradients(batch, params)
        if batch is None:  # this replica's memory is empty: it still takes part
            refs, count = [torch.zeros_like(p) for p in params], 0
        else:  # the batch's summed gradient, to weigh each replica's batch by its size
            refs, count = self.loss_gradients(batch, params), len(batch)
            torch._foreach_mul_(refs, float(count))
        total = all_reduce_sum_and_count_(refs, count)
        if batch is None and float(total) == 0:
            return None  # no replica has a memory yet (every replica sees the same total)
        torch._foreach_div_(refs, total)
        return refs
