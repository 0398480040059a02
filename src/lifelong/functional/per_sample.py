"""Means over samples of squared or absolute per-sample gradients: the Fisher (EWC), MAS.

`terms(logits, batch)` returns, for a batch, a list of (values, weights): per-sample quantities
q_i (a tensor [batch]) whose per-sample gradients ∂q_i/∂θ are wanted, and optional per-sample
weights w_i. The result, per trainable parameter, is

    1/N Σ_i Σ_terms w_i · s(∂q_i/∂θ),   s = square or absolute value.

Two implementations give the same numbers. When every trainable parameter belongs to an
`nn.Linear` applied once to 2-D inputs (an MLP), the per-sample gradient of a weight is the outer
product g_i a_iᵀ of the layer's output gradient and input, so Σ_i w_i s(g_i a_iᵀ) = (w∘s(G))ᵀ s(A)
(Goodfellow 2015): one matrix product per layer and term, no per-sample tensor. Any other model
goes through `torch.func.vmap(grad)`, at most `max_rows` per-sample gradients at a time, or,
where vmap cannot follow the model (Hugging Face transformers branch on tensor values), one
backward pass per sample.

Under data parallelism each replica sums over its own samples and the sums and counts are added
up over the replicas before dividing, so every replica gets the mean over all samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..core.batch import Batch
from ..core.probe import probe
from ..integrations.distributed import all_reduce_sum_and_count_

Readout = Callable[[Tensor, Tensor | None], Tensor]
Terms = Callable[[Tensor, Batch], list[tuple[Tensor, Tensor | None]]]
Statistic = Literal["square", "abs"]


def _apply(statistic: Statistic, tensor: Tensor) -> Tensor:
    return tensor.square() if statistic == "square" else tensor.abs()


def per_sample_gradient_mean(
    model: nn.Module,
    batches: Iterable[Batch],
    readout: Readout,
    terms: Terms,
    statistic: Statistic,
    *,
    implementation: Literal["auto", "vmap", "loop"] = "auto",
    max_rows: int = 256,
) -> dict[str, Tensor]:
    """See the module docstring. Evaluated in eval mode: dropout off, BatchNorm normalising with
    its running statistics, which stay as they are (the model as it is evaluated)."""
    batches = list(batches)
    with probe(model):
        result = None
        if implementation == "auto":
            result = _linear(model, batches, readout, terms, statistic)
        if result is None and implementation != "loop":
            try:
                result = _vmap(model, batches, readout, terms, statistic, max_rows)
            except RuntimeError as error:
                # Hugging Face transformers branch on tensor values (attention-mask checks),
                # which vmap cannot batch: one backward pass per sample instead.
                if implementation == "vmap" or "vmap" not in str(error):
                    raise
        if result is None:
            result = _loop(model, batches, readout, terms, statistic)
    totals, count = result
    if totals:  # data-parallel: every replica's samples (no-op in one process)
        count = all_reduce_sum_and_count_(list(totals.values()), count)
    if count == 0:
        raise ValueError("per-sample statistics need at least one sample")
    return {name: total / count for name, total in totals.items()}


def _linear(model: nn.Module, batches: list[Batch], readout: Readout, terms: Terms,
            statistic: Statistic) -> tuple[dict[str, Tensor], int] | None:
    """The MLP shortcut; None when the model is not made of Linear layers each applied once to
    2-D inputs (a shared layer's per-sample gradient is a sum of outer products)."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)
              and any(id(p) in names for p in m.parameters(recurse=False))]
    owned = {id(p) for m in layers for p in m.parameters(recurse=False)}
    if not layers or any(pid not in owned for pid in names):
        return None
    records: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {m: [] for m in layers}
    handles = [m.register_forward_hook(lambda mod, args, out: records[mod].append((args[0], out)))
               for m in layers]
    totals = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    count = 0
    try:
        for batch in batches:
            for entries in records.values():
                entries.clear()
            with torch.enable_grad():
                logits = readout(model(batch.x), batch.task_ids)
            if any(len(e) != 1 or e[0][0].dim() != 2 for e in records.values()):
                return None
            outputs = [records[m][0][1] for m in layers]
            inputs = [_apply(statistic, records[m][0][0].detach()) for m in layers]
            items = [(v, w) for v, w in terms(logits, batch) if w is None or bool(w.gt(0).any())]
            for index, (values, weights) in enumerate(items):
                grads = torch.autograd.grad(values.sum(), outputs,
                                            retain_graph=index < len(items) - 1)
                for layer, g, a in zip(layers, grads, inputs):
                    g = _apply(statistic, g)
                    if weights is not None:
                        g = g * weights.unsqueeze(1)
                    if id(layer.weight) in names:
                        totals[names[id(layer.weight)]] += g.T @ a
                    if layer.bias is not None and id(layer.bias) in names:
                        totals[names[id(layer.bias)]] += g.sum(0)
            count += len(batch)
    finally:
        for handle in handles:
            handle.remove()
    return totals, count


