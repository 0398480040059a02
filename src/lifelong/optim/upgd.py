"""UPGD as a PyTorch optimizer, the form in which Elsayed & Mahmood (ICLR 2024) publish it.

    optimizer = lifelong.optim.UPGD(model.parameters(), lr=0.01)   # in place of SGD

It performs exactly the update of the `upgd` method followed by plain SGD (see
`lifelong.methods.upgd` for the algorithm and every option), but where the method is a gradient
transform that any optimizer then applies, this optimizer owns the update, so on the CPU with
float32 parameters the whole step (utility trace, maximum, noise, gate, weight decay and the
parameter update) is one compiled call that never writes the transformed gradient: one pass over
memory less than the method plus SGD, and no separate SGD step. Elsewhere (another device or
dtype, no C compiler) it runs the method's PyTorch path and an SGD step, with the same result.

Use the `upgd` method instead to combine UPGD with other methods or with another optimizer.
The step uses `param_groups[0]["lr"]`, so learning-rate schedulers work; one parameter group only
(the utilities' maximum spans all parameters). `state_dict()` holds the utilities and the noise
state, so a restored optimizer continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..methods.upgd import UPGD as UPGDMethod


class UPGD(torch.optim.Optimizer):
    """Utility-based Perturbed Gradient Descent; keyword options are those of the `upgd` method
    (`beta_utility`, `sigma`, `weight_decay`, `scaling`, `protect`, `noise`, `fused`; `utility`
    and `level` are fixed to first order, weight level)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 0.01, *,
                 seed: int | None = 0, **options: Any) -> None:
        if not lr > 0:
            raise ValueError(f"UPGD: lr must be > 0, got {lr}")
        for fixed in ("utility", "level"):
            if fixed in options:
                raise ValueError(f"UPGD (optimizer): '{fixed}' is not an option here; the "
                                 f"optimizer is first-order, weight-level UPGD (use the upgd "
                                 "method for the others)")
        super().__init__(params, {"lr": lr})
        if len(self.param_groups) != 1:
            raise ValueError("UPGD takes one parameter group: its utilities' maximum spans "
                             f"all parameters (got {len(self.param_groups)} groups)")
        params = self.param_groups[0]["params"]
        if not all(isinstance(p, nn.Parameter) for p in params):
            raise ValueError("UPGD needs nn.Parameter objects (model.parameters())")
        holder = nn.Module()
        holder.params = nn.ParameterList(params)
        self._sgd = torch.optim.SGD(params, lr=lr)  # the PyTorch path's update
        self.method = UPGDMethod(**options).attach(holder, self._sgd, seed=seed)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lr = self.param_groups[0]["lr"]
        if self.method.fused_kernel:
            self.method.step_parameters(lr)
        else:  # the method's transform runs as the SGD step's pre-hook
            self._sgd.param_groups[0]["lr"] = lr
            self._sgd.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["upgd"] = self.method.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        method_state = state_dict.pop("upgd", None)
        if method_state is None:
            raise ValueError("UPGD.load_state_dict: no 'upgd' entry (the utilities and noise "
                             "state); was this saved by another optimizer?")
        super().load_state_dict(state_dict)
        self.method.load_state_dict(method_state)
