"""DAS: soft-masking of transformer units (Ke, Shao, Lin, Konishi, Kim & Liu, "Continual
Pre-training of Language Models", ICLR 2023).

Units are attention heads and FFN neurons (intermediate and output; `lifelong.functional.units`).
The importance of a unit is measured with a virtual gate m = 1 multiplied onto its output:
I = |Σ_batches ∂L/∂m|, then per layer and unit kind I ← |tanh(z-score(I))| (std with Bessel's
correction, as the authors' code: `lifelong.functional.importance.tanh_zscore`, shared with SPG),
and importances accumulate over domains by element-wise max.

- General knowledge (the paper's initialisation): before the first task trains, on its data, L is
  the proxy KL(p₁ ‖ p₂) between two forward passes with dropout *on*, p = softmax of the
  representation entering the output layer (the last hidden state, as the authors' code), over
  the non-padding tokens. With dropout off the two passes agree and the KL is zero (a flaw of the
  reference code): a model without dropout is refused. It runs in the `training_data` hook, the
  one hook that sees a task's data before training; a loop that does not call it gets a clear
  error at the first step (or set `general=none`).
- After each task t, L is the task's own loss (`task_loss`: MLM / causal-LM loss for token
  logits, cross-entropy for a classifier), also in train mode, as the model is trained; both
  passes leave BatchNorm running statistics as they were.
- Training: once any importance exists (from the first task on, with the general importance), the
  gradient of every parameter entry a unit owns is multiplied by (1 − importance) in the
  optimizer's step pre-hook, with one `_foreach_mul_` per pass over precomputed row/column
  factors. An entry owned along both axes (FFN down-projection: output rows, intermediate
  columns) gets both factors. Embeddings, norms and the output layer are not masked.
- Optional contrastive loss (`contrastive` > 0; the paper's weight is 1): InfoNCE at temperature
  0.05 between two dropout views of the pooled representation (the training pass and one more),
  with the view of the importance-masked network (each unit's output times its importance: the
  previously learned knowledge) as extra negatives.

Not copied from the reference code: gate gradients accumulating in `.grad` across batches (here
each batch's ∂L/∂m comes from `autograd.grad` and is summed explicitly); head masks applied along
the *input* dimension of the q/k/v weights (here along the rows that compute the head); the
attention output bias scaled per head (it belongs to no head). Under data parallelism the gate
gradients are summed over the replicas before normalising; the contrastive loss uses each
replica's own batch (the reference gathers views from every replica).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.batch import Batch, BatchLike
from ..core.config import Config, option
from ..core.method import TRANSFORM, Method
from ..core.probe import probe
from ..core.registry import register_method
from ..errors import ConfigError
from ..functional.importance import tanh_zscore
from ..functional.units import find_units, gated, keep_factors
from ..integrations.distributed import all_reduce_max_, all_reduce_sum_
from ..models.introspection import output_layer


@dataclasses.dataclass
class DASConfig(Config):
    general: Literal["proxy_kl", "none"] = option(
        "proxy_kl", "importance for the model's general knowledge, from the first task's data "
        "before it trains: proxy_kl (paper; needs dropout) or none")
    contrastive: float = option(0.0, "weight of the contrastive loss (0: off; paper: 1)", low=0)
    temperature: float = option(0.05, "InfoNCE temperature of the contrastive loss", low=0,
                                low_open=True)
    head: str = option("auto", "output layer whose input is the representation for the proxy "
                       "KL and the contrastive loss (auto: the model's `head`, else its last "
                       "Linear)")
    importance_samples: int | None = option(
        None, "samples of the task used for the importance (None: all)", low=1)
    importance_batch_size: int = option(32, "mini-batch size for the importance gradients",
                                        low=1)


def token_mask(x: Tensor, representation: Tensor) -> Tensor | None:
    """Non-padding positions of packed token ids (PAD = -1) for a per-token representation."""
    if representation.dim() != 3 or x.dim() != 2 or x.is_floating_point():
        return None
    rows, length = representation.shape[:2]
    if x.shape[0] != rows or x.shape[1] < length or bool((x[:, length:] >= 0).any()):
        return None
    return x[:, :length] >= 0  # a model may drop the columns that are padding in every row


def pooled(x: Tensor, representation: Tensor) -> Tensor:
    """One vector per sample: a per-token representation is averaged over its real tokens."""
    if representation.dim() == 2:
        return representation
    mask = token_mask(x, representation)
    if mask is None:
        return representation.flatten(1, -2).mean(1)
    weights = mask.unsqueeze(-1).to(representation.dtype)
    return (representation * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def info_nce(anchor: Tensor, positive: Tensor, negatives: Tensor | None,
             temperature: float) -> Tensor:
    """InfoNCE over cosine similarities / T: sample i's positive is positive[i], its negatives
    the other rows of `positive` and every row of `negatives` (SimCSE with hard negatives)."""
    anchor, positive = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    logits = anchor @ positive.T
    if negatives is not None:
        logits = torch.cat([logits, anchor @ F.normalize(negatives, dim=-1).T], dim=1)
    labels = torch.arange(len(anchor), device=anchor.device)
    return F.cross_entropy(logits / temperature, labels)


@contextlib.contextmanager
def captured_inputs(module: nn.Module) -> Iterator[list[Tensor]]:
    """The first input of every call of `module` within the block."""
    seen: list[Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


@register_method
class DAS(Method):
    """Soft-masking of attention heads and FFN neurons by their importance (Ke et al. 2023)."""

    name = "das"
    description = "soft-masking of transformer units (heads, FFN neurons) by their importance"
    Config = DASConfig
    needs_task_boundaries = True
    needs_transformer = True
    gradient_stage = TRANSFORM
    state_attrs = ("importance", "general_done")

    def __init__(self, config: DASConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.importance: list[Tensor] | None = None  # one vector per unit group
        self.general_done = False

    def uses(self, hook: str) -> bool:
        if hook == "penalty":
            return self.config.contrastive > 0
        return super().uses(hook)

    def on_attach(self) -> None:
        self.groups = find_units(self.model)
        self._check_trainable()
        self.output_module: nn.Module | None = None
        if self.config.general == "proxy_kl" or self.config.contrastive > 0:
            self.output_module = output_layer(self.model, self.config.head)[1]
        self._factors_of: list[Tensor] | None = None  # the importance _passes were built for
        self._passes: list[tuple[list[Tensor], list[Tensor]]] = []
        self._seen_x: Tensor | None = None  # the contrastive loss's first view
        self._seen: Tensor | None = None
        if self.uses("penalty"):
            self._handles.append(self.model.register_forward_pre_hook(self._see_input))
            self._handles.append(self.output_module.register_forward_pre_hook(self._see_representation))

    def on_detach(self) -> None:
        self._seen_x = self._seen = None

    def _check_trainable(self) -> None:
        trainable = {id(p) for p in self.params}
        if not any(id(s.param) in trainable for g in self.groups for s in g.slices):
            raise ConfigError("das masks the gradients of the attention and FFN weights, but "
                              "none of them is trainable")

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        self._check_trainable()
        self._factors_of = None  # the factors' passes follow the trainable parameters

    # --- training ------------------------------------------------------------------------------
    def before_task(self, task: int) -> None:
        super().before_task(task)
        if self.importance is not None:
            self._prepare_passes()

    def training_data(self, task: int, data: Batch) -> Batch:
        """Before the first task trains: the general-knowledge importance on its data."""
        if self.config.general == "proxy_kl" and not self.general_done:
            sums, largest_kl = self.gate_gradient_sums(data, self.proxy_kl)
            if largest_kl <= 1e-12:
                raise ConfigError(
                    "das: the proxy KL between two forward passes is zero, so the model has no "
                    "active dropout; build it with dropout (e.g. build_hf_model(..., "
                    "dropout=0.1)) or set das.general=none")
            self._accumulate([tanh_zscore(s.abs()) for s in sums])
            self.general_done = True
        return data

    def _prepare_passes(self) -> None:
        """Per masked parameter, its factors 1 − importance, grouped into passes in which each
        parameter appears once (a parameter with two factors is in two passes)."""
        passes: list[tuple[list[Tensor], list[Tensor]]] = []
        for param, factors in keep_factors(self.groups, self.importance, self.params):
            for i, factor in enumerate(factors):
                if i == len(passes):
                    passes.append(([], []))
                passes[i][0].append(param)
                passes[i][1].append(factor)
        self._passes, self._factors_of = passes, self.importance

    @torch.no_grad()
    def transform_grads(self) -> None:
        if not self.general_done and self.config.general == "proxy_kl":
            raise ConfigError("das computes the general-knowledge importance on the first task's "
                              "data before training it: call method.training_data(task, data) "
                              "before the first task's steps, or set das.general=none")
        if self.importance is None:
            return
        if self._factors_of is not self.importance:
            self._prepare_passes()
        for params, factors in self._passes:
            grads = [p.grad for p in params]
            if any(g is None for g in grads):  # parameters the loss did not reach stay None
                pairs = [(g, f) for g, f in zip(grads, factors) if g is not None]
                grads, factors = [g for g, _ in pairs], [f for _, f in pairs]
            if grads:
                torch._foreach_mul_(grads, factors)

    def _see_input(self, module: nn.Module, args: tuple) -> None:
        self._seen_x = args[0] if args else None

    def _see_representation(self, module: nn.Module, args: tuple) -> None:
        self._seen = args[0]

    def penalty(self, batch: Batch, output: Tensor) -> Tensor | None:
        """weight · InfoNCE(view₂, view₁, importance-masked view as extra negatives)."""
        x = batch.x
        if self._seen_x is not x or self._seen is None:  # not right after the training pass
            self.model(x)
        first = self._seen
        self.model(x)  # a second dropout view
        second, negatives = self._seen, None
        if self.importance is not None:
            with gated(self.groups, self.importance):
                self.model(x)
            negatives = pooled(x, self._seen)
        self._seen_x = self._seen = None
        loss = info_nce(pooled(x, second), pooled(x, first), negatives, self.config.temperature)
        return self.config.contrastive * loss

    # --- importance ----------------------------------------------------------------------------
    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        sums, _ = self.gate_gradient_sums(data, self.task_loss)
        self._accumulate([tanh_zscore(s.abs()) for s in sums])

    def _accumulate(self, importance: list[Tensor]) -> None:
        self.importance = importance if self.importance is None else torch._foreach_maximum(
            self.importance, importance)

    def proxy_kl(self, batch: Batch) -> Tensor:
        """KL(softmax(r₁) ‖ softmax(r₂)) of the representation r entering the output layer in
        two passes with different dropout masks, averaged over samples (or real tokens)."""
        with captured_inputs(self.output_module) as seen:
            self.model(batch.x)
            self.model(batch.x)
        first, second = seen[-2].float(), seen[-1].float()
        log_p, log_q = F.log_softmax(first, dim=-1), F.log_softmax(second, dim=-1)
        per_row = (log_p.exp() * (log_p - log_q)).sum(-1)
        mask = token_mask(batch.x, first)
        return per_row[mask].mean() if mask is not None else per_row.mean()

    def gate_gradient_sums(self, data: Batch | Iterable[BatchLike],
                           loss_of: Callable[[Batch], Tensor]) -> tuple[list[Tensor], float]:
        """Σ over the task's mini-batches of ∂L/∂m for all-ones gates m on every unit (summed
        over replicas), and the largest loss of a batch. Train mode, dropout on; BatchNorm
        running statistics are put back afterwards."""
        cfg = self.config
        gates = [torch.ones(g.size, device=self.device, requires_grad=True) for g in self.groups]
        sums = [torch.zeros(g.size, device=self.device) for g in self.groups]
        largest = torch.zeros((), device=self.device)
        with probe(self.model, True), \
                gated(self.groups, gates):
            for batch in self.batches(data, cfg.importance_batch_size,
                                      limit=cfg.importance_samples):
                with torch.enable_grad():
                    loss = loss_of(batch)
                    found = torch.autograd.grad(loss, gates, allow_unused=True)
                torch._foreach_add_(sums, [torch.zeros_like(s) if g is None else g
                                           for s, g in zip(sums, found)])
                torch.maximum(largest, loss.detach().abs(), out=largest)
        all_reduce_sum_(sums)
        all_reduce_max_([largest])  # the largest over every replica's batches
        return sums, float(largest)

    # --- state ---------------------------------------------------------------------------------
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.importance is not None:
            shapes = [tuple(a.shape) for a in self.importance]
            expected = [(g.size,) for g in self.groups]
            if shapes != expected:
                raise ConfigError(f"das state holds importances of shapes {shapes}, but the "
                                  f"model's units are {expected}: a different model")
        self._factors_of = None
