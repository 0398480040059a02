"""Kronecker-factored Fisher blocks, KFAC (Martens & Grosse 2015; convolutions: Grosse & Martens
2016), and the Kronecker algebra NCL needs.

For a layer s = W̄ā with ā = [a, 1] (the input with a 1 appended when there is a bias) the Fisher
block of W̄ is approximated by A ⊗ G, with A = E[ā āᵀ] over inputs and G = E[g gᵀ] over the
per-sample gradients g = ∂ log p(y|x)/∂s of the layer's output. Matrix form: with Δ the
[out, in+1] matrix [ΔW, Δb],

    vec(Δ)ᵀ (A ⊗ G) vec(Δ) = Σ Δ ∘ (G Δ A),    (A ⊗ G)⁻¹ vec(Δ) = vec(G⁻¹ Δ A⁻¹).

Convolutions: ā are the unfolded input patches, A averages them over positions and samples and G
sums the output-gradient outer products over positions (KFC's spatially uncorrelated form).
Inputs with extra leading dimensions (tokens) are treated like positions.

Under data parallelism the sums over each replica's samples and the sample counts are added up
over the replicas before dividing (`kfac_fisher`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.batch import Batch
from ..core.probe import probe
from ..integrations.distributed import all_reduce_sum_and_count_

FisherKind = Literal["empirical", "true", "sampled"]
Readout = Callable[[Tensor, Tensor | None], Tensor]
KFAC_LAYERS = (nn.Linear, nn.Conv2d)


@dataclasses.dataclass
class KroneckerFactors:
    """A ⊗ G: A over the layer's (augmented) inputs, G over its outputs."""

    A: Tensor
    G: Tensor


def kfac_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear and (ungrouped) Conv2d layers with a trainable weight."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, KFAC_LAYERS) and module.weight.requires_grad:
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                continue  # grouped convolutions are block-diagonal in a different way
            found.append((name, module))
    return found


def weight_matrix(layer: nn.Module, weight: Tensor | None = None,
                  bias: Tensor | None = None) -> Tensor:
    """W̄ = [W, b] as an [out, in(+1)] matrix (conv kernels flattened in unfold order)."""
    weight = layer.weight if weight is None else weight
    bias = layer.bias if bias is None else bias
    matrix = weight.reshape(weight.shape[0], -1)
    if bias is None:
        return matrix
    return torch.cat([matrix, bias.unsqueeze(1)], dim=1)


def split_weight_matrix(layer: nn.Module, matrix: Tensor) -> tuple[Tensor, Tensor | None]:
    """Inverse of `weight_matrix`: (weight-shaped tensor, bias or None)."""
    if layer.bias is None:
        return matrix.reshape(layer.weight.shape), None
    return matrix[:, :-1].reshape(layer.weight.shape), matrix[:, -1]


def _input_rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's inputs as rows ā (positions and tokens become rows), ones appended for a bias."""
    if isinstance(layer, nn.Conv2d):
        patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                           stride=layer.stride)  # [n, in·k·k, positions]
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        rows = x.reshape(-1, x.shape[-1])
    if layer.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def _output_rows(layer: nn.Module, g: Tensor) -> Tensor:
    if isinstance(layer, nn.Conv2d):  # [n, out, h, w] -> [n·h·w, out]
        return g.flatten(2).transpose(1, 2).reshape(-1, g.shape[1])
    return g.reshape(-1, g.shape[-1])


