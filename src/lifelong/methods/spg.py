"""Soft-masking of parameter-level gradient flow, SPG (Konishi, Kim, Liu et al., ICML 2023).

After task t, every shared parameter gets an importance in [0, 1], measured on the task's own
training data with the model in train mode (dropout on, as in the paper; BatchNorm normalises
with each batch's statistics as in training, and its running statistics are restored afterwards,
so the importance passes do not change how the model is evaluated):

- for the task's head, the gradient of its cross-entropy loss;
- for every older task k < t, the gradient of the plain *sum of logits* of head k (no labels:
  how much the old heads' outputs move with the parameter);
- each gradient tensor (weights and biases separately) becomes γ = |tanh(z-score(g))|, the z-score
  taken within the tensor, its std with Bessel's correction as in the authors' code
  (`lifelong.functional.importance.tanh_zscore`, shared with DAS); the task's mask is the
  element-wise max over heads, and the running importance a ← max(a, m_t) keeps the largest
  value any task gave.

While a later task trains, each shared parameter's gradient is multiplied by (1 − a), and the
output layer's by the scalar 1 − mean(a) over all shared parameters. The first task is unmasked.

`mask="step"` scales the *update* θ_new − θ_old instead of the gradient. Under plain SGD the two
are the same; under Adam a constant gradient scale cancels in m/√v, so gradient masking barely
protects and step masking is the variant that does (the paper trains with SGD).

Scenarios: made for task-incremental learning with one head per task. In domain- and
class-incremental learning the output layer is shared; its rows are scaled like a head, which
cannot stop the new task's cross-entropy from pushing the old classes' logits down, so in
class-incremental learning SPG alone forgets about as much as fine-tuning (pair it with replay);
a run there starts with a warning that says so (`unprotected_scenarios`).

Data parallelism: each replica sums the gradients over its own shard's batches and the sums are
added up over the replicas before the z-score, so every replica gets the same importance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.batch import Batch, BatchLike
from ..core.config import Config, option
from ..core.method import TRANSFORM, Method, carry_over
from ..core.probe import probe
from ..core.registry import register_method
from ..errors import ConfigError
from ..functional import gradients_of
from ..functional.importance import tanh_zscore
from ..integrations.distributed import all_reduce_sum_
from ..models.introspection import output_layer


@dataclasses.dataclass
class SPGConfig(Config):
    mask: Literal["gradient", "step"] = option(
        "gradient", "scale the gradient (paper, for SGD) or the optimizer's step (for Adam)")
    head: str = option("auto", "name of the output layer whose rows are the heads (auto: the "
                       "model's `head` module, else its last Linear layer)")
    importance_samples: int | None = option(
        None, "samples of the task used for the importance (None: all)", low=1)
    importance_batch_size: int = option(128, "mini-batch size for the importance gradients",
                                        low=1)


@register_method
class SPG(Method):
    name = "spg"
    description = "parameter-level soft-masking: gradients scaled by 1 − importance"
    Config = SPGConfig
    unprotected_scenarios = {"class": "its output layer is shared, and scaling its rows cannot "
                             "stop a new task's loss from pushing the old classes' logits down, "
                             "so it forgets about as much as fine-tuning (pair it with replay, "
                             "e.g. replay+spg)"}
    needs_task_boundaries = True
    gradient_stage = TRANSFORM
    state_attrs = ("importance",)

    def __init__(self, config: SPGConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.importance: list[Tensor] | None = None  # a, one tensor per shared parameter

    def on_attach(self) -> None:
        _, layer = output_layer(self.model, self.config.head)
        self._head_ids = {id(p) for p in layer.parameters()}
        self._split()
        self._scales: tuple[list[Tensor], float] = ([], 1.0)

    def _split(self) -> None:
        """The trainable parameters into shared ones and the output layer's (the heads)."""
        self.is_head = [id(p) in self._head_ids for p in self.params]
        if all(self.is_head) or not any(self.is_head):
            raise ConfigError("spg needs shared layers and an output layer among the trainable "
                              "parameters; name the output layer with head=...")
        self.shared = [p for p, h in zip(self.params, self.is_head) if not h]
        self.heads = [p for p, h in zip(self.params, self.is_head) if h]
        self._before_shared: list[Tensor] | None = None  # step mask: θ before the step
        self._before_heads: list[Tensor] | None = None
        self._scales_of: list[Tensor] | None = None  # the importance _scales was computed for

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        shared = self.shared
        self._split()
        # a shared parameter that joins training (a new LoRA adapter) matters to no past task
        self.importance = carry_over(self.importance, shared, self.shared, torch.zeros_like)

    # --- training: scale gradients (or steps) ------------------------------------------------
    def head_scale(self) -> float:
        """1 − mean importance over all shared parameters."""
        total = sum(a.sum() for a in self.importance)
        return 1.0 - float(total) / sum(a.numel() for a in self.importance)

    def scales(self) -> tuple[list[Tensor], float]:
        """(1 − a per shared parameter, the heads' scalar), computed once per importance."""
        if self._scales_of is not self.importance:
            keep = torch._foreach_neg(self.importance)
            torch._foreach_add_(keep, 1.0)
            self._scales = (keep, self.head_scale())
            self._scales_of = self.importance
        return self._scales

    @torch.no_grad()
    def transform_grads(self) -> None:
        if self.importance is None:
            return
        if self.config.mask == "step":
            if self._before_shared is None:
                self._before_shared = [torch.empty_like(p) for p in self.shared]
                self._before_heads = [torch.empty_like(p) for p in self.heads]
            torch._foreach_copy_(self._before_shared, self.shared)
            torch._foreach_copy_(self._before_heads, self.heads)
            return
        keep, head_scale = self.scales()
        torch._foreach_mul_(gradients_of(self.shared), keep)
        torch._foreach_mul_(gradients_of(self.heads), head_scale)

    @torch.no_grad()
    def after_step(self) -> None:
        if self.importance is None or self.config.mask != "step":
            return
        # θ ← θ_old + (1 − a)(θ − θ_old) = θ − a(θ − θ_old)
        step = torch._foreach_sub(self.shared, self._before_shared)
        torch._foreach_mul_(step, self.importance)
        torch._foreach_sub_(self.shared, step)
        head_step = torch._foreach_sub(self.heads, self._before_heads)
        torch._foreach_mul_(head_step, 1.0 - self.scales()[1])
        torch._foreach_sub_(self.heads, head_step)

    # --- consolidation -------------------------------------------------------------------------
    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        mask = self.task_mask(task, data)
        self.importance = mask if self.importance is None else torch._foreach_maximum(
            self.importance, mask)

    def task_mask(self, task: int, data: Batch | Iterable[BatchLike]) -> list[Tensor]:
        """m_t: max over heads of |tanh(z-score)| of each head's accumulated gradient."""
        sums = self.head_gradient_sums(task, data)
        mask = [tanh_zscore(g) for g in sums[0]]
        for gradients in sums[1:]:
            torch._foreach_maximum_(mask, [tanh_zscore(g) for g in gradients])
        return mask

    def head_gradient_sums(self, task: int, data: Batch | Iterable[BatchLike]
                           ) -> list[list[Tensor]]:
        """Per head (current task first, then older tasks), the shared parameters' gradient
        summed over the task's mini-batches."""
        cfg = self.config
        older = self._older_heads(task)
        sums = [[torch.zeros_like(p) for p in self.shared] for _ in range(1 + len(older))]
        # train mode, dropout on, as in the paper (BatchNorm normalises with each batch's own
        # statistics, as in training); the running statistics are put back afterwards
        with probe(self.model, True):
            for batch in self.batches(data, cfg.importance_batch_size,
                                      limit=cfg.importance_samples):
                with torch.enable_grad():
                    output = self.model(batch.x)
                    terms = [F.cross_entropy(self.readout.select(output, batch.task_ids),
                                             batch.y)]
                    terms += [output[:, units].sum() for units in older]
                    for i, term in enumerate(terms):
                        found = torch.autograd.grad(term, self.shared, allow_unused=True,
                                                    retain_graph=i + 1 < len(terms))
                        torch._foreach_add_(sums[i], [torch.zeros_like(p) if g is None else g
                                                      for p, g in zip(self.shared, found)])
        # data-parallel: the sums over every replica's batches (the z-score ignores the scale)
        all_reduce_sum_([g for gradients in sums for g in gradients])
        return sums

    def _older_heads(self, task: int) -> list[list[int] | slice]:
        """The output units of each task before `task` (the heads whose logits are summed)."""
        if self.readout.kind in ("none", "domain"):  # one head shared by every task
            return [slice(None)] if task > 0 else []
        table = self.readout.task_units
        return [table[k] for k in range(min(task, len(table)))]
