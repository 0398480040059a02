"""Plasticity diagnostics: what a network's state says about its ability to keep learning.

Definitions follow Dohare et al. (Nature 2024, "Loss of plasticity in deep continual learning")
and Elsayed & Mahmood (ICLR 2024):

- dead unit: a hidden unit whose output is 0 on every sample of a probe set (for a convolution, a
  channel that is 0 at every position of every sample);
- weight magnitude: mean |w| over the weights of all weight layers (biases and norms excluded);
- effective rank of a representation Φ (samples × units): exp(−Σ p_k log p_k), p_k = σ_k / Σσ
  (Roy & Vetterli 2007);
- stable rank: the number of singular values that hold 99% of their sum, min{k : Σ_{i≤k} σ_i ≥
  0.99 Σσ} (Kumar et al. 2021, as Dohare et al. use it);
- plasticity p(Z) = max(1 − L(θ′, Z) / max(L(θ, Z), ε), 0), θ′ the weights after one SGD step on
  Z (Elsayed & Mahmood 2024), averaged over probe samples Z;
- gradient magnitude: mean |∂L/∂w| over the weights, on the probe set.

A hidden layer's representation is the input of every Linear/Conv2d layer after the first: the
post-activation features of an MLP or CNN, whether the activation is a module or a function.
Convolutional features count one unit per channel (averaged over positions for the ranks).

Every diagnostic looks at the model as it is evaluated: eval mode (dropout off, BatchNorm on its
running statistics, which no probe pass updates), each module's own mode given back afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..core.batch import Batch
from ..core.probe import probe as measuring
from ..core.readout import Readout

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
RANK_THRESHOLD = 0.99


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


@torch.no_grad()
def hidden_representations(model: nn.Module, x: Tensor, batch_size: int = 1000
                           ) -> dict[str, Tensor]:
    """{layer name: the features it receives} for every weight layer but the first, on `x`
    (in eval mode). Values are (samples, units); convolutional maps keep (samples, C, ...)."""
    layers = weight_layers(model)[1:]
    captured: dict[str, list[Tensor]] = {name: [] for name, _ in layers}

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            captured[name].append(args[0].detach())
        return hook

    handles = [m.register_forward_pre_hook(recorder(n)) for n, m in layers]
    try:
        with measuring(model):
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in captured.items() if parts}


def dead_fraction(features: Tensor) -> float:
    """Fraction of units that are exactly 0 on every sample (channels for conv maps)."""
    active = features.ne(0)
    if features.dim() > 2:
        active = active.flatten(2).any(2)
    return float(1.0 - active.any(0).float().mean())


def _unit_matrix(features: Tensor) -> Tensor:
    return features.flatten(2).mean(2) if features.dim() > 2 else features


def singular_values(features: Tensor) -> Tensor:
    return torch.linalg.svdvals(_unit_matrix(features).double())


def effective_rank(features: Tensor) -> float:
    """exp of the entropy of the normalised singular values (Roy & Vetterli 2007)."""
    sigma = singular_values(features)
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(features: Tensor, threshold: float = RANK_THRESHOLD) -> int:
    """How many singular values hold `threshold` of their sum (Kumar et al. 2021)."""
    sigma = singular_values(features)
    total = sigma.sum()
    if total <= 0:
        return 0
    cumulative = torch.cumsum(sigma, 0) / total
    return int((cumulative < threshold).sum()) + 1


def weight_magnitude(model: nn.Module) -> float:
    """Mean |w| over the weights of all Linear/Conv layers."""
    weights = [m.weight.detach() for _, m in weight_layers(model)]
    total = sum(float(w.abs().sum()) for w in weights)
    return total / max(sum(w.numel() for w in weights), 1)


LossFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]  # (output, y, task_ids) -> loss


def gradient_magnitude(model: nn.Module, loss_fn: LossFn, probe: Batch) -> float:
    """Mean |∂L/∂w| over the weights of all Linear/Conv layers, on the probe batch."""
    weights = [m.weight for _, m in weight_layers(model)]
    with measuring(model), torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(model(probe.x), probe.y, probe.task_ids),
                                    weights, allow_unused=True)
    total = sum(float(g.abs().sum()) for g in grads if g is not None)
    return total / max(sum(w.numel() for w in weights), 1)


def plasticity(model: nn.Module, loss_fn: LossFn, probe: Batch, lr: float, *, chunk: int = 64,
               eps: float = 1e-8) -> float:
    """Mean over probe samples Z of max(1 − L(θ − lr∇L(θ, Z), Z) / max(L(θ, Z), ε), 0).

    Each sample gets its own SGD step from the current weights (vectorised with torch.func); the
    model is evaluated in eval mode and left unchanged.
    """
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    task_ids = probe.task_ids if probe.task_ids is not None else torch.zeros(
        len(probe), dtype=torch.long, device=probe.x.device)
    with_ids = probe.task_ids is not None

    def sample_loss(p: dict[str, Tensor], x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0), t.unsqueeze(0) if with_ids else None)

    def ratio(x: Tensor, y: Tensor, t: Tensor) -> Tensor:
        before = sample_loss(params, x, y, t)
        g = grad(sample_loss)(params, x, y, t)
        after = sample_loss({n: params[n] - lr * g[n] for n in params}, x, y, t)
        return torch.clamp(1 - after / torch.clamp(before, min=eps), min=0)

    with measuring(model):
        values = [vmap(ratio)(probe.x[s:s + chunk], probe.y[s:s + chunk],
                              task_ids[s:s + chunk]) for s in range(0, len(probe), chunk)]
    return float(torch.cat(values).mean())


def probe_loss(readout: Readout | None = None) -> LossFn:
    """The training loss on the probe: cross-entropy (integer labels) or squared error (float
    targets) of the logits that `readout` selects for each sample's task."""
    def loss_fn(output: Tensor, y: Tensor, task_ids: Tensor | None) -> Tensor:
        if readout is not None:
            output = readout.select(output, task_ids)
        return Batch(output, y).loss(output)
    return loss_fn


def diagnose(model: nn.Module, probe: Batch, *, lr: float | None = None,
             readout: Readout | None = None, plasticity_samples: int = 200) -> dict[str, Any]:
    """Every diagnostic on `probe` (give `lr` for plasticity p(Z); `readout` when the model has
    several heads or masked classes, with the probe's task ids).

    Per-layer values are lists in layer order; `dead_units` is the fraction over all hidden units,
    `effective_rank` / `stable_rank` are the last hidden layer's (Dohare et al. plot that one).
    """
    features = hidden_representations(model, probe.x)
    loss_fn = probe_loss(readout)
    layers = list(features.values())
    units = [(f.shape[1] if f.dim() > 1 else 1) for f in layers]
    dead = [dead_fraction(f) for f in layers]
    eff = [effective_rank(f) for f in layers]
    stable = [stable_rank(f) for f in layers]
    result: dict[str, Any] = {
        "dead_units": (sum(d * u for d, u in zip(dead, units)) / sum(units)) if units else 0.0,
        "dead_units_per_layer": dead,
        "effective_rank": eff[-1] if eff else math.nan,
        "effective_rank_per_layer": eff,
        "stable_rank": stable[-1] if stable else 0,
        "stable_rank_per_layer": stable,
        "weight_magnitude": weight_magnitude(model),
        "gradient_magnitude": gradient_magnitude(model, loss_fn, probe),
    }
    if lr is not None:
        subset = probe.select(slice(0, plasticity_samples))
        result["plasticity"] = plasticity(model, loss_fn, subset, lr)
    return result
