"""Elastic weight consolidation (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018).

After task k, the diagonal Fisher F_k is computed at the task's final weights θ*_k. Training on
later tasks minimises the task loss plus

    separate:  λ/2 · Σ_k Σ_i F_k,i (θ_i − θ*_k,i)²
    online:    λ/2 · Σ_i F_i (θ_i − θ*_i)²,   F ← γF + F_k,  θ* = the latest task's weights.

Both are one quadratic P (θ − μ)² (+ a constant): online, P = F and μ = θ*; separate,
P = Σ_k F_k, μ = Σ_k F_k θ*_k / P and c = Σ_k F_k θ*_k² − P μ², exact in value and gradient with
two stored copies of the weights whatever the number of tasks. The penalty's gradient
λ·(P∘θ − P∘μ) is added at the optimizer step, like `weight_decay` (see
`lifelong.functional.quadratic`); `penalty_value()` gives its value. When the trainable
parameters change (`inc-lora+ewc`: a new adapter per task, the previous one frozen), a parameter
that joins has no Fisher yet (no penalty) and one that is frozen leaves the penalty: it can no
longer move, so its term would be a constant.

The Fisher is that of the model as it is evaluated: eval mode, dropout off, BatchNorm on its
running statistics, which the Fisher's passes leave unchanged. Under data parallelism it is the
mean over the samples of every replica's shard (`lifelong.functional.per_sample`).

Class-incremental learning: not protected, it forgets about as much as fine-tuning; a run there
starts with a warning (`unprotected_scenarios`, `lifelong.core.method.WEIGHT_PENALTY_CLASS_IL`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor

from ..core.batch import Batch, BatchLike
from ..core.config import Config, option
from ..core.method import OBJECTIVE, WEIGHT_PENALTY_CLASS_IL, Method, carry_over, copy_of
from ..core.registry import register_method
from ..functional import add_quadratic_gradient_, diagonal_fisher, quadratic_value


@dataclasses.dataclass
class EWCConfig(Config):
    lambda_: float = option(100.0, "penalty strength λ", low=0)
    mode: Literal["separate", "online"] = option(
        "separate", "separate: one penalty per past task; online: one running Fisher")
    gamma: float = option(1.0, "online mode: decay of the running Fisher, F ← γF + F_t",
                          low=0, high=1)
    fisher: Literal["empirical", "true", "sampled"] = option(
        "true", "true: expectation over p(y|x); empirical: the true labels; sampled: y ~ p(y|x)")
    fisher_samples: int | None = option(
        None, "samples of the task used for the Fisher (None: all)", low=1)
    fisher_batch_size: int = option(
        256, "per-sample gradients computed at once (memory vs speed)", low=1)


@register_method
class EWC(Method):
    """Elastic weight consolidation, separate or online."""

    name = "ewc"
    description = "elastic weight consolidation: Fisher-weighted anchor to past weights"
    Config = EWCConfig
    needs_task_boundaries = True
    unprotected_scenarios = {"class": WEIGHT_PENALTY_CLASS_IL.format(name="ewc")}
    gradient_stage = OBJECTIVE
    state_attrs = ("precision", "anchor", "weighted_anchor", "constant", "tasks_seen")

    def __init__(self, config: EWCConfig | dict | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.precision: list[Tensor] | None = None  # P
        self.anchor: list[Tensor] | None = None  # μ
        self.weighted_anchor: list[Tensor] | None = None  # P∘μ (separate: Σ_k F_k θ*_k)
        self.constant = 0.0  # c: makes the penalty's value exact, not only its gradient
        self.tasks_seen = 0

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        # a parameter that joins training (a new LoRA adapter) has no Fisher yet: no penalty
        self.precision = carry_over(self.precision, before, self.params, torch.zeros_like)
        self.anchor = carry_over(self.anchor, before, self.params, copy_of)
        self.weighted_anchor = carry_over(self.weighted_anchor, before, self.params,
                                          torch.zeros_like)

    def transform_grads(self) -> None:
        if self.precision is not None:
            add_quadratic_gradient_(self.params, self.config.lambda_, self.precision,
                                    self.weighted_anchor)

    def penalty_value(self) -> Tensor | None:
        """λ/2 · Σ_k Σ_i F_k,i (θ_i − θ*_k,i)² (separate) or its online form, at the current θ."""
        if self.precision is None:
            return None
        value = quadratic_value(self.params, self.anchor, self.precision, self.config.lambda_)
        return value + self.config.lambda_ / 2 * self.constant

    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        cfg = self.config
        fisher = diagonal_fisher(
            self.model, self.batches(data, cfg.fisher_batch_size, limit=cfg.fisher_samples),
            self.readout.select, kind=cfg.fisher, generator=self.generator,
            max_rows=cfg.fisher_batch_size)
        new = [fisher[name] for name in self.param_names]
        weights = [p.detach().clone() for p in self.params]
        self.tasks_seen += 1
        if self.precision is None or cfg.mode == "online":
            self.precision = new if self.precision is None else torch._foreach_add(
                torch._foreach_mul(self.precision, cfg.gamma), new)
            self.anchor = weights
            self.weighted_anchor = torch._foreach_mul(self.precision, weights)
            return
        # separate: P ← P + F_t, P∘μ ← P∘μ + F_t∘θ*_t, μ = P∘μ / P, c ← c + P_old μ_old² +
        # F_t θ*_t² − P μ² (sums in float64)
        old_terms = _sum_of(torch._foreach_mul(self.weighted_anchor, self.anchor))
        new_terms = _sum_of(torch._foreach_mul(torch._foreach_mul(new, weights), weights))
        self.precision = torch._foreach_add(self.precision, new)
        self.weighted_anchor = torch._foreach_add(self.weighted_anchor,
                                                  torch._foreach_mul(new, weights))
        self.anchor = [torch.where(p > 0, pm / p.clamp_min(1e-30), latest)
                       for pm, p, latest in zip(self.weighted_anchor, self.precision, weights)]
        merged = _sum_of(torch._foreach_mul(self.weighted_anchor, self.anchor))
        self.constant = max(0.0, self.constant + old_terms + new_terms - merged)


def _sum_of(tensors: list[Tensor]) -> float:
    return float(sum(t.double().sum() for t in tensors))
