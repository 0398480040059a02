"""Shrink & Perturb (Ash & Adams, NeurIPS 2020, "On warm-starting neural network training").

Two forms:

- `mode=step` (Dohare et al. 2024; Elsayed & Mahmood 2024): at every update
  θ ← (1 − lr·wd)·θ − lr·g + ξ, ξ ~ N(0, σ²) fresh for every weight and step (one `normal_` call
  per step, `lifelong.functional.noise`). The shrink is applied in the optimizer's pre-step
  hook (so the gradient is the one at the old weights, exactly as in the formula) and the noise in
  its post-step hook; with plain SGD the update is the formula, with another optimizer the shrink
  is decoupled weight decay (as AdamW's). Task-free.
- `mode=task` (the original): when a new task starts, θ ← λ·θ + p·θ_fresh, θ_fresh a fresh
  initialisation of the same model (each module's own `reset_parameters`, drawn from the method's
  generator). Needs task boundaries.

Data parallelism: the generator's state is broadcast from rank 0 at `attach`, so the replicas
draw the same noise and fresh weights whatever their seeds.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..core.config import Config, option
from ..core.method import Method
from ..core.registry import register_method
from ..functional.noise import GaussianNoise
from ..integrations.distributed import broadcast_generator_


@dataclasses.dataclass
class ShrinkPerturbConfig(Config):
    mode: Literal["step", "task"] = option(
        "step", "step: shrink and add noise at every update; task: λθ + p·θ_fresh at each new task")
    weight_decay: float = option(1e-4, "step mode: shrink factor wd in (1 − lr·wd)", low=0)
    noise_std: float = option(1e-4, "step mode: standard deviation σ of the noise ξ", low=0)
    shrink: float = option(0.4, "task mode: λ, the weights' share", low=0, high=1)
    perturb: float = option(0.1, "task mode: p, the fresh initialisation's share", low=0)
    removed = {"noise_source": "the noise is always fresh N(0, σ²) per weight and step, drawn "
                               "with PyTorch's generator (the table source is gone); drop the key"}


@register_method
class ShrinkPerturb(Method):
    name = "shrink-perturb"
    description = "Shrink & Perturb: weight shrinking plus noise, per step or at task boundaries"
    Config = ShrinkPerturbConfig

    def __init__(self, config: ShrinkPerturbConfig | dict | None = None, **overrides: Any
                 ) -> None:
        super().__init__(config, **overrides)
        self.noise: GaussianNoise | None = None
        self._shrink_groups: list[tuple[list[Tensor], dict[str, Any]]] = []

    def capabilities(self) -> dict[str, Any]:
        return {"needs_task_boundaries": self.config.mode == "task"}

    def uses(self, hook: str) -> bool:
        if hook in ("transform_grads", "after_step"):
            return self.config.mode == "step"
        return super().uses(hook)

    def on_attach(self) -> None:
        broadcast_generator_(self.generator)  # data-parallel replicas draw the same noise
        self.on_parameters_changed(self.params)

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        """Shrink and perturb exactly the parameters that train now (a LoRA method's newest
        adapter, not the frozen ones)."""
        if self.config.mode != "step":
            return
        mine = {id(p) for p in self.params}
        self._shrink_groups = [([p for p in g["params"] if id(p) in mine], g)
                               for g in self.optimizer.param_groups]
        self.noise = GaussianNoise(self.params, self.generator)

    def transform_grads(self) -> None:
        """Shrink before the step: (1 − lr·wd)θ, with each parameter group's lr."""
        if not self.config.weight_decay:
            return
        with torch.no_grad():
            for params, group in self._shrink_groups:
                if params:
                    torch._foreach_mul_(params, 1.0 - group["lr"] * self.config.weight_decay)

    def after_step(self) -> None:
        """Perturb after the step: θ += ξ, one draw for all parameters."""
        if not self.config.noise_std:
            return
        with torch.no_grad():
            torch._foreach_add_(self.params, self.noise.sample(), alpha=self.config.noise_std)

    def before_task(self, task: int) -> None:
        super().before_task(task)
        if self.config.mode == "task" and task > 0:
            self.shrink_and_perturb()

    @torch.no_grad()
    def shrink_and_perturb(self) -> None:
        """θ ← λθ + p·θ_fresh (Ash & Adams 2020)."""
        fresh = fresh_initialisation(self.model, self.generator)
        by_name = dict(fresh.named_parameters())
        for name, p in zip(self.param_names, self.params):
            p.mul_(self.config.shrink).add_(by_name[name], alpha=self.config.perturb)


def fresh_initialisation(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """A copy of `model` with every module's `reset_parameters()` re-run, drawn from a seed taken
    from `generator` (so runs stay reproducible without touching the global random state)."""
    fresh = copy.deepcopy(model)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                             device=generator.device).item())
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=sorted({d.index or 0 for d in devices})):
        torch.manual_seed(seed)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return fresh
