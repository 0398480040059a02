"""Gradient episodic memory, GEM (Lopez-Paz & Ranzato 2017).

One memory per past task. At each update, g_k is the loss gradient on task k's memory; if the new
gradient g conflicts with any of them (⟨g, g_k⟩ < 0), it is replaced by the closest gradient that
conflicts with none, through the dual QP over one variable per past task:

    v* = argmin_v ½ vᵀ(G Gᵀ + εI)v + (G g)ᵀv  s.t.  v ≥ γ,     g ← g + Gᵀv*

γ (`margin`) biases the projection towards backward transfer (the paper's γ; 0.5 and ε = 1e-3 in
the authors' code). Dot products are sums over parameter tensors; the K x K problem is solved
exactly on the CPU (`lifelong.functional.projection.solve_gem_dual`).

BatchNorm: as in A-GEM, each g_k is computed in the mode of the training step (train mode: the
memory normalised by its own batch statistics), and the running statistics are restored after
the reference passes, which are probes, not training (the authors' code, in train mode
throughout, lets them update the statistics).

Data parallelism: each replica keeps memories from its own shard; g_k is the gradient on every
replica's memory of task k together (the per-replica gradients weighted by memory size, one
collective per step for all k), so every replica solves the same QP for DDP's averaged g.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..core.batch import Batch, BatchLike, whole
from ..core.config import Config, option
from ..core.method import Method
from ..core.registry import register_method
from ..functional.projection import solve_gem_dual
from ..integrations.distributed import all_reduce_sum_, is_distributed


@dataclasses.dataclass
class GEMConfig(Config):
    memory_per_task: int = option(256, "samples kept from each task", low=1)
    margin: float = option(0.5, "γ: lower bound of the dual variables (bias to backward "
                           "transfer; 0 is the plain projection)", low=0)
    eps: float = option(1e-3, "ε added to the diagonal of G Gᵀ", low=0)


@register_method
class GEM(Method):
    name = "gem"
    description = "GEM: project gradients so no past task's memory loss increases (QP)"
    Config = GEMConfig
    needs_task_boundaries = True
    stores_data = True

    def __init__(self, config: GEMConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.memories: list[Batch] = []

    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        data = whole(data)
        count = min(self.config.memory_per_task, len(data))
        index = torch.randperm(len(data), generator=self.generator,
                               device=self.generator.device)[:count]
        self.memories.append(data.select(index.to(data.x.device)))

    def transform_grads(self) -> None:
        if not self.memories:
            return
        params = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in params]
        references = [self.loss_gradients(memory, params) if len(memory)
                      else [torch.zeros_like(p) for p in params] for memory in self.memories]
        if is_distributed():
            self._combine_replicas(references)
        gram, alignment = _gram(references, grads)
        if bool((alignment >= 0).all()):
            return  # no past task's loss would rise: keep g
        v = solve_gem_dual(gram, alignment, self.config.margin, self.config.eps)
        for k, reference in enumerate(references):
            torch._foreach_add_(grads, reference, alpha=float(v[k]))

    def _combine_replicas(self, references: list[list[Tensor]]) -> None:
        """Each g_k ← Σ_r n_r,k g_r,k / Σ_r n_r,k over the replicas r (n: memory sizes)."""
        counts = [float(len(memory)) for memory in self.memories]
        for reference, count in zip(references, counts):
            torch._foreach_mul_(reference, count)
        like = references[0][0]
        totals = torch.tensor(counts, dtype=like.dtype, device=like.device)
        all_reduce_sum_([g for reference in references for g in reference] + [totals])
        for reference, total in zip(references, totals.tolist()):
            torch._foreach_div_(reference, max(total, 1.0))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "memories": [m.state() for m in self.memories]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.memories = [Batch.from_state(m).to(self.device) for m in state["memories"]]


def _gram(references: list[list[Tensor]], grads: list[Tensor]) -> tuple[Tensor, Tensor]:
    """G Gᵀ and G g, summed over parameter tensors (no gradient is concatenated)."""
    size = len(references)
    gram = torch.zeros(size, size, dtype=torch.float64, device=grads[0].device)
    alignment = torch.zeros(size, dtype=torch.float64, device=grads[0].device)
    for index, grad in enumerate(grads):
        rows = torch.stack([reference[index].reshape(-1) for reference in references]).double()
        gram += rows @ rows.T
        alignment += rows @ grad.reshape(-1).double()
    return gram, alignment
