"""Diagonal Fisher information from per-sample gradients.

For a classifier p(y|x, θ) the diagonal Fisher is F_i = E_x E_y [(∂ log p(y|x)/∂θ_i)²], with
- `empirical`: y the true label (one gradient per sample);
- `true`: the expectation over y taken exactly, every class weighted by p(y|x) (as in van de Ven's
  code; one gradient per sample and class);
- `sampled`: one y drawn from p(y|x) per sample (a Monte-Carlo estimate of the true Fisher).

The square is taken per sample, not per mini-batch (Kirkpatrick et al. 2017): squaring a batch
mean gradient would underestimate F by roughly the batch size. See `per_sample` for how.

For token logits (a language model generating its answer), log p(y|x) is the sum over the
sample's target tokens; `sampled` draws every target token from the model (teacher forced).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.batch import IGNORE, Batch
from ..core.probe import probe
from ..errors import ConfigError
from .per_sample import per_sample_gradient_mean

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
    implementation: Literal["auto", "vmap", "loop"] = "auto",
) -> dict[str, Tensor]:
    """Mean over samples of squared per-sample log-likelihood gradients, per trainable parameter.

    `readout(output, task_ids)` turns the model output into the sample's logits. Evaluated in
    eval mode (dropout off, BatchNorm on its running statistics, which are not updated): the
    Fisher of the model as it is evaluated, the usual choice for EWC; per-sample gradients
    through batch statistics would not be defined anyway.
    """
    if kind == "sampled":  # draw each sample's label once, then it is the empirical Fisher
        batches = [_with_sampled_labels(model, batch, readout, generator) for batch in batches]

    def terms(logits: Tensor, batch: Batch) -> list[tuple[Tensor, Tensor | None]]:
        log_p = F.log_softmax(logits, dim=-1)
        if log_p.dim() == 3:  # token logits: the log-likelihood of each sample's target tokens
            if kind == "true":
                raise ConfigError("the true Fisher of token logits would need one gradient per "
                                  "vocabulary entry and position; use fisher=empirical or "
                                  "fisher=sampled for language models")
            targets = batch.y != IGNORE
            picked = log_p.gather(2, batch.y.clamp(min=0).unsqueeze(2)).squeeze(2)
            return [((picked * targets).sum(1), None)]
        if kind == "true":
            probs = log_p.detach().exp()
            return [(log_p[:, c], probs[:, c]) for c in range(log_p.shape[-1])]
        return [(log_p.gather(1, batch.y.unsqueeze(1)).squeeze(1), None)]

    return per_sample_gradient_mean(model, batches, readout, terms, "square",
                                    implementation=implementation, max_rows=max_rows)


@torch.no_grad()
def _with_sampled_labels(model: nn.Module, batch: Batch, readout: Readout,
                         generator: torch.Generator | None) -> Batch:
    with probe(model):
        probs = torch.softmax(readout(model(batch.x), batch.task_ids), dim=-1)
    if probs.dim() == 3:  # a token drawn at every target position of a sequence
        drawn = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(batch.y.shape)
        return dataclasses.replace(batch, y=torch.where(batch.y != IGNORE, drawn, batch.y))
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return dataclasses.replace(batch, y=labels)