def _vmap(model: nn.Module, batches: list[Batch], readout: Readout, terms: Terms,
          statistic: Statistic, max_rows: int) -> tuple[dict[str, Tensor], int]:
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    totals = {n: torch.zeros_like(p) for n, p in trainable.items()}
    count = 0
    for whole in batches:
        with torch.no_grad():
            num_terms = len(terms(readout(model(whole.x[:1]), _rows(whole.task_ids, 0, 1)),
                                  whole.select(slice(0, 1))))
        rows = max(1, max_rows // num_terms)
        for start in range(0, len(whole), rows):
            batch = whole.select(slice(start, start + rows))
            for k in range(num_terms):

                def term(params: dict[str, Tensor], x: Tensor, y: Tensor,
                         task_id: Tensor | None, k: int = k) -> tuple[Tensor, Tensor]:
                    """(q(x), w(x)) of term k for one sample; w rides along as grad's aux."""
                    output = functional_call(model, (params, fixed), (x.unsqueeze(0),))
                    ids = None if task_id is None else task_id.unsqueeze(0)
                    single = Batch(x.unsqueeze(0), y.unsqueeze(0), ids)
                    values, weights = terms(readout(output, ids), single)[k]
                    weight = torch.ones_like(values) if weights is None else weights.detach()
                    return values.squeeze(0), weight.squeeze(0)

                in_dims = (None, 0, 0, None if batch.task_ids is None else 0)
                grads, weights = vmap(grad(term, has_aux=True), in_dims=in_dims)(
                    trainable, batch.x, batch.y, batch.task_ids)
                for name, g in grads.items():
                    w = weights.reshape(-1, *([1] * (g.dim() - 1)))
                    # weight 0 (a masked class) contributes nothing, whatever its gradient
                    totals[name] += torch.where(w > 0, w * _apply(statistic, g), 0).sum(0)
        count += len(whole)
    return totals, count


def _loop(model: nn.Module, batches: list[Batch], readout: Readout, terms: Terms,
          statistic: Statistic) -> tuple[dict[str, Tensor], int]:
    """One autograd pass per sample and term: any model, slowest."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    totals = {n: torch.zeros_like(p) for n, p in zip(names, params)}
    count = 0
    for whole in batches:
        for i in range(len(whole)):
            single = whole.select(slice(i, i + 1))
            with torch.enable_grad():
                found = terms(readout(model(single.x), single.task_ids), single)
                for k, (values, weights) in enumerate(found):
                    weight = 1.0 if weights is None else float(weights.detach().reshape(-1)[0])
                    if weight <= 0:  # a masked class contributes nothing
                        continue
                    grads = torch.autograd.grad(values.sum(), params, allow_unused=True,
                                                retain_graph=k < len(found) - 1)
                    for name, g in zip(names, grads):
                        if g is not None:
                            totals[name] += weight * _apply(statistic, g)
        count += len(whole)
    return totals, count


def _rows(tensor: Tensor | None, start: int, stop: int) -> Tensor | None:
    return None if tensor is None else tensor[start:stop]
