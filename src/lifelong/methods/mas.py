"""Memory aware synapses, MAS (Aljundi et al. 2018).

After each task, a parameter's importance is how much the squared L2 norm of the network's output
moves with it, averaged over the task's samples, with no labels needed:

    Ω_t = 1/N Σ_i |∂ ||f(x_i)||²₂ / ∂θ|,   Ω ← Ω + Ω_t,   θ* ← the task's final weights,

and later tasks pay λ · Σ_i Ω_i (θ_i − θ*_i)² (the paper's form, without a ½). f(x) is the output
the task reads (its head in task-incremental learning); units masked for the sample are left out.
The per-sample absolute gradients are exact (see `lifelong.functional.per_sample`), where the
authors' code takes the absolute value of whole-batch gradients. Like EWC's Fisher, the
importance is that of the model as it is evaluated: eval mode, BatchNorm on its running
statistics, which the importance passes leave unchanged. Under data parallelism it is the mean
over the samples of every replica's shard (`lifelong.functional.per_sample`).

Class-incremental learning: not protected, it forgets about as much as fine-tuning; a run there
starts with a warning (`unprotected_scenarios`, `lifelong.core.method.WEIGHT_PENALTY_CLASS_IL`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..core.batch import Batch, BatchLike
from ..core.config import Config, option
from ..core.method import OBJECTIVE, WEIGHT_PENALTY_CLASS_IL, Method, carry_over, copy_of
from ..core.registry import register_method
from ..functional import add_quadratic_gradient_, quadratic_value
from ..functional.per_sample import per_sample_gradient_mean


@dataclasses.dataclass
class MASConfig(Config):
    lambda_: float = option(1.0, "penalty strength λ", low=0)
    importance_samples: int | None = option(
        None, "samples of the task used for the importance (None: all)", low=1)
    importance_batch_size: int = option(256, "per-sample gradients computed at once", low=1)


def output_norm_terms(logits: Tensor, batch: Batch) -> list[tuple[Tensor, Tensor | None]]:
    """||f(x_i)||² per sample, leaving out units masked to -inf."""
    return [(torch.where(torch.isfinite(logits), logits, 0).square().sum(-1), None)]


@register_method
class MAS(Method):
    name = "mas"
    description = "memory aware synapses: importance from output sensitivity, label-free"
    Config = MASConfig
    needs_task_boundaries = True
    unprotected_scenarios = {"class": WEIGHT_PENALTY_CLASS_IL.format(name="mas")}
    gradient_stage = OBJECTIVE
    state_attrs = ("importance", "anchor", "weighted_anchor")

    def __init__(self, config: MASConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.importance: list[Tensor] | None = None  # Ω
        self.anchor: list[Tensor] | None = None  # θ*
        self.weighted_anchor: list[Tensor] | None = None  # Ω∘θ*

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        # a parameter that joins training (a new LoRA adapter) has no importance yet
        self.importance = carry_over(self.importance, before, self.params, torch.zeros_like)
        self.anchor = carry_over(self.anchor, before, self.params, copy_of)
        self.weighted_anchor = carry_over(self.weighted_anchor, before, self.params,
                                          torch.zeros_like)

    def transform_grads(self) -> None:
        if self.importance is not None:  # gradient of λ Σ Ω (θ − θ*)²
            add_quadratic_gradient_(self.params, 2 * self.config.lambda_, self.importance,
                                    self.weighted_anchor)

    def penalty_value(self) -> Tensor | None:
        """λ · Σ Ω (θ − θ*)² at the current weights."""
        if self.importance is None:
            return None
        return quadratic_value(self.params, self.anchor, self.importance,
                               2 * self.config.lambda_)

    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        cfg = self.config
        batches = self.batches(data, cfg.importance_batch_size, limit=cfg.importance_samples)
        per_name = per_sample_gradient_mean(self.model, batches, self.readout.select,
                                            output_norm_terms, "abs",
                                            max_rows=cfg.importance_batch_size)
        new = [per_name[name] for name in self.param_names]
        self.importance = new if self.importance is None else torch._foreach_add(
            self.importance, new)
        self.anchor = [p.detach().clone() for p in self.params]
        self.weighted_anchor = torch._foreach_mul(self.importance, self.anchor)
