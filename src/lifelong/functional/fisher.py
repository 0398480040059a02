"""Diagonal Fisher information from per-sample gradients (torch.func `vmap(grad)`).

For a classifier p(y|x, θ) the diagonal Fisher is F_i = E_x E_y [(∂ log p(y|x)/∂θ_i)²], with
- `empirical`: y the true label (one gradient per sample);
- `true`: the expectation over y taken exactly, every class weighted by p(y|x) (as in van de Ven's
  code; one gradient per sample and class);
- `sampled`: one y drawn from p(y|x) per sample (a Monte-Carlo estimate of the true Fisher).

The square is taken per sample, not per mini-batch (Kirkpatrick et al. 2017): squaring a batch
mean gradient would underestimate F by roughly the batch size.

Two implementations give the same numbers: when every trainable parameter belongs to an
`nn.Linear` applied once to 2-D inputs (an MLP), the per-sample squares of a weight's gradient
g_i a_iᵀ sum to (g²)ᵀ(a²) (Goodfellow 2015), one matrix product per layer and class with no
per-sample tensor; any other model goes through `vmap(grad)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from ..core.batch import Batch

FisherKind = Literal["empirical", "true", "sampled"]
Readout = Callable[[Tensor, Tensor | None], Tensor]


def diagonal_fisher(
    model: nn.Module,
    batches: Iterable[Batch],
    readout: Readout,
    *,
    kind: FisherKind = "empirical",
    generator: torch.Generator | None = None,
    max_rows: int = 256,
    implementation: Literal["auto", "vmap"] = "auto",
) -> dict[str, Tensor]:
    """Mean over samples of squared per-sample log-likelihood gradients, per trainable parameter.

    `readout(output, task_ids)` turns the model output into the sample's logits. Evaluated in
    eval mode (dropout off, BatchNorm on running statistics), the usual choice for EWC.
    At most `max_rows` per-sample gradients (samples x classes for `true`) exist at once.
    """
    if implementation == "auto":
        linear = _linear_fisher(model, batches, readout, kind, generator)
        if linear is not None:
            return linear
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))

    def log_probs(params: dict[str, Tensor], x: Tensor, task_id: Tensor | None) -> Tensor:
        output = functional_call(model, (params, fixed), (x.unsqueeze(0),))
        ids = None if task_id is None else task_id.unsqueeze(0)
        return F.log_softmax(readout(output, ids), dim=-1).squeeze(0)

    def label_log_prob(params: dict[str, Tensor], x: Tensor, y: Tensor,
                       task_id: Tensor | None) -> Tensor:
        return log_probs(params, x, task_id).gather(0, y.reshape(1)).squeeze(0)

    totals = {n: torch.zeros_like(p) for n, p in trainable.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for whole in batches:
            if kind == "true":
                with torch.no_grad():
                    probs = torch.softmax(readout(model(whole.x), whole.task_ids), dim=-1)
                rows = max(1, max_rows // probs.shape[1])
            else:
                rows = max_rows
            for start in range(0, len(whole), rows):
                batch = whole.select(slice(start, start + rows))
                in_dims_t = None if batch.task_ids is None else 0
                if kind == "true":
                    p = probs[start : start + rows]
                    jacobians = vmap(jacrev(log_probs), in_dims=(None, 0, in_dims_t))(
                        trainable, batch.x, batch.task_ids)
                    for name, jac in jacobians.items():  # jac: [batch, classes, *param]
                        weights = p.reshape(*p.shape, *([1] * (jac.dim() - 2)))
                        # Σ_c p(c|x)·g_c²; masked classes have p = 0 (and log p = -inf).
                        totals[name] += torch.where(weights > 0, weights * jac.square(), 0).sum(
                            (0, 1))
                    continue
                labels = batch.y
                if kind == "sampled":
                    with torch.no_grad():
                        sample_probs = torch.softmax(readout(model(batch.x), batch.task_ids), -1)
                    labels = torch.multinomial(sample_probs, 1, generator=generator).squeeze(1)
                grads = vmap(grad(label_log_prob), in_dims=(None, 0, 0, in_dims_t))(
                    trainable, batch.x, labels, batch.task_ids)
                for name, g in grads.items():
                    totals[name] += g.square().sum(0)
            count += len(whole)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the Fisher needs at least one sample")
    return {name: total / count for name, total in totals.items()}


def _linear_fisher(model: nn.Module, batches: Iterable[Batch], readout: Readout, kind: FisherKind,
                   generator: torch.Generator | None) -> dict[str, Tensor] | None:
    """The Fisher of an MLP from layer inputs a and output gradients g: Σ_i g_i² a_i²ᵀ.

    Returns None when the model is not made of `nn.Linear` layers each applied once to 2-D
    inputs (then the caller uses `vmap`). Batches are materialised first so that the fallback
    can still read them.
    """
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)
              and any(id(p) in names for p in m.parameters(recurse=False))]
    owned = {id(p) for m in layers for p in m.parameters(recurse=False)}
    if not layers or any(pid not in owned for pid in names):
        return None
    batches = list(batches)
    records: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {m: [] for m in layers}
    handles = [m.register_forward_hook(lambda mod, args, out: records[mod].append((args[0], out)))
               for m in layers]
    totals = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            for entries in records.values():
                entries.clear()
            with torch.enable_grad():
                log_p = F.log_softmax(readout(model(batch.x), batch.task_ids), dim=-1)
            if any(len(e) != 1 or e[0][0].dim() != 2 for e in records.values()):
                return None  # a layer used twice, or on sequences: per-sample sums differ
            if kind == "true":
                probs = log_p.detach().exp()
                terms = [(log_p[:, c].sum(), probs[:, c]) for c in range(log_p.shape[1])
                         if bool(probs[:, c].gt(0).any())]
            else:
                labels = batch.y
                if kind == "sampled":
                    labels = torch.multinomial(log_p.detach().exp(), 1,
                                               generator=generator).squeeze(1)
                terms = [(log_p.gather(1, labels.unsqueeze(1)).sum(), None)]
            outputs = [records[m][0][1] for m in layers]
            inputs_squared = [records[m][0][0].detach().square() for m in layers]
            for index, (loss, weight) in enumerate(terms):
                grads = torch.autograd.grad(loss, outputs, retain_graph=index < len(terms) - 1)
                for layer, g, a2 in zip(layers, grads, inputs_squared):
                    g2 = g.square() if weight is None else g.square() * weight.unsqueeze(1)
                    if id(layer.weight) in names:
                        totals[names[id(layer.weight)]] += g2.T @ a2
                    if layer.bias is not None and id(layer.bias) in names:
                        totals[names[id(layer.bias)]] += g2.sum(0)
            count += len(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("the Fisher needs at least one sample")
    return {name: total / count for name, total in totals.items()}
