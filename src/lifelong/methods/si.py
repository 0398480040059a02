"""Synaptic intelligence, SI (Zenke, Poole & Ganguli 2017).

While a task trains, each parameter's contribution to the drop in loss is integrated along the
optimisation path: ω ← ω − g∘Δθ at every step, with g the gradient of the loss *without* SI's own
penalty (as in the authors' code) and Δθ the step actually taken (whatever the optimizer). At the
task's end the importance grows by Ω ← Ω + ω / (Δ² + ξ), Δ = θ_end − θ_start, and later tasks pay

    c · Σ_i Ω_i (θ_i − θ*_i)²,   θ* the weights at the end of the previous task

(the paper's form, without a ½). The penalty's gradient 2c·Ω∘(θ − θ*) is added at the optimizer
step like EWC's; ξ = 0.1 by default, as in van de Ven et al.'s code.

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
from ..functional import add_quadratic_gradient_, gradients_of, quadratic_value


@dataclasses.dataclass
class SIConfig(Config):
    c: float = option(1.0, "penalty strength c", low=0)
    xi: float = option(0.1, "damping ξ in Ω += ω / (Δ² + ξ)", low=0, low_open=True)


@register_method
class SI(Method):
    name = "si"
    description = "synaptic intelligence: importance from each weight's path integral of the loss"
    Config = SIConfig
    needs_task_boundaries = True
    unprotected_scenarios = {"class": WEIGHT_PENALTY_CLASS_IL.format(name="si")}
    gradient_stage = OBJECTIVE
    state_attrs = ("omega", "importance", "anchor", "weighted_anchor", "start")

    def __init__(self, config: SIConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.omega: list[Tensor] | None = None  # ω of the task being trained
        self.importance: list[Tensor] | None = None  # Ω
        self.anchor: list[Tensor] | None = None  # θ*
        self.weighted_anchor: list[Tensor] | None = None  # Ω∘θ*
        self.start: list[Tensor] | None = None  # θ at the start of the current task

    def on_attach(self) -> None:
        if self.omega is None:
            self.omega = [torch.zeros_like(p) for p in self.params]
            self.start = [p.detach().clone() for p in self.params]
        self._allocate_scratch()

    def _allocate_scratch(self) -> None:
        """Space for the step: the gradient and weights just before it."""
        self._grad_before = [torch.empty_like(p) for p in self.params]
        self._weights_before = [torch.empty_like(p) for p in self.params]

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        # a parameter that joins training (a new LoRA adapter) starts its path integral now
        zeros = torch.zeros_like
        self.omega = carry_over(self.omega, before, self.params, zeros)
        self.importance = carry_over(self.importance, before, self.params, zeros)
        self.anchor = carry_over(self.anchor, before, self.params, copy_of)
        self.weighted_anchor = carry_over(self.weighted_anchor, before, self.params, zeros)
        self.start = carry_over(self.start, before, self.params, copy_of)
        self._allocate_scratch()

    @torch.no_grad()
    def transform_grads(self) -> None:
        grads = gradients_of(self.params)
        torch._foreach_copy_(self._grad_before, grads)  # before SI's own penalty
        torch._foreach_copy_(self._weights_before, self.params)
        if self.importance is not None:
            add_quadratic_gradient_(self.params, 2 * self.config.c, self.importance,
                                    self.weighted_anchor)

    @torch.no_grad()
    def after_step(self) -> None:
        # ω ← ω − g∘(θ_new − θ_old) = ω + g∘(θ_old − θ_new)
        torch._foreach_sub_(self._weights_before, self.params)
        torch._foreach_addcmul_(self.omega, self._grad_before, self._weights_before)

    def penalty_value(self) -> Tensor | None:
        """c · Σ Ω (θ − θ*)² at the current weights."""
        if self.importance is None:
            return None
        return quadratic_value(self.params, self.anchor, self.importance, 2 * self.config.c)

    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        end = [p.detach().clone() for p in self.params]
        change = torch._foreach_sub(end, self.start)
        denominator = torch._foreach_add(torch._foreach_mul(change, change), self.config.xi)
        added = torch._foreach_div(self.omega, denominator)
        self.importance = added if self.importance is None else torch._foreach_add(
            self.importance, added)
        self.anchor = end
        self.weighted_anchor = torch._foreach_mul(self.importance, end)
        self.start = [e.clone() for e in end]
        torch._foreach_zero_(self.omega)
