"""UPGD's update as functions over a small state (Elsayed & Mahmood, ICLR 2024, "Addressing loss
of plasticity and catastrophic forgetting in continual learning").

Every weight (or hidden unit) carries a utility, the loss increase a Taylor expansion predicts if
it were set to zero: first order u = −g⊙θ, second order u = −g⊙θ + ½ h⊙θ² (h: the diagonal of the
loss Hessian). It is traced as ū ← β ū + (1 − β) u and bias-corrected as û = ū / (1 − βᵗ); the
scaled utility s = sigmoid(û / M), M the largest û over all parameters (global) or over each
tensor / layer (local), gates the update:

    protecting      θ ← (1 − lr·wd) θ − lr (g + ξ) ⊙ (1 − s)
    non-protecting  θ ← (1 − lr·wd) θ − lr (g + ξ ⊙ (1 − s)),     ξ ~ N(0, σ²) fresh per step.

The functions below compute the *transformed gradient* g' with θ ← θ − lr·g' (g' = the gated,
perturbed gradient + wd·θ); `lifelong.methods.upgd` writes it into `p.grad` for any optimizer,
`lifelong.optim.UPGD` into a scratch buffer and applies it itself. Like optax, the state is
explicit (`UPGDState`: the trace and two integers) and the hyper-parameters are arguments; the
functions change the state's and the caller's tensors in place, so a step allocates nothing.

Why the numbers are right, and fast at batch size 1:

- Bias correction: û and M carry the same positive factor 1/(1 − βᵗ), so s = sigmoid(ū / max ū)
  exactly; only `corrected_scale` (for inspection) applies it. The reference code takes M from
  the uncorrected ū but divides the corrected û by it, which inflates the gate early on; that is
  not copied.
- The trace is stored as v = ū·β^−(t − origin): the decay then costs no pass over memory
  (v += β^−(t − origin)(1 − β) u, one fused addcmul). v is rescaled to ū before the factor passes
  2⁴⁰, and entries below 2⁻³⁰ of the largest are then zeroed: their float32 gate is ½ anyway, and
  left alone they would decay into denormal numbers, many times slower to compute with.
- Guard: if M ≤ 0 or M is not finite, no weight has positive utility, nothing is protected:
  s = 0 (plain SGD plus the full noise); with local scaling, per segment.
- The gate on the host (CPU tensors): M is read as a number (no device to wait for) and each
  tensor takes one fused pass, aten.softplus_backward(x, v, β, c) = x ⊙ sigmoid(β v) with
  β = −1/M (x itself where β v > c, where sigmoid rounds to 1 anyway), or none for the guard. On
  an accelerator M stays on the device: 1 − s is computed into a buffer and multiplied in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.batch import Batch
from ..integrations.distributed import all_reduce_mean_
from .hessian import LinearChainRecorder, LinearCurvature, output_curvature

# x ⊙ sigmoid(β v) in one pass (x where β v > c): see `gate_`
_times_sigmoid = torch.ops.aten.softplus_backward.grad_input


@dataclasses.dataclass
class UPGDState:
    """The utility trace v (flat: every weight, or every hidden unit) with ū_t = v·β^(t − origin),
    and t, the number of steps taken."""

    trace: Tensor
    origin: int = 0
    steps: int = 0


@dataclasses.dataclass
class Layout:
    """Which part of the trace gates which tensor.

    `sizes`: the trace's segments (one per tensor at weight level, one per hidden layer at
    feature level), each a unit of local scaling, and `segments` their views (made once: views
    cost microseconds each at batch size 1); `utility[k]`: the view of the trace that gated
    tensor k's gate reads (shaped like it, or a unit's utility broadcast over its row);
    `segment[k]`: the segment that view lies in; `keep`: a buffer for 1 − s (the accelerator path
    and `keep`), `keep_views[k]` its view matching `utility[k]`."""

    sizes: list[int]
    segments: list[Tensor]
    utility: list[Tensor]
    segment: list[int]
    keep: Tensor
    keep_views: list[Tensor]


def init_weights(params: Sequence[Tensor]) -> tuple[UPGDState, Layout]:
    """A zero trace with one utility per entry of each tensor in `params`, and its layout."""
    sizes = [p.numel() for p in params]
    state = UPGDState(params[0].new_zeros(sum(sizes)))
    keep = torch.empty_like(state.trace)

    def shaped(flat: Tensor) -> list[Tensor]:
        return [part.view(p.shape) for part, p in zip(flat.split(sizes), params)]

    views = shaped(state.trace)
    return state, Layout(sizes, [v.view(-1) for v in views], views, list(range(len(sizes))), keep,
                         shaped(keep))


def init_units(units: Sequence[int], biased: Sequence[bool], like: Tensor
               ) -> tuple[UPGDState, Layout]:
    """A zero trace with one utility per hidden unit, and its layout: layer k has `units[k]`
    units gating the rows of its weight and, if `biased[k]`, the entries of its bias (the gated
    tensors in that order). `like`: the parameters' dtype and device."""
    sizes = list(units)
    state = UPGDState(like.new_zeros(sum(sizes)))
    keep = torch.empty_like(state.trace)
    utility, keep_views, segment = [], [], []
    for k, (u, kept, bias) in enumerate(zip(state.trace.split(sizes), keep.split(sizes), biased)):
        utility.append(u.unsqueeze(1))
        keep_views.append(kept.unsqueeze(1))
        segment.append(k)
        if bias:
            utility.append(u)
            keep_views.append(kept)
            segment.append(k)
    return state, Layout(sizes, list(state.trace.split(sizes)), utility, segment, keep, keep_views)


