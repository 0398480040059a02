"""UPGD as a PyTorch optimizer, the form in which Elsayed & Mahmood (ICLR 2024) publish it.

    optimizer = lifelong.optim.UPGD(model.parameters(), lr=0.01)   # in place of SGD

First-order, weight-level UPGD: θ ← θ − lr·g' with g' = (g + ξ)⊙(1 − s) + wd·θ (protecting) or
g + ξ⊙(1 − s) + wd·θ, ξ ~ N(0, σ²) fresh per weight and step; the formulas and the state are in
`lifelong.functional.upgd` and the options those of the `upgd` method, which computes the same
update as a gradient transform for any optimizer (and has the second-order and feature-level
variants). Here the optimizer owns the update: g' is built in the noise buffer (no gradient is
overwritten: `p.grad` stays the loss's own) and applied with one foreach call, so the result is
bit for bit that of the method followed by `torch.optim.SGD`.

The step uses `param_groups[0]["lr"]`, so learning-rate schedulers work; one parameter group only
(the utilities' maximum spans all parameters). `state_dict()` holds the trace, its origin, the
step count and the noise generator's state, so a restored optimizer continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..functional import upgd as F
from ..functional.noise import GaussianNoise
from ..integrations.distributed import broadcast_generator_
from ..methods.upgd import UPGDConfig


class UPGD(torch.optim.Optimizer):
    """Utility-based Perturbed Gradient Descent; keyword options are those of the `upgd` method
    (`beta_utility`, `sigma`, `weight_decay`, `scaling`, `protect`; `utility` and `level` are
    fixed to first order, weight level). `seed` seeds the noise generator (None: drawn from
    torch's global generator)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 0.01, *,
                 seed: int | None = 0, **options: Any) -> None:
        if not lr > 0:
            raise ValueError(f"UPGD: lr must be > 0, got {lr}")
        for fixed in ("utility", "level"):
            if fixed in options:
                raise ValueError(f"UPGD (optimizer): '{fixed}' is not an option here; the "
                                 f"optimizer is first-order, weight-level UPGD (use the upgd "
                                 "method for the others)")
        self.config = UPGDConfig.from_dict(options)
        super().__init__(params, {"lr": lr})
        if len(self.param_groups) != 1:
            raise ValueError("UPGD takes one parameter group: its utilities' maximum spans "
                             f"all parameters (got {len(self.param_groups)} groups)")
        # frozen parameters take no step (as with SGD), and no noise or weight decay either
        self.params: list[Tensor] = [p for p in self.param_groups[0]["params"] if p.requires_grad]
        if not self.params:
            raise ValueError("UPGD got no trainable parameters")
        dtype, device = self.params[0].dtype, self.params[0].device
        if any(p.dtype != dtype or p.device != device for p in self.params):
            raise ConfigError("UPGD needs every parameter on one device with one dtype")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator(device=device).manual_seed(seed)
        broadcast_generator_(self.generator)  # data-parallel replicas draw the same noise
        self.upgd, self.layout = F.init_weights(self.params)
        # the draws land in this buffer, which then holds g' (also when σ = 0: scratch space)
        self.noise = GaussianNoise(self.params, self.generator)
        self.host_scalars = device.type == "cpu"

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        cfg, params = self.config, self.params
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        coefficient = F.advance(self.upgd, cfg.beta_utility)
        F.add_weight_utility_(self.layout.utility, grads, params, coefficient)
        out = self.noise.sample() if cfg.sigma > 0 else self.noise.views
        F.perturb_and_gate_(grads, out, out if cfg.sigma > 0 else None, self.upgd, self.layout,
                            sigma=cfg.sigma, protect=cfg.protect, local=cfg.scaling == "local",
                            on_host=self.host_scalars)
        F.add_weight_decay_(out, params, cfg.weight_decay)
        torch._foreach_add_(params, out, alpha=-self.param_groups[0]["lr"])
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["upgd"] = {"trace": self.upgd.trace.clone(), "origin": self.upgd.origin,
                         "steps": self.upgd.steps, "generator": self.generator.get_state(),
                         "config": self.config.to_dict()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("upgd", None)
        if saved is None:
            raise ValueError("UPGD.load_state_dict: no 'upgd' entry (the utilities and noise "
                             "state); was this saved by another optimizer?")
        if "trace" not in saved:
            raise ValueError("UPGD.load_state_dict: this state was saved by an older lifelong "
                             "(before the functional UPGD core); start the optimizer afresh")
        if saved["trace"].shape != self.upgd.trace.shape:
            raise ValueError(f"UPGD.load_state_dict: the saved trace has {saved['trace'].numel()}"
                             f" entries, these parameters {self.upgd.trace.numel()}")
        super().load_state_dict(state_dict)
        self.config = UPGDConfig.from_dict(saved["config"])
        self.upgd.trace.copy_(saved["trace"])
        self.upgd.origin, self.upgd.steps = int(saved["origin"]), int(saved["steps"])
        self.generator.set_state(saved["generator"])