def kfac_fisher(
    model: nn.Module,
    layers: list[nn.Module],
    batches: Iterable[Batch],
    readout: Readout,
    *,
    kind: FisherKind = "true",
    generator: torch.Generator | None = None,
) -> list[KroneckerFactors]:
    """A = E[ā āᵀ], G = E[g gᵀ] per layer, over the samples of `batches` (eval mode: BatchNorm
    uses its running statistics and does not update them).

    `kind` chooses y in g = ∂ log p(y|x)/∂s as for the diagonal Fisher: the true label
    (`empirical`), every class weighted by p(y|x) (`true`, as in van de Ven's NCL code), or one
    label drawn from p(y|x) (`sampled`).
    """
    inputs: dict[int, Tensor] = {}
    outputs: dict[int, Tensor] = {}

    def keep(index: int):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            inputs[index] = args[0].detach()
            outputs[index] = output
        return hook

    handles = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    sums_a = [None] * len(layers)
    sums_g = [None] * len(layers)
    samples = 0
    try:
        with probe(model):
            for batch in batches:
                with torch.enable_grad():
                    log_p = F.log_softmax(readout(model(batch.x), batch.task_ids), dim=-1)
                    for i in range(len(layers)):
                        rows = _input_rows(layers[i], inputs[i])
                        positions = rows.shape[0] // len(batch)
                        term = rows.T @ rows / positions
                        sums_a[i] = term if sums_a[i] is None else sums_a[i] + term
                    for weights, chosen in _log_likelihood_terms(log_p, batch, kind, generator):
                        # Σ_i w_i log p(y_i|x_i): its gradient at a layer's output is w_i·g_i per
                        # sample, so the rows' outer products sum w_i² g gᵀ = p(c|x) g gᵀ (true).
                        objective = (weights * chosen).sum()
                        grads = torch.autograd.grad(
                            objective, [outputs[i] for i in range(len(layers))],
                            retain_graph=True, allow_unused=True)
                        for i, g in enumerate(grads):
                            if g is None:
                                continue
                            rows = _output_rows(layers[i], g)
                            term = rows.T @ rows
                            sums_g[i] = term if sums_g[i] is None else sums_g[i] + term
                samples += len(batch)
    finally:
        for handle in handles:
            handle.remove()
    # a replica may have seen no sample, and a layer no gradient: zeros, so that every replica
    # takes part in the reduction with the same tensors
    for i, layer in enumerate(layers):
        width = weight_matrix(layer).shape
        like = layer.weight.detach()
        if sums_a[i] is None:
            sums_a[i] = like.new_zeros(width[1], width[1])
        if sums_g[i] is None:
            sums_g[i] = like.new_zeros(width[0], width[0])
    if layers:  # data-parallel: the sums and counts of every replica (no-op in one process)
        samples = all_reduce_sum_and_count_([*sums_a, *sums_g], samples)
    if samples == 0:
        raise ValueError("kfac_fisher got no samples")
    return [KroneckerFactors(A=a / samples, G=g / samples) for a, g in zip(sums_a, sums_g)]


def _log_likelihood_terms(log_p: Tensor, batch: Batch, kind: FisherKind,
                          generator: torch.Generator | None) -> list[tuple[Tensor, Tensor]]:
    """(per-sample weight, per-sample log p(y|x)) pairs whose gradients build G."""
    ones = log_p.new_ones(len(log_p))
    if kind == "empirical":
        return [(ones, log_p.gather(1, batch.y.unsqueeze(1)).squeeze(1))]
    probs = log_p.detach().exp()
    if kind == "sampled":
        labels = torch.multinomial(probs, 1, generator=generator)
        return [(ones, log_p.gather(1, labels).squeeze(1))]
    terms = []
    for c in range(log_p.shape[1]):
        if not bool((probs[:, c] > 0).any()):
            continue  # a masked class: weight 0 everywhere
        finite = torch.where(probs[:, c] > 0, log_p[:, c], 0.0)
        terms.append((probs[:, c].sqrt(), finite))
    return terms


def nearest_kronecker_sum(first: KroneckerFactors, second: KroneckerFactors) -> KroneckerFactors:
    """One Kronecker product for A₁⊗G₁ + A₂⊗G₂ (Martens & Grosse 2015, §6.3):
    A = A₁ + A₂/π, G = G₁ + π G₂ adds the cross terms π A₁⊗G₂ + A₂⊗G₁/π, and
    π = sqrt(tr G₁ · tr A₂ / (tr G₂ · tr A₁)) minimises their trace. A factor pair with zero
    trace is dropped."""
    tr_a1, tr_g1 = torch.trace(first.A), torch.trace(first.G)
    tr_a2, tr_g2 = torch.trace(second.A), torch.trace(second.G)
    if min(tr_a2, tr_g2) <= 0:
        return KroneckerFactors(first.A.clone(), first.G.clone())
    if min(tr_a1, tr_g1) <= 0:
        return KroneckerFactors(second.A.clone(), second.G.clone())
    pi = torch.sqrt(tr_g1 * tr_a2 / (tr_g2 * tr_a1))
    return KroneckerFactors(first.A + second.A / pi, first.G + pi * second.G)


def spd_inverse(matrix: Tensor) -> Tensor:
    """Inverse of a symmetric positive-definite matrix (Cholesky, in float64 for accuracy)."""
    work = matrix.double()
    work = (work + work.T) / 2
    return torch.cholesky_inverse(torch.linalg.cholesky(work)).to(matrix.dtype)