# --- the trace ---------------------------------------------------------------------------------
def advance(state: UPGDState, beta: float) -> float:
    """Start step t + 1: return the coefficient c with which this step's utility u enters the
    trace (v += c·u stands for ū ← β ū + (1 − β) u), rescaling v first where needed."""
    state.steps += 1
    if beta < 2.0 ** -20:  # (almost) no memory: decay v directly, v = ū
        if beta == 0:
            state.trace.zero_()
        else:
            state.trace.mul_(beta)
        state.origin = state.steps
    elif beta ** (state.steps - state.origin) < 2.0 ** -40:
        rescale_(state, beta, state.steps - 1)
    return (1 - beta) / beta ** (state.steps - state.origin)


def rescale_(state: UPGDState, beta: float, step: int) -> None:
    """Make v = ū at `step` (origin = step), zeroing entries smaller in size than 2⁻³⁰ M (M the
    largest utility, or the largest |ū| if none is positive)."""
    v = state.trace
    v.mul_(beta ** (step - state.origin))
    largest = v.amax()
    floor = torch.where(largest > 0, largest, v.abs().amax()) * 2.0 ** -30
    v.masked_fill_(v.abs() < floor, 0.0)
    state.origin = step


def add_weight_utility_(trace: Sequence[Tensor], grads: Sequence[Tensor],
                        params: Sequence[Tensor], coefficient: float) -> None:
    """v += c·(−g⊙θ), per tensor (`trace`: the trace's views shaped like `params`)."""
    torch._foreach_addcmul_(trace, grads, params, value=-coefficient)


def add_curvature_(trace: Sequence[Tensor], params: Sequence[Tensor], index: dict[int, int],
                   curvature: dict[nn.Linear, LinearCurvature], coefficient: float) -> None:
    """Second order: v += c·½ h⊙θ² for the parameters whose diagonal Hessian h `curvature` holds
    (`index`: id(parameter) → its position in `params` and `trace`); h is overwritten."""
    targets, hessians, chosen = [], [], []
    for layer, c in curvature.items():
        for p, h in ((layer.weight, c.weight), (layer.bias, c.bias)):
            i = None if p is None or h is None else index.get(id(p))
            if i is not None:
                targets.append(trace[i])
                hessians.append(h)
                chosen.append(params[i])
    if not targets:
        return
    torch._foreach_mul_(hessians, chosen)  # h⊙θ, in place
    torch._foreach_addcmul_(targets, hessians, chosen, value=coefficient / 2)


def batch_curvature(recorder: LinearChainRecorder, batch: Batch, output: Tensor | None,
                    readout: Any, units: bool) -> dict[nn.Linear, LinearCurvature] | None:
    """The diagonal Hessian of the task loss of `batch` for the Linear layers of the model's
    trailing chain, from the recorded forward pass that returned `output`: exact for the output
    layer, HesScale below (`lifelong.functional.hessian`); averaged over data-parallel replicas,
    as DDP averages g. None when that pass did not go through the chain with this batch."""
    records = recorder.find(output)
    last = None if records is None else records[recorder.chain[-1]][1]
    if last is None or last.shape[0] != len(batch):
        return None
    hessian, gradient = output_curvature(last, batch.y, batch.task_ids, readout,
                                         batch.extras.get("loss_weight"),
                                         with_gradient=recorder.curved)
    curvature = recorder.curvature(records, hessian, gradient, units=units)
    all_reduce_mean_([h for c in curvature.values() for h in (c.weight, c.bias, c.unit)
                      if h is not None])
    return curvature


