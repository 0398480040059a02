"""Continual backprop, CBP (Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood and Sutton, "Loss of
plasticity in deep continual learning", Nature 632, 2024).

Plain backprop slowly loses its ability to learn when the data keep changing: units die, weights
grow, the representation collapses. CBP keeps injecting a little of the initial randomness: after
every optimizer step it re-initialises a small fraction of the least useful mature hidden units.
The utilities, ages, counters and the re-initialisation are `lifelong.functional.cbp` (with the
formulas and where they differ from the authors' code); this method finds the hidden layers
(`lifelong.models.introspection.hidden_units`: a plain chain of Linear/Conv2d layers, the last
being the output, with BatchNorm/LayerNorm entries per unit), records each next layer's input
and runs the step after the optimizer's.

The features come from a forward pre-hook on each next layer that keeps a reference to its input
in training mode only: evaluation passes are ignored, and so are other methods' probe passes
(A-GEM's reference gradient: `lifelong.core.probe`); of several training passes before a step,
the last counts. Data parallelism (DDP): the statistics are averaged over the replicas at every
step, and the generator's state is broadcast from rank 0 when the method is attached, so every
replica replaces the same units with the same fresh weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..core.config import Config, option
from ..core.method import Evaluator, Method, refuse_parameter_change
from ..core.probe import is_probing
from ..core.registry import register_method
from ..functional import cbp as F
from ..functional.cbp import init_bound
from ..integrations.distributed import broadcast_generator_
from ..models.introspection import HiddenLayer, hidden_units

__all__ = ["CBP", "CBPConfig", "init_bound"]


@dataclasses.dataclass
class CBPConfig(Config):
    replacement_rate: float = option(1e-4, "fraction ρ of a layer's eligible units replaced per "
                                     "step (carried over steps)", low=0, high=1)
    decay_rate: float = option(0.99, "decay η of the running utility and mean activation",
                               low=0, high=1, high_open=True)
    maturity_threshold: int = option(100, "a unit is eligible for replacement when its age "
                                     "(steps since it was initialised) exceeds m", low=0)
    utility: Literal["contribution", "adaptable"] = option(
        "contribution", "contribution |h|·Σ|w_out| (Nature paper) or the adaptable contribution "
        "|h − mean h|·Σ|w_out| / Σ|w_in|")
    init: Literal["default", "kaiming", "xavier"] = option(
        "default", "distribution of re-drawn incoming weights: PyTorch's default for the layer "
        "(U(±1/√fan_in)), kaiming_uniform for ReLU, or xavier_uniform")
    removed = {"fused": "the compiled CPU kernel is gone (no C compiler runs at attach any "
                        "more); the statistics are PyTorch operations; drop the key"}


@register_method
class CBP(Method):
    name = "cbp"
    description = "continual backprop: re-initialise the least useful mature hidden units"
    Config = CBPConfig
    needs_task_boundaries = False
    state_attrs = ("utility", "mean_activation", "ages", "counters", "replaced")

    def __init__(self, config: CBPConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.layers: list[HiddenLayer] = []
        self.bounds: list[float] = []  # U(±bound) for each layer's re-drawn incoming weights
        self.state = F.new_state([], torch.zeros(0))
        self._features: list[Tensor | None] = []  # input of each next layer, last training pass

    # --- set-up --------------------------------------------------------------------------------
    def attach(self, model: nn.Module, *args: Any, **kwargs: Any) -> CBP:
        hidden_units(model, "cbp")  # refuse a model cbp cannot follow before registering hooks
        return super().attach(model, *args, **kwargs)

    def on_attach(self) -> None:
        broadcast_generator_(self.generator)  # replicas re-draw the same weights
        self.layers = hidden_units(self.model, "cbp")
        sizes = [hidden.units for hidden in self.layers]
        if sizes != self.state.sizes:  # a new model (re-attaching keeps the statistics)
            self.state = F.new_state(sizes, self.layers[0].layer.weight)
        self._features = [None] * len(self.layers)
        self._prepare()
        for i, hidden in enumerate(self.layers):
            self._handles.append(hidden.next.register_forward_pre_hook(self._recorder(i)))

    def _prepare(self) -> None:
        """What follows from the model and the config: bounds, buffers, eligible counts."""
        cfg, state = self.config, self.state
        self.bounds = [init_bound(hidden.layer.weight, cfg.init) for hidden in self.layers]
        weight = self.layers[0].layer.weight
        state.utility = state.utility.to(weight.device, weight.dtype)
        state.mean = state.mean.to(weight.device, weight.dtype)
        self.ages = self.ages  # recounts the eligible units (the maturity threshold may differ)
        self._work = F.Workspace(self.layers, weight, adaptable=cfg.utility == "adaptable")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.model is not None:
            self._prepare()

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        refuse_parameter_change("cbp", "the units' utilities and ages of the layers it found at "
                                "attach")

    def on_detach(self) -> None:
        self._features = [None] * len(self.layers)

    def _recorder(self, i: int):
        features = self._features

        def record(module: nn.Module, args: tuple) -> None:
            if module.training and args and not is_probing():
                features[i] = args[0]  # a reference; detached when used
        return record

    # --- state: per-layer views of the flat tensors, ages on the CPU ---------------------------
    def _join(self, values: list[Tensor], like: Tensor) -> Tensor:
        if [len(v) for v in values] != self.state.sizes:
            raise ValueError(f"cbp: state for layers of {[len(v) for v in values]} units, the "
                             f"model's hidden layers have {self.state.sizes}")
        return torch.cat([torch.as_tensor(v) for v in values]).to(like.device, like.dtype)

    @property
    def utility(self) -> list[Tensor]:
        """Per hidden layer, each unit's running utility u (not bias-corrected)."""
        return list(self.state.utility.split(self.state.sizes))

    @utility.setter
    def utility(self, values: list[Tensor]) -> None:
        self.state.utility = self._join(values, self.state.utility)

    @property
    def mean_activation(self) -> list[Tensor]:
        """Per hidden layer, each unit's running mean activation f (not bias-corrected)."""
        return list(self.state.mean.split(self.state.sizes))

    @mean_activation.setter
    def mean_activation(self, values: list[Tensor]) -> None:
        self.state.mean = self._join(values, self.state.mean)

    @property
    def ages(self) -> list[Tensor]:
        """Per hidden layer, each unit's age in steps (CPU int64)."""
        return F.ages(self.state)

    @ages.setter
    def ages(self, values: list[Tensor]) -> None:
        F.set_ages(self.state, values, self.config.maturity_threshold,
                   on_device=self.config.utility == "adaptable")

    @property
    def counters(self) -> list[float]:
        """Per hidden layer, the fractional count c of units owed for replacement."""
        return self.state.counters

    @counters.setter
    def counters(self, values: list[float]) -> None:
        self.state.counters = [float(c) for c in values]

    @property
    def replaced(self) -> list[int]:
        """Per hidden layer, the units replaced so far."""
        return self.state.replaced

    @replaced.setter
    def replaced(self, values: list[int]) -> None:
        self.state.replaced = [int(r) for r in values]

    # --- the step ------------------------------------------------------------------------------
    def after_step(self) -> None:
        features = self._features
        if not features or any(h is None for h in features):
            return  # no training forward pass seen yet
        cfg, state = self.config, self.state
        state.step += 1
        F.update_statistics_(state, self._work, features, cfg.decay_rate,
                             contribution=cfg.utility == "contribution")
        for i in range(len(self.layers)):
            count = F.owed(state, i, cfg.replacement_rate, cfg.maturity_threshold)
            if count:
                F.reinitialise_(state, i, self.layers[i], self.lowest_utility(i, count),
                                cfg.decay_rate, self.bounds[i], self.generator, self.optimizer)

    def bias_corrections(self, i: int, index: Tensor | None = None) -> Tensor:
        """1 − η^age of layer i's units (or of units `index`), on the CPU in float64."""
        return F.bias_corrections(self.state, i, self.config.decay_rate, index)

    def corrected_utility(self, i: int) -> Tensor:
        """Layer i's bias-corrected utility û = u / (1 − η^age) (inf where age is 0)."""
        utility = self.utility[i]
        return utility / self.bias_corrections(i).to(utility.device, utility.dtype)

    def lowest_utility(self, i: int, count: int) -> Tensor:
        """The `count` eligible units of layer i with the lowest bias-corrected utility (CPU
        indices; ties go to the lower index)."""
        return F.lowest_utility(self.state, i, count, self.config.decay_rate,
                                self.config.maturity_threshold)

    def report(self, task: int, evaluate: Evaluator) -> dict[str, float]:
        return {"replaced_units": float(sum(self.replaced))}
