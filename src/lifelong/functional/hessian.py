"""Diagonal of the loss Hessian for the weights of a plain chain of Linear layers.

The chain is what an MLP is: Linear → elementwise → Linear → … → Linear, the last Linear giving
the model's output. Per sample b, with the loss L = Σ_b w_b ℓ_b (w_b = 1/B for a mean):

- output layer, exact: z = W x + c feeds the loss directly, so ∂²L/∂W_kj² = Σ_b H_b[k, k] x_bj²
  and ∂²L/∂c_k² = Σ_b H_b[k, k], with H_b[k, k] = w_b p_bk(1 − p_bk) for softmax cross-entropy and
  2 w_b for the squared error (summed over outputs). The logits pass through the readout first
  (a task's head gathers its units, class-incremental masking sets unseen classes to −inf): p is
  the softmax of the selected logits, and each term lands on the unit it came from; units no
  sample reads out get 0.
- earlier layers, the diagonal back-propagation of Becker & LeCun (1989) that HesScale (Elsayed &
  Mahmood 2022) uses: ĥ_a[j] = Σ_k W[k, j]² ĥ_z[k] (the off-diagonal terms of the Hessian with
  respect to z are dropped: the approximation), then through an elementwise σ:
  ĥ_z' = σ'(z')² ĥ_a + σ''(z') g_a, with g_a = ∂L/∂a per sample (σ'' = 0 for ReLU and LeakyReLU,
  so g is only computed when a Tanh or Sigmoid is in the chain); and ĥ_W = Σ_b ĥ_z,b ⊗ x_b².

Elementwise modules understood: ReLU (also in place), LeakyReLU (slope ≥ 0), Tanh, Sigmoid,
Identity, Flatten (a no-op on the 2-D activations between Linear layers) and Dropout (its mask
read from its output: σ' = 1[out ≠ 0]/(1 − p) in training). The chain is read from the model's
leaf modules in order and checked at every forward pass: each module's input must be the very
tensor the previous one returned and the model must return the last Linear's output. Where a
check fails the recursion stops, and the layers below get no curvature (their parameters'
diagonal is unknown, not zero: the caller decides; UPGD uses 0, i.e. first order).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.introspection import trailing_linear_chain

CURVED = (nn.Tanh, nn.Sigmoid)  # σ'' ≠ 0: the recursion needs per-sample gradients


@dataclasses.dataclass
class LinearCurvature:
    """The diagonal Hessian of one Linear layer's weight and bias, and per output unit j the
    curvature Σ_b ĥ_z[b, j] z_bj² (that of a gate multiplying the unit's pre-activation)."""

    weight: Tensor
    bias: Tensor | None
    unit: Tensor | None


def output_curvature(
    output: Tensor,
    y: Tensor,
    task_ids: Tensor | None,
    readout: Any,
    weights: Tensor | None = None,
    *,
    with_gradient: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Per sample, the diagonal of ∂²L/∂z² (and ∂L/∂z if asked) for the model's output units z.

    The loss is `Batch.loss`: cross-entropy for integer `y`, squared error summed over outputs
    for floating-point `y`; each sample weighs `weights[b]`, or 1/B (a mean).
    """
    z = output.detach()
    size = z.shape[0]
    selected = readout.select(z, task_ids)
    w = 1.0 / size if weights is None else weights.detach().to(z.dtype).view(size, 1)
    gradient = None
    if y.is_floating_point():
        finite = torch.isfinite(selected)
        hessian = finite.to(z.dtype) * (2 * w)
        if with_gradient:
            residual = torch.where(finite, selected - y.view_as(selected), 0.0)
            gradient = residual * (2 * w)
    else:
        p = torch.softmax(selected, dim=1)
        hessian = p * (1 - p)
        hessian *= w
        if with_gradient:
            gradient = (p - F.one_hot(y, p.shape[1]).to(p.dtype)) * w
    if getattr(readout, "kind", "none") == "task":  # task-local positions back to the units
        index = readout.unit_table[task_ids]
        valid = index >= 0
        index = index.clamp(min=0)
        hessian = z.new_zeros(z.shape).scatter_add_(1, index, hessian * valid)
        if gradient is not None:
            gradient = z.new_zeros(z.shape).scatter_add_(1, index, gradient * valid)
    return hessian, gradient


def _derivatives(module: nn.Module, out: Tensor) -> tuple[Tensor | float, Tensor | None]:
    """σ'(z) and σ''(z) of an elementwise module, from its output (so in-place ReLU works); a
    boolean σ' is a 0/1 mask (σ'² = σ')."""
    if isinstance(module, nn.ReLU):
        return out > 0, None
    if isinstance(module, nn.LeakyReLU):
        return torch.where(out > 0, 1.0, module.negative_slope).to(out.dtype), None
    if isinstance(module, nn.Tanh):
        first = 1 - out.square()
        return first, -2 * out * first
    if isinstance(module, nn.Sigmoid):
        first = out * (1 - out)
        return first, first * (1 - 2 * out)
    if isinstance(module, nn.Dropout) and module.training and module.p > 0:
        if module.p >= 1:
            return torch.zeros_like(out), None
        return (out != 0).to(out.dtype) / (1 - module.p), None
    return 1.0, None  # Identity, Flatten, Dropout in eval mode


class LinearChainRecorder:
    """Forward hooks that keep, for the last few grad-enabled forward passes, each chain
    module's input and output, keyed by the model output they produced."""

    def __init__(self, model: nn.Module, history: int = 4) -> None:
        self.model = model
        self.chain = trailing_linear_chain(model)
        self.linears = [m for m in self.chain if isinstance(m, nn.Linear)]
        self.curved = any(isinstance(m, CURVED) for m in self.chain)
        self.passes: deque[tuple[Tensor, dict[nn.Module, tuple[Tensor, Tensor]]]] = deque(
            maxlen=history)
        self._current: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def register(self) -> list[Any]:
        """Install the hooks; returns their handles (remove them to uninstall)."""
        if not self.chain:
            return []
        handles = [m.register_forward_hook(self._record) for m in self.chain]
        handles.append(self.model.register_forward_hook(self._finish))
        return handles

    def _record(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if torch.is_grad_enabled() and args:
            self._current[module] = (args[0], output)

    def _finish(self, module: nn.Module, args: tuple, output: Any) -> None:
        if torch.is_grad_enabled() and self._current:
            if isinstance(output, Tensor):
                self.passes.append((output, self._current))
            self._current = {}

    def find(self, output: Tensor | None = None) -> dict[nn.Module, tuple[Tensor, Tensor]] | None:
        """The records of the pass that returned `output` (None: the latest pass), or None if
        there is none or the model did not return the last Linear's output."""
        for produced, records in reversed(self.passes):
            if output is not None and produced is not output:
                continue
            last = records.get(self.chain[-1])
            return records if last is not None and last[1] is produced else None
        return None

    def clear(self) -> None:
        self.passes.clear()
        self._current = {}

    def curvature(self, records: dict[nn.Module, tuple[Tensor, Tensor]], hessian: Tensor,
                  gradient: Tensor | None = None, *, units: bool = True,
                  ) -> dict[nn.Linear, LinearCurvature]:
        """Back-propagate the output curvature (`output_curvature`) through the recorded pass;
        see `backpropagate_curvature`."""
        return backpropagate_curvature(self.chain, records, hessian, gradient, units=units)


@torch.no_grad()
def backpropagate_curvature(
    chain: list[nn.Module],
    records: dict[nn.Module, tuple[Tensor, Tensor]],
    hessian: Tensor,
    gradient: Tensor | None = None,
    *,
    units: bool = True,
) -> dict[nn.Linear, LinearCurvature]:
    """The diagonal Hessian of every Linear in `chain` that the recursion reaches.

    `records[m]` = (input, output) of module m in the forward pass; `hessian` (and `gradient`,
    needed when a Tanh/Sigmoid is in the chain) are per sample, for the last module's output.
    `units=False` skips the per-unit curvature (None then).
    """
    result: dict[nn.Linear, LinearCurvature] = {}
    lowest = next(i for i, m in enumerate(chain) if isinstance(m, nn.Linear))
    needs_gradient = any(isinstance(m, CURVED) for m in chain)
    if needs_gradient and gradient is None:
        raise ValueError("the chain has a Tanh or Sigmoid: pass the per-sample gradient too")
    h, g = hessian, gradient if needs_gradient else None
    for i in range(len(chain) - 1, lowest - 1, -1):
        module = chain[i]
        if module not in records:
            break
        x, out = records[module]
        if out.dim() != 2 or out.shape != h.shape:
            break
        if isinstance(module, nn.Linear):
            result[module] = LinearCurvature(
                weight=h.T @ x.square(),
                bias=None if module.bias is None else h.sum(0),
                unit=(h * out.square()).sum(0) if units else None,
            )
            if i == lowest:
                break
            weight = module.weight.detach()
            if g is not None:
                g = g @ weight
            h = h @ weight.square()
        else:
            first, second = _derivatives(module, out)
            if isinstance(first, Tensor):
                h = h * first if first.dtype == torch.bool else h * first.square()
                if second is not None and g is not None:
                    h = h + second * g
                if g is not None:
                    g = g * first
        below = chain[i - 1]
        if below not in records or records[below][1] is not x:
            break  # the pass did not go through the chain as recorded
    return result
