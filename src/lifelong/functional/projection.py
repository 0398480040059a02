"""Gradient projections (A-GEM, Chaudhry et al. 2019), computed per parameter tensor.

Dot products over the whole model are sums of per-tensor dot products: no gradient is ever
concatenated into one vector. On a GPU no value is copied to the host (no `.item()`, the
condition is arithmetic), so the step stays asynchronous; on the CPU, where reading a value costs
nothing, a step without conflict stops after the dot product and one with a conflict updates in
one fused pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def dot(first: Sequence[Tensor], second: Sequence[Tensor]) -> Tensor:
    """Σ over tensors of ⟨a, b⟩."""
    return torch.stack([torch.vdot(a.reshape(-1), b.reshape(-1)) for a, b in zip(first, second)]
                       ).sum()


def project_away_from_conflict_(grads: Sequence[Tensor], reference: Sequence[Tensor],
                                eps: float = 1e-12, *, reference_is_scratch: bool = False
                                ) -> Tensor:
    """A-GEM: if ⟨g, g_ref⟩ < 0, g ← g − ⟨g, g_ref⟩ / (⟨g_ref, g_ref⟩ + eps) · g_ref, in place.

    Returns ⟨g, g_ref⟩ before the projection. The condition is applied arithmetically (the
    coefficient is clamped at 0) rather than with a Python branch, to avoid a host sync. With
    `reference_is_scratch`, g_ref is scaled in place instead of copied (it is destroyed).
    """
    inner = dot(grads, reference)
    if inner.device.type == "cpu":  # reading a value costs nothing here: skip what is not needed
        if float(inner) < 0:
            squared_norm = float(torch.stack(torch._foreach_norm(reference)).square().sum())
            torch._foreach_add_(grads, reference, alpha=-float(inner) / (squared_norm + eps))
        return inner
    squared_norm = torch.stack(torch._foreach_norm(reference)).square().sum()
    coefficient = inner.clamp(max=0) / (squared_norm + eps)
    if reference_is_scratch:
        torch._foreach_mul_(reference, coefficient)
        torch._foreach_sub_(grads, reference)
    else:
        torch._foreach_sub_(grads, torch._foreach_mul(reference, coefficient))
    return inner


def solve_gem_dual(gram: Tensor, alignment: Tensor, margin: float = 0.0,
                   damping: float = 0.0) -> Tensor:
    """The dual of GEM's projection: argmin_v ½ vᵀ(P + damping·I)v + qᵀv subject to v ≥ margin,
    with P = G Gᵀ (the past tasks' gradients' Gram matrix) and q = G g.

    With u = v − margin ≥ 0 and P + damping·I = L Lᵀ, the problem is the non-negative least
    squares min_u ||Lᵀu + L⁻¹(P m + q)||², solved exactly by Lawson-Hanson (scipy's `nnls`).
    """
    import numpy as np
    from scipy.linalg import solve_triangular
    from scipy.optimize import nnls

    P = gram.detach().double().cpu().numpy()
    q = alignment.detach().double().cpu().numpy()
    P = 0.5 * (P + P.T) + damping * np.eye(len(P))
    lower = np.linalg.cholesky(P)
    shift = P @ np.full(len(P), margin) + q
    target = -solve_triangular(lower, shift, lower=True)
    u, _ = nnls(lower.T, target)
    return torch.from_numpy(u + margin).to(gram.device, gram.dtype)
