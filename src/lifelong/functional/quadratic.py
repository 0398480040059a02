"""The quadratic penalty λ/2 · Σ_i w_i (θ_i − μ_i)² of EWC, online EWC and L2, as a gradient.

Like PyTorch's own `weight_decay`, the penalty enters through the gradient at the optimizer step:
g ← g + λ·w∘(θ − μ) = g + λ·(w∘θ − w∘μ), with w∘μ precomputed when the anchor changes. Two
in-place fused `torch._foreach_*` kernels and no allocation: on a CPU this term is bound by memory
traffic, and building it through autograd (allocate θ − μ, square, sum, allocate the gradient)
cost about three times as much. `quadratic_value` gives the penalty's value when it is wanted
(reporting, tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def gradients_of(params: Sequence[Tensor]) -> list[Tensor]:
    """Each parameter's `.grad`, created as zeros where a parameter got none from the loss."""
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    return grads


@torch.no_grad()
def add_quadratic_gradient_(
    params: Sequence[Tensor],
    strength: float,
    weights: Sequence[Tensor] | None = None,
    weighted_anchors: Sequence[Tensor] | None = None,
) -> None:
    """g ← g + strength · (w∘θ − w∘μ) in place; `weights=None` means w = 1 and
    `weighted_anchors=None` means μ = 0 (weight decay)."""
    grads = gradients_of(params)
    if weights is None:
        torch._foreach_add_(grads, params, alpha=strength)
    else:
        torch._foreach_addcmul_(grads, weights, params, value=strength)
    if weighted_anchors is not None:
        torch._foreach_add_(grads, weighted_anchors, alpha=-strength)


@torch.no_grad()
def quadratic_value(
    params: Sequence[Tensor],
    anchors: Sequence[Tensor] | None,
    weights: Sequence[Tensor] | None = None,
    strength: float = 1.0,
) -> Tensor:
    """strength/2 · Σ w (θ − μ)², with w = 1 when `weights` is None and μ = 0 when `anchors` is."""
    diffs = [p.detach().clone() for p in params] if anchors is None else torch._foreach_sub(
        [p.detach() for p in params], anchors)
    if weights is not None:
        return strength / 2 * sum((w * d.square()).sum() for w, d in zip(weights, diffs))
    return strength / 2 * sum(d.square().sum() for d in diffs)
