"""Natural continual learning, NCL (Kao, Jensen, van de Ven, Bernacchia & Hennequin, NeurIPS 2021).

Bayesian weight regularisation plus trust-region optimisation. After the tasks so far the
posterior over θ is approximated by a Gaussian N(μ, Λ⁻¹), starting from the prior N(0, I/N)
(N = `data_size`, by default the first task's number of training samples). While a task trains:

    loss = task loss + λ/2 · (θ − μ)ᵀ Λ (θ − μ),    step direction  Λ⁻¹ ∇loss / N,

so parameters the earlier tasks pinned down (large Λ) move little, and on the first task (Λ = I/N)
the step is the plain gradient. After task t, with F_t the task's Fisher (mean over samples):
μ ← θ, Λ ← γΛ + F_t.

`fisher="kfac"` (the paper's): per Linear/Conv2d layer Λ is one Kronecker product A ⊗ G, kept so by
the nearest Kronecker sum when F_t is added (`functional.kfac.nearest_kronecker_sum`); the step is
G⁻¹ ∇W̄ A⁻¹ / N, with an optional damping α·I ⊗ α·I added by the same nearest Kronecker sum (van
de Ven's code; their α = 1e-10 is below float32 resolution, and the prior already keeps Λ
invertible, so α = 0 by default, which saves two of the four matrix products per layer and step).
On the first task Λ is the prior and the step is g + λθ/N exactly. Parameters outside Linear and
Conv2d layers (norms, embeddings) use the diagonal form. `fisher="diagonal"`: Λ is a vector, the
step ∇ / ((Λ + α²) N). `trust_region=r` scales the step δ = lr · (preconditioned gradient) so that
sqrt(δᵀΛδ) ≤ r: exact for plain SGD, an approximation for optimizers that reshape the step.
`precondition=False` leaves the gradient alone (KFAC-EWC). The Fisher is taken in eval mode
(BatchNorm on its running statistics, left unchanged), as EWC's; BatchNorm's weight and bias
use the diagonal form.

Data parallelism: N counts the samples of all replicas' shards, and the Fisher (KFAC factors and
diagonal) is the mean over all of them (`functional.kfac`, `functional.per_sample`); the step
acts on DDP's averaged gradient, so every replica applies the same update.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor

from ..core.batch import Batch, BatchLike
from ..core.config import Config, option
from ..core.method import TRANSFORM, Method, refuse_parameter_change
from ..core.registry import register_method
from ..errors import ConfigError
from ..functional import diagonal_fisher, gradients_of
from ..functional.kfac import (
    KroneckerFactors,
    kfac_fisher,
    kfac_layers,
    nearest_kronecker_sum,
    spd_inverse,
    split_weight_matrix,
    weight_matrix,
)
from ..integrations.distributed import all_reduce_count


@dataclasses.dataclass
class NCLConfig(Config):
    lambda_: float = option(1.0, "strength λ of the prior penalty λ/2 (θ−μ)ᵀΛ(θ−μ)", low=0)
    fisher: Literal["kfac", "diagonal"] = option(
        "kfac", "Kronecker-factored blocks per layer (paper) or a diagonal")
    fisher_kind: Literal["empirical", "true", "sampled"] = option(
        "true", "labels in the Fisher: true labels, all classes weighted by p(y|x), or sampled")
    data_size: int | None = option(
        None, "N: prior precision 1/N and step scale 1/N (None: the first task's size)", low=1)
    alpha: float = option(0.0, "damping α added to the precision before inverting it (the "
                          "prior keeps Λ invertible without it)", low=0)
    gamma: float = option(1.0, "decay of the old precision: Λ ← γΛ + F_t", low=0, high=1)
    precondition: bool = option(True, "precondition the gradient by Λ⁻¹/N (False: KFAC-EWC)")
    trust_region: float | None = option(
        None, "radius r: scale the step δ so that sqrt(δᵀΛδ) ≤ r (None: off)", low=0,
        low_open=True)
    fisher_samples: int | None = option(
        None, "samples of the task used for the Fisher (None: all)", low=1)
    fisher_batch_size: int = option(256, "mini-batch size for the Fisher", low=1)


@register_method
class NCL(Method):
    name = "ncl"
    description = "natural continual learning: Bayesian prior + Λ⁻¹-preconditioned steps"
    Config = NCLConfig
    needs_task_boundaries = True
    gradient_stage = TRANSFORM  # preconditions the full gradient, penalties of others included
    state_attrs = ("data_size", "factors", "block_means", "diag_precision", "diag_means",
                   "_tasks_seen")

    def __init__(self, config: NCLConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.data_size: int | None = self.config.data_size
        self.factors: list[dict[str, Tensor]] | None = None  # Λ per layer: {"A", "G"}
        self.block_means: list[Tensor] | None = None  # μ per layer, as W̄ = [W, b]
        self.diag_precision: list[Tensor] | None = None  # Λ of the other parameters
        self.diag_means: list[Tensor] | None = None
        self._tasks_seen = 0  # tasks consolidated into Λ (0: Λ is the prior)

    def on_attach(self) -> None:
        own = {id(p) for p in self.params}
        if self.config.fisher == "kfac":
            self.layers = [m for _, m in kfac_layers(self.model) if id(m.weight) in own
                           and (m.bias is None or id(m.bias) in own)]
        else:
            self.layers = []
        in_layers = {id(p) for m in self.layers for p in m.parameters(recurse=False)}
        self.diag_index = [i for i, p in enumerate(self.params) if id(p) not in in_layers]
        self.diag_params = [self.params[i] for i in self.diag_index]
        self._inverses: list[tuple[Tensor, Tensor]] | None = None

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        refuse_parameter_change("ncl", "Kronecker factors for the layers it found at attach")

    # --- the prior before any task ---------------------------------------------------------
    def training_data(self, task: int, data: Batch) -> Batch:
        if self.data_size is None:  # data-parallel: the shards of all replicas together
            self.data_size = all_reduce_count(len(data))
        return data

    def _ensure_prior(self) -> None:
        if self.factors is not None:
            return
        if self.data_size is None:
            raise ConfigError("ncl needs data_size (N in its prior N(0, I/N)): set ncl.data_size, "
                              "or call method.training_data(task, data) before training")
        root = 1.0 / math.sqrt(self.data_size)  # A ⊗ G = I/N
        self.factors = []
        self.block_means = []
        for layer in self.layers:
            w = weight_matrix(layer).detach()
            self.factors.append({"A": root * torch.eye(w.shape[1], device=w.device, dtype=w.dtype),
                                 "G": root * torch.eye(w.shape[0], device=w.device, dtype=w.dtype)})
            self.block_means.append(torch.zeros_like(w))
        self.diag_precision = [torch.full_like(p, 1.0 / self.data_size) for p in self.diag_params]
        self.diag_means = [torch.zeros_like(p) for p in self.diag_params]
        self._inverses = None

    def _damped_inverses(self) -> list[tuple[Tensor, Tensor]]:
        """(A⁻¹, G⁻¹) of Λ ⊕ αI per layer, computed once per task."""
        if self._inverses is None:
            self._inverses = []
            for f in self.factors:
                eye_a = self.config.alpha * torch.eye(f["A"].shape[0], device=f["A"].device)
                eye_g = self.config.alpha * torch.eye(f["G"].shape[0], device=f["G"].device)
                damped = nearest_kronecker_sum(KroneckerFactors(f["A"], f["G"]),
                                               KroneckerFactors(eye_a, eye_g))
                self._inverses.append((spd_inverse(damped.A), spd_inverse(damped.G)))
        return self._inverses

    # --- the step ----------------------------------------------------------------------------
    @torch.no_grad()
    def transform_grads(self) -> None:
        self._ensure_prior()
        cfg = self.config
        prior_only = self._tasks_seen == 0  # Λ = I/N, μ = 0: the step is g + λθ/N
        exact = cfg.alpha == 0  # then Λ⁻¹(λΛΔ) = λΔ without the two products
        steps: list[Tensor] = []  # the layers' new gradients, for the trust region
        inverses = (self._damped_inverses() if cfg.precondition and not prior_only
                    else [None] * len(self.layers))
        for layer, f, mean, inverse in zip(self.layers, self.factors, self.block_means, inverses):
            gradients_of([p for p in (layer.weight, layer.bias) if p is not None])
            grad = weight_matrix(layer, layer.weight.grad,
                                 None if layer.bias is None else layer.bias.grad)
            delta = weight_matrix(layer).detach() - mean
            if prior_only:
                grad = grad + cfg.lambda_ / self.data_size * delta
            elif inverse is None:  # no preconditioning: g + λ GΔA, the penalty's gradient
                grad = grad + cfg.lambda_ * (f["G"] @ delta @ f["A"])
            else:
                a_inv, g_inv = inverse
                if exact:
                    grad = (g_inv @ grad @ a_inv + cfg.lambda_ * delta) / self.data_size
                else:
                    grad = grad + cfg.lambda_ * (f["G"] @ delta @ f["A"])
                    grad = g_inv @ grad @ a_inv / self.data_size
            weight, bias = split_weight_matrix(layer, grad)
            layer.weight.grad.copy_(weight)
            if bias is not None:
                layer.bias.grad.copy_(bias)
            steps.append(grad)
        diag = self.diag_params
        if diag:
            grads = gradients_of(diag)
            if cfg.lambda_:
                delta = torch._foreach_sub(diag, self.diag_means)
                torch._foreach_mul_(delta, self.diag_precision)
                torch._foreach_add_(grads, delta, alpha=cfg.lambda_)
            if cfg.precondition and not prior_only:
                scale = torch._foreach_add(self.diag_precision, cfg.alpha ** 2)
                torch._foreach_mul_(scale, float(self.data_size))
                torch._foreach_div_(grads, scale)
        if cfg.trust_region is not None:
            self._clip_to_trust_region(steps, gradients_of(diag) if diag else [])

    def _clip_to_trust_region(self, block_grads: list[Tensor], diag_grads: list[Tensor]) -> None:
        lr = float(self.optimizer.param_groups[0]["lr"])
        norm_sq = torch.zeros((), device=self.device)
        for grad, f in zip(block_grads, self.factors):
            norm_sq += (grad * (f["G"] @ grad @ f["A"])).sum()
        for grad, precision in zip(diag_grads, self.diag_precision):
            norm_sq += (precision * grad.square()).sum()
        norm = lr * norm_sq.clamp(min=0).sqrt()
        if norm > self.config.trust_region:
            scale = self.config.trust_region / float(norm)
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(scale)

    def penalty_value(self) -> Tensor | None:
        """λ/2 · (θ − μ)ᵀ Λ (θ − μ) at the current weights."""
        if self.factors is None:
            return None
        with torch.no_grad():
            total = torch.zeros((), device=self.device)
            for layer, f, mean in zip(self.layers, self.factors, self.block_means):
                delta = weight_matrix(layer) - mean
                total += (delta * (f["G"] @ delta @ f["A"])).sum()
            for p, precision, mean in zip(self.diag_params, self.diag_precision, self.diag_means):
                total += (precision * (p - mean).square()).sum()
        return self.config.lambda_ / 2 * total

    # --- consolidation ---------------------------------------------------------------------
    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        self._ensure_prior()
        cfg = self.config
        # one draw of the task's samples serves both parts (and the generator advances once)
        batches = list(self.batches(data, cfg.fisher_batch_size, limit=cfg.fisher_samples))
        if self.layers:
            new = kfac_fisher(self.model, self.layers, batches,
                              self.readout.select, kind=cfg.fisher_kind,
                              generator=self.generator)
            for i, (f, fresh) in enumerate(zip(self.factors, new)):
                summed = nearest_kronecker_sum(KroneckerFactors(cfg.gamma * f["A"], f["G"]),
                                               fresh)
                self.factors[i] = {"A": summed.A, "G": summed.G}
            self.block_means = [weight_matrix(layer).detach().clone() for layer in self.layers]
        if self.diag_index:
            fisher = diagonal_fisher(self.model, batches, self.readout.select,
                                     kind=cfg.fisher_kind, generator=self.generator,
                                     max_rows=cfg.fisher_batch_size)
            for slot, i in enumerate(self.diag_index):
                self.diag_precision[slot] = (cfg.gamma * self.diag_precision[slot]
                                             + fisher[self.param_names[i]])
            self.diag_means = [p.detach().clone() for p in self.diag_params]
        self._tasks_seen += 1
        self._inverses = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._inverses = None