def add_unit_utility_(segments: Sequence[Tensor], grads: Sequence[Tensor],
                      params: Sequence[Tensor], biased: Sequence[bool], coefficient: float,
                      curvature: Sequence[Tensor | None] = ()) -> None:
    """Feature level: v_j += c·u_j for each hidden unit j, u_j = −Σ_i W_ji ∂L/∂W_ji − c_j ∂L/∂c_j,
    the utility of the unit's pre-activation z = Wx + c computed from the gradients already there
    (+ ½ Σ_b ĥ_z,bj z_bj² where `curvature` gives it). `grads` and `params`: each layer's weight,
    then its bias if `biased`."""
    products = torch._foreach_mul(grads, params)
    k = 0
    for i, (target, bias) in enumerate(zip(segments, biased)):
        unit = products[k].sum(1)
        k += 1
        if bias:
            unit += products[k]
            k += 1
        target.add_(unit, alpha=-coefficient)
        if i < len(curvature) and curvature[i] is not None:
            target.add_(curvature[i], alpha=coefficient / 2)


def corrected_scale(state: UPGDState, beta: float) -> float:
    """The factor that turns v into the bias-corrected utility: û = v · factor."""
    t = state.steps
    decay = beta ** (t - state.origin) if beta else float(t > 0)
    return decay / (1.0 - beta ** t if t else 1.0)


# --- the gate ----------------------------------------------------------------------------------
def maxima(state: UPGDState, layout: Layout, local: bool) -> Tensor:
    """M up to the positive factor β^(t − origin): the largest utility, or one per segment."""
    if not local:
        return state.trace.amax().reshape(1)
    return torch.stack([u.amax() for u in layout.segments])


def keep_(state: UPGDState, layout: Layout, local: bool) -> Tensor:
    """layout.keep ← 1 − s = sigmoid(−v / M) (1 where the guard applies), M kept on the device."""
    top = maxima(state, layout, local)
    blocked = ~((top > 0) & torch.isfinite(top))
    scale = torch.where(blocked, 0.0, -top.reciprocal())
    if len(top) > 1:
        sizes = torch.tensor(layout.sizes, device=top.device)
        scale = scale.repeat_interleave(sizes, output_size=state.trace.numel())
        blocked = blocked.repeat_interleave(sizes, output_size=state.trace.numel())
    torch.mul(state.trace, scale, out=layout.keep)
    return layout.keep.sigmoid_().masked_fill_(blocked, 1.0)


def gate_(targets: Sequence[Tensor], out: Sequence[Tensor], state: UPGDState, layout: Layout,
          local: bool, on_host: bool) -> None:
    """out ← targets ⊙ (1 − s) (`out` may be `targets`). `on_host`: read M as numbers and take
    one fused pass per tensor (CPU tensors); else keep M on the device."""
    if on_host:
        saturation = 40.0 if state.trace.dtype == torch.float64 else 20.0  # sigmoid rounds to 1
        slopes = [-1.0 / m if m > 0 and math.isfinite(m) else None
                  for m in maxima(state, layout, local).tolist()]
        for x, u, k, y in zip(targets, layout.utility, layout.segment, out):
            slope = slopes[k if local else 0]
            if slope is not None:
                _times_sigmoid(x, u, slope, saturation, grad_input=y)
            elif y is not x:  # the guard: 1 − s = 1
                y.copy_(x)
        return
    keep_(state, layout, local)
    if out is targets:
        torch._foreach_mul_(targets, layout.keep_views)
    else:
        for x, keep, y in zip(targets, layout.keep_views, out):
            torch.mul(x, keep, out=y)


# --- the transformed gradient ------------------------------------------------------------------
def _add(grads: Sequence[Tensor], other: Sequence[Tensor], out: Sequence[Tensor],
         alpha: float) -> None:
    """out ← g + α·other, in place on `grads` when out is grads (the same arithmetic either way)."""
    if out is grads:
        torch._foreach_add_(grads, other, alpha=alpha)
    else:
        for g, x, y in zip(grads, other, out):
            torch.add(g, x, alpha=alpha, out=y)


def perturb_and_gate_(grads: Sequence[Tensor], out: Sequence[Tensor],
                      noise: Sequence[Tensor] | None, state: UPGDState, layout: Layout, *,
                      sigma: float, protect: bool, local: bool, on_host: bool) -> None:
    """out ← (g + σξ) ⊙ (1 − s) (protecting) or g + σξ ⊙ (1 − s) (non-protecting), for the gated
    tensors. `noise`: N(0, 1) draws shaped like `grads`, or None for σ = 0. `out` is `grads` (in
    place), or scratch tensors that may be `noise` itself (the draws are consumed)."""
    if protect:
        if noise is not None:
            _add(grads, noise, out, sigma)
        gate_(out if noise is not None else grads, out, state, layout, local, on_host)
    elif noise is not None:
        gate_(noise, noise, state, layout, local, on_host)
        _add(grads, noise, out, sigma)
    elif out is not grads:
        torch._foreach_copy_(out, grads)


def add_weight_decay_(out: Sequence[Tensor], params: Sequence[Tensor], weight_decay: float
                      ) -> None:
    """out += wd·θ, so that θ − lr·out has the factor (1 − lr·wd)."""
    if weight_decay:
        torch._foreach_add_(out, params, alpha=weight_decay)
