"""L1 to the task's starting weights, and the task's "dominant winning ticket".

Each task trains with loss + λ · ||θ − θ_start||₁, θ_start the weights when the task began. The L1
penalty concentrates the task's change ΔW = θ − θ_start in few rows (output units), the
observation behind the "dominant winning ticket" (Gong et al. 2022): after the task, the k rows
of every parameter tensor with the largest ||ΔW_row||₁ (k = `ticket_fraction` of its rows; a 1-D
tensor's rows are its entries) form the task's ticket. `report` gives the ticket's sparsity (the
fraction of entries outside it) and the task's accuracy with only the ticket applied,
θ_start + ticket ∘ ΔW, next to the full model's. With `apply_ticket=True` the model keeps only
the ticket's change, a sparse update that touches fewer of the weights earlier tasks use.

The penalty's subgradient λ·sign(θ − θ_start) joins the gradient at the optimizer step, like
EWC's; `penalty_value()` gives its value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..core.batch import Batch, BatchLike
from ..core.config import Config, option
from ..core.copy import frozen_copy
from ..core.method import OBJECTIVE, Evaluator, Method, carry_over, copy_of
from ..core.registry import register_method
from ..functional import gradients_of


@dataclasses.dataclass
class L1Config(Config):
    lambda_: float = option(1e-4, "strength λ of λ·||θ − θ_start||₁", low=0)
    ticket_fraction: float = option(0.1, "fraction k of each tensor's rows kept in the ticket",
                                    low=0, high=1, low_open=True)
    apply_ticket: bool = option(False, "after each task keep only the ticket's change")


def ticket_masks(change: list[Tensor], fraction: float) -> list[Tensor]:
    """Per tensor, a bool mask of its ceil(fraction·rows) rows with the largest L1 change."""
    masks = []
    for delta in change:
        rows = delta.reshape(delta.shape[0], -1) if delta.dim() > 1 else delta.reshape(-1, 1)
        keep = max(1, math.ceil(fraction * rows.shape[0]))
        top = rows.abs().sum(1).topk(keep).indices
        row_mask = torch.zeros(rows.shape[0], dtype=torch.bool, device=delta.device)
        row_mask[top] = True
        masks.append(row_mask)
    return masks


def _no_rows(param: Tensor) -> Tensor:
    """A row mask (as `ticket_masks` gives) that keeps no row of `param`."""
    rows = param.shape[0] if param.dim() > 1 else param.numel()
    return torch.zeros(rows, dtype=torch.bool, device=param.device)


def _expand(row_mask: Tensor, like: Tensor) -> Tensor:
    return row_mask.reshape(-1, *([1] * (like.dim() - 1))) if like.dim() > 1 else row_mask


@register_method
class L1(Method):
    name = "l1"
    description = "L1 penalty to the task's starting weights; reports the task's winning ticket"
    Config = L1Config
    needs_task_boundaries = True
    gradient_stage = OBJECTIVE
    state_attrs = ("start", "tickets")

    def __init__(self, config: L1Config | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.start: list[Tensor] | None = None  # θ_start of the task being trained
        self.tickets: list[list[Tensor]] = []  # per task, a row mask per parameter
        self._full_model: torch.nn.Module | None = None

    def on_attach(self) -> None:
        if self.start is None:
            self.start = [p.detach().clone() for p in self.params]

    def before_task(self, task: int) -> None:
        super().before_task(task)
        self.start = [p.detach().clone() for p in self.params]

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        # a parameter that joins training starts here and holds no row of an earlier ticket
        self.start = carry_over(self.start, before, self.params, copy_of)
        self.tickets = [carry_over(ticket, before, self.params, _no_rows)
                        for ticket in self.tickets]

    @torch.no_grad()
    def transform_grads(self) -> None:
        if self.config.lambda_:
            signs = torch._foreach_sub(self.params, self.start)
            signs = [s.sign_() for s in signs]
            torch._foreach_add_(gradients_of(self.params), signs, alpha=self.config.lambda_)

    def penalty_value(self) -> Tensor:
        """λ · ||θ − θ_start||₁ at the current weights."""
        with torch.no_grad():
            total = sum((p - s).abs().sum() for p, s in zip(self.params, self.start))
        return self.config.lambda_ * total

    @torch.no_grad()
    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        change = torch._foreach_sub(self.params, self.start)
        masks = ticket_masks(change, self.config.ticket_fraction)
        self.tickets.append(masks)
        self._full_model = None
        if self.config.apply_ticket:
            self._full_model = frozen_copy(self.model)  # to report the full change's accuracy
            self._load_ticket(self.params, masks, change)

    def _load_ticket(self, params: list[Tensor], masks: list[Tensor],
                     change: list[Tensor]) -> None:
        for p, s, m, d in zip(params, self.start, masks, change):
            p.copy_(s + d * _expand(m, d))

    def ticket_sparsity(self, task: int) -> float:
        """Fraction of parameter entries outside task `task`'s ticket."""
        kept = sum(int(_expand(m, p).expand_as(p).sum()) for m, p in zip(self.tickets[task],
                                                                          self.params))
        return 1.0 - kept / sum(p.numel() for p in self.params)

    @torch.no_grad()
    def report(self, task: int, evaluate: Evaluator) -> dict[str, float]:
        if task >= len(self.tickets):
            return {}
        if self.config.apply_ticket:  # the model holds the ticket; the copy the full change
            ticket_accuracy = evaluate(self.model)[task]
            full_accuracy = evaluate(self._full_model)[task]
        else:
            candidate = frozen_copy(self.model)
            own = {id(p) for p in self.params}
            params = [c for c, p in zip(candidate.parameters(), self.model.parameters())
                      if id(p) in own]
            change = torch._foreach_sub(self.params, self.start)
            self._load_ticket(params, self.tickets[task], change)
            ticket_accuracy = evaluate(candidate)[task]
            full_accuracy = evaluate(self.model)[task]
        return {"ticket_sparsity": self.ticket_sparsity(task),
                "ticket_accuracy": ticket_accuracy, "full_accuracy": full_accuracy}
