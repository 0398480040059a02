"""Orthogonal LoRA, O-LoRA (Wang et al. 2023, "Orthogonal Subspace Learning for Language Model
Continual Learning", EMNLP Findings).

As `inc-lora` (a new adapter per task, earlier ones frozen and active), and the new adapter t is
pushed into a subspace orthogonal to those of earlier tasks: for every adapted layer, with A_i the
down-projection [r, in] of task i, O_{i,t} = A_i·A_tᵀ should be zero. The loss adds

    λ1 · Σ_layers Σ_{i<t} Σ_{j,k} O_{i,t}[j,k]²       (paper, eq. 6-7)
  + λ2 · Σ_{θ ∈ new adapter} ||θ||²                     (L2 on the new adapter)

Its gradient reaches only the new adapter (the old A_i are frozen). Defaults from the authors'
scripts (github.com/cmnfriend/O-LoRA, scripts/order_*.sh): λ1 = 0.5, λ2 = 0, r = 8, α = 32.

`norms="reference"` computes what the authors' code does instead (uie_trainer_lora.py): the
absolute sum Σ|O_{i,t}[j,k]| rather than the sum of squares, and λ2·Σ_tensors ||θ||₂ (each
tensor's norm, not squared). Use it only to match numbers of the reference implementation.
The authors adapt T5's attention q and v only (peft's default for T5): `target_modules=q,v`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor

from ..core.batch import Batch
from ..core.config import option
from ..core.method import OBJECTIVE
from ..core.registry import register_method
from .inc_lora import IncLoRA
from .lora import ADAPTER, LoRAConfig


@dataclasses.dataclass
class OLoRAConfig(LoRAConfig):
    lambda_1: float = option(0.5, "weight λ1 of the orthogonality loss (O-LoRA's scripts: 0.5)",
                             low=0)
    lambda_2: float = option(0.0, "weight λ2 of the L2 penalty on the new adapter (scripts: 0)",
                             low=0)
    norms: Literal["paper", "reference"] = option(
        "paper", "paper: Σ(A_i·A_tᵀ)² and λ2·Σ||θ||²; reference: Σ|A_i·A_tᵀ| and λ2·Σ||θ||₂ "
        "per tensor, as the authors' code computes")


@register_method
class OLoRA(IncLoRA):
    """O-LoRA: per-task adapters kept in mutually orthogonal subspaces."""

    name = "o-lora"
    description = "a new LoRA adapter per task, orthogonal to the earlier ones (O-LoRA)"
    Config = OLoRAConfig
    gradient_stage = OBJECTIVE  # a loss term, like EWC's and L2's

    def __init__(self, config: OLoRAConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.old_down: list[Tensor] = []  # per layer, the earlier adapters' A stacked [r·t, in]

    def uses(self, hook: str) -> bool:
        if hook == "penalty":
            return self.config.lambda_1 > 0 or self.config.lambda_2 > 0
        return super().uses(hook)

    def adapters_changed(self) -> None:
        # the earlier adapters are frozen: stack their A matrices once
        new = self.num_adapters - 1
        self.old_down = [torch.cat([layer.lora_A[ADAPTER.format(k)].weight.detach()
                                    for k in range(new)]) for _, layer in self.layers if new]

    def orthogonality(self) -> Tensor | None:
        """Σ_layers Σ_{i<t} Σ_{j,k} (A_i·A_tᵀ)[j,k]² (or |·| with norms="reference")."""
        if not self.old_down:
            return None
        new = ADAPTER.format(self.num_adapters - 1)
        total = None
        for old, (_, layer) in zip(self.old_down, self.layers):
            overlap = old @ layer.lora_A[new].weight.T  # [r·t, r]: every pair (i, j, k) once
            term = overlap.square().sum() if self.config.norms == "paper" else overlap.abs().sum()
            total = term if total is None else total + term
        return total

    def l2(self) -> Tensor:
        """Σ ||θ||² over the new adapter's A and B (or Σ ||θ||₂ with norms="reference")."""
        params = self.adapter_parameters(self.num_adapters - 1)
        if self.config.norms == "paper":
            return torch.stack([p.square().sum() for p in params]).sum()
        return torch.stack([torch.linalg.vector_norm(p) for p in params]).sum()

    def penalty(self, batch: Batch, output: Tensor) -> Tensor | None:
        cfg = self.config
        total = None
        if cfg.lambda_1 > 0:
            orthogonality = self.orthogonality()
            if orthogonality is not None:
                total = cfg.lambda_1 * orthogonality
        if cfg.lambda_2 > 0:
            term = cfg.lambda_2 * self.l2()
            total = term if total is None else total + term
        return total
