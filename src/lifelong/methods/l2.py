"""L2 regularisation: anchored to the previous task's weights, or to zero (weight decay).

- `anchor=previous` (L2-anchor): λ/2 · ||θ − θ*||², θ* the weights at the end of the previous task;
  EWC with F = 1, the baseline that shows what the Fisher weighting adds.
- `anchor=zero`: λ/2 · ||θ||², plain weight decay, the simplest baseline against loss of
  plasticity (Dohare et al. 2024); it needs no task boundaries.

The penalty's gradient λ(θ − θ*) is added at the optimizer step (two fused in-place kernels; see
`lifelong.functional.quadratic`); `penalty_value()` gives its value.

Class-incremental learning: not protected, it forgets about as much as fine-tuning; a run there
starts with a warning (`unprotected_scenarios`, `lifelong.core.method.WEIGHT_PENALTY_CLASS_IL`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Literal

from torch import Tensor

from ..core.batch import Batch, BatchLike
from ..core.config import Config, option
from ..core.method import OBJECTIVE, WEIGHT_PENALTY_CLASS_IL, Method, carry_over, copy_of
from ..core.registry import register_method
from ..functional import add_quadratic_gradient_, quadratic_value


@dataclasses.dataclass
class L2Config(Config):
    lambda_: float = option(1.0, "penalty strength λ", low=0)
    anchor: Literal["previous", "zero"] = option(
        "previous", "previous: the weights at the end of the last task; zero: weight decay")


@register_method
class L2(Method):
    name = "l2"
    description = "L2 penalty to the previous task's weights (or to zero: weight decay)"
    Config = L2Config
    needs_task_boundaries = True  # with the default anchor, the previous task's weights
    unprotected_scenarios = {"class": WEIGHT_PENALTY_CLASS_IL.format(name="l2")}
    gradient_stage = OBJECTIVE
    state_attrs = ("anchor", "active")

    def __init__(self, config: L2Config | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.anchor: list[Tensor] | None = None  # θ* (None: zero, or no task ended yet)
        self.active = self.config.anchor == "zero"

    def capabilities(self) -> dict[str, Any]:
        return {"needs_task_boundaries": self.config.anchor == "previous"}

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        # a parameter that joins training (a new LoRA adapter) is anchored where it starts
        self.anchor = carry_over(self.anchor, before, self.params, copy_of)

    def transform_grads(self) -> None:
        if self.active:
            add_quadratic_gradient_(self.params, self.config.lambda_, None, self.anchor)

    def penalty_value(self) -> Tensor | None:
        """λ/2 · ||θ − θ*||² (or λ/2 · ||θ||²) at the current weights."""
        if not self.active:
            return None
        return quadratic_value(self.params, self.anchor, None, self.config.lambda_)

    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        if self.config.anchor == "previous":
            self.anchor = [p.detach().clone() for p in self.params]
            self.active = True
