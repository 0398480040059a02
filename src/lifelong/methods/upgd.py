"""Utility-based Perturbed Gradient Descent, UPGD (Elsayed & Mahmood, ICLR 2024, "Addressing loss
of plasticity and catastrophic forgetting in continual learning").

Each weight's utility (the loss increase if it were zeroed, to first order −g⊙θ, to second order
−g⊙θ + ½h⊙θ²) is traced and scaled into s ∈ (0, 1), which shields useful weights from the
gradient and the noise (against forgetting) and perturbs useless ones (against loss of
plasticity): θ ← (1 − lr·wd)θ − lr(g + ξ)⊙(1 − s) (`protect=True`, the paper's main algorithm) or
θ ← (1 − lr·wd)θ − lr(g + ξ⊙(1 − s)), with ξ ~ N(0, σ²) fresh for every weight and step. The
formulas, their numerics and the state are in `lifelong.functional.upgd`; this method is the
gradient transform: an optimizer step pre-hook rewrites every `p.grad` so that a plain
`torch.optim.SGD(lr)` (no momentum, no weight decay) performs exactly the update above (with Adam
the same transformed gradient gives an adaptive variant, not the paper's algorithm). The authors'
README code steps by 2·lr; here, as in the paper, by lr. `lifelong.optim.UPGD`: the optimizer form.

- `utility=first` (default) is the UPGD the authors publish; `second` adds ½h⊙θ², h the diagonal
  Hessian of the task loss (`Batch.loss` after the readout; other methods' penalties excluded):
  exact for the output Linear layer, the HesScale / Becker & LeCun (1989) recursion for the Linear
  layers below it in a plain chain (`lifelong.functional.hessian`); parameters it cannot reach get
  h = 0. It needs the step's batch: the trainer passes it, a plain loop calls
  `method.add_penalty(loss, batch, output)` before `backward()`.
- `level=feature`: one utility per hidden unit (the output of a Linear that is not the output
  layer), u_j = −Σ_i W_ji ∂L/∂W_ji − c_j ∂L/∂c_j, that of its pre-activation (for ReLU,
  LeakyReLU, Identity and Dropout also that of its output); its gate scales row j of the weight
  and bias. The output layer and any other parameter get the plain gradient (+ wd·θ), no noise.
- Data parallelism: first-order utilities come from DDP's averaged gradient and equal weights;
  each replica's curvature is averaged; the generator is broadcast at attach (the same ξ).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..core.batch import Batch
from ..core.config import Config, option
from ..core.method import TRANSFORM, Method, refuse_parameter_change
from ..core.registry import register_method
from ..errors import ConfigError
from ..functional import gradients_of
from ..functional import upgd as F
from ..functional.hessian import LinearChainRecorder, LinearCurvature
from ..functional.noise import GaussianNoise
from ..integrations.distributed import broadcast_generator_
from ..models.introspection import find_output_layer, linear_layers


@dataclasses.dataclass
class UPGDConfig(Config):
    utility: Literal["first", "second"] = option(
        "first", "Taylor order of the utility: first −g⊙θ (the authors' published UPGD), second "
        "adds ½h⊙θ² with h the diagonal Hessian (exact output layer, HesScale below)")
    beta_utility: float = option(0.999, "decay β of the utility trace ū", low=0, high=1,
                                 high_open=True)
    sigma: float = option(1e-3, "standard deviation σ of the perturbation ξ", low=0)
    weight_decay: float = option(0.0, "weight decay wd: θ ← (1 − lr·wd)θ with SGD", low=0)
    scaling: Literal["global", "local"] = option(
        "global", "M, the utility that maps to sigmoid(1): the max over all parameters (global) "
        "or over each tensor (local; feature level: each layer)")
    protect: bool = option(True, "True: the gate scales gradient and noise (protecting UPGD); "
                           "False: only the noise (non-protecting)")
    level: Literal["weight", "feature"] = option(
        "weight", "weight: one utility per weight; feature: one per hidden unit, gating its "
        "incoming weights and bias (output layer ungated)")
    removed = {"fused": "the compiled CPU kernel is gone (no C compiler runs at attach any "
                        "more); the step is PyTorch operations; drop the key",
               "noise": "the noise is always fresh N(0, σ²) per weight and step, drawn with "
                        "PyTorch's generator (the table and counter sources are gone); drop "
                        "the key"}


@register_method
class UPGD(Method):
    name = "upgd"
    description = "utility-gated gradient and noise: protect useful weights, perturb the rest"
    Config = UPGDConfig
    gradient_stage = TRANSFORM
    state_attrs = ("utility", "utility_origin", "steps")

    def __init__(self, config: UPGDConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.state: F.UPGDState | None = None
        self.noise: GaussianNoise | None = None  # ξ's source (None when σ = 0)
        self._recorder: LinearChainRecorder | None = None
        self._batch: Batch | None = None  # second order: the batch of this step
        self._output: Tensor | None = None
        self._warned = False

    def uses(self, hook: str) -> bool:
        if hook in ("prepare_batch", "penalty"):
            return self.config.utility == "second"
        return super().uses(hook)

    # --- set-up --------------------------------------------------------------------------------
    def on_attach(self) -> None:
        broadcast_generator_(self.generator)  # replicas draw the same noise
        cfg, params = self.config, self.params
        if not params:
            raise ConfigError("upgd needs trainable parameters")
        dtype, device = params[0].dtype, params[0].device
        if any(p.dtype != dtype or p.device != device for p in params):
            raise ConfigError("upgd needs every trainable parameter on one device with one dtype")
        self._index = {id(p): i for i, p in enumerate(params)}
        self.host_scalars = device.type == "cpu"  # reading M costs no device sync
        if cfg.level == "weight":
            self._gated = list(range(len(params)))
            self.state, self.layout = F.init_weights(params)
        else:
            self._hidden = self._hidden_layers()
            self._gated = [i for _, w, b in self._hidden for i in (w, b) if i is not None]
            self._biased = [b is not None for _, _, b in self._hidden]
            self.state, self.layout = F.init_units([m.out_features for m, _, _ in self._hidden],
                                                   self._biased, params[0])
        self._all_gated = len(self._gated) == len(params)
        self._gated_params = [params[i] for i in self._gated]
        self.noise = GaussianNoise(self._gated_params, self.generator) if cfg.sigma > 0 else None
        if cfg.utility == "second":
            self._recorder = LinearChainRecorder(self.model)
            self._handles.extend(self._recorder.register())
            if not self._recorder.chain:
                warnings.warn("upgd: the model does not end in a chain of Linear layers, so no "
                              "Hessian diagonal is known: second order acts as first order",
                              stacklevel=3)

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        refuse_parameter_change("upgd", "a utility trace per parameter it found at attach")

    def _hidden_layers(self) -> list[tuple[nn.Linear, int, int | None]]:
        """(layer, index of its weight, index of its bias) of every trained nn.Linear that is not
        (inside) the output layer."""
        found = find_output_layer(self.model)
        output = set() if found is None else set(found[1].modules())
        index = self._index
        hidden = [(m, index[id(m.weight)], None if m.bias is None else index.get(id(m.bias)))
                  for _, m in linear_layers(self.model)
                  if isinstance(m, nn.Linear) and m not in output and id(m.weight) in index]
        if not hidden:
            raise ConfigError("upgd level=feature needs a trained hidden Linear layer (a Linear "
                              "that is not the output layer); use level=weight")
        return hidden

    # --- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def transform_grads(self) -> None:
        cfg, state = self.config, self.state
        grads = gradients_of(self.params)
        gated = grads if self._all_gated else [grads[i] for i in self._gated]
        curvature = self._curvature() if self._recorder is not None else {}
        coefficient = F.advance(state, cfg.beta_utility)
        if cfg.level == "weight":
            F.add_weight_utility_(self.layout.utility, grads, self.params, coefficient)
            if curvature:
                F.add_curvature_(self.layout.utility, self.params, self._index, curvature,
                                 coefficient)
        else:
            units = [curvature[m].unit if m in curvature else None for m, _, _ in self._hidden]
            F.add_unit_utility_(self.layout.segments, gated, self._gated_params, self._biased,
                                coefficient, units)
        noise = None if self.noise is None else self.noise.sample()
        F.perturb_and_gate_(gated, gated, noise, state, self.layout, sigma=cfg.sigma,
                            protect=cfg.protect, local=cfg.scaling == "local",
                            on_host=self.host_scalars)
        F.add_weight_decay_(grads, self.params, cfg.weight_decay)

    # --- second order --------------------------------------------------------------------------
    def prepare_batch(self, batch: Batch) -> Batch:
        self._batch = batch
        return batch

    def penalty(self, batch: Batch, output: Tensor) -> Tensor | None:
        self._batch, self._output = batch, output  # the final batch and its forward pass
        return None

    def _curvature(self) -> dict[nn.Linear, LinearCurvature]:
        recorder, batch = self._recorder, self._batch
        try:
            if not recorder.chain:
                return {}
            if batch is None:
                raise ConfigError(
                    "upgd utility=second needs each step's batch (targets, task ids): the "
                    "trainer passes it; in your own loop call method.add_penalty(loss, batch, "
                    "output) or method.prepare_batch(batch) before backward()")
            curvature = F.batch_curvature(recorder, batch, self._output, self.readout,
                                          units=self.config.level == "feature")
            if curvature is None and not self._warned:
                warnings.warn("upgd: the last forward pass did not go through the model's "
                              "Linear chain with this batch; this step uses first order",
                              stacklevel=3)
                self._warned = True
            return curvature or {}
        finally:
            self._batch = self._output = None
            recorder.clear()

    # --- inspection and state ------------------------------------------------------------------
    def utility_estimate(self) -> list[Tensor]:
        """û = ū / (1 − βᵗ), per parameter (level=weight) or per hidden layer (feature)."""
        factor = F.corrected_scale(self.state, self.config.beta_utility)
        segments = (self.layout.utility if self.config.level == "weight"
                    else self.layout.segments)
        return [u * factor for u in segments]

    def gate(self) -> list[Tensor]:
        """1 − s as of the last step (the utilities have not changed since), per weight (shaped
        like the parameters) or per hidden unit (one vector per hidden layer); ones before the
        first step."""
        keep = F.keep_(self.state, self.layout, self.config.scaling == "local").clone()
        if self.config.level == "feature":
            return list(keep.split(self.layout.sizes))
        return [part.view(p.shape) for part, p in zip(keep.split(self.layout.sizes), self.params)]

    # state_dict: v, its origin and t (the noise is the generator's, which Method saves)
    @property
    def utility(self) -> Tensor | None:
        """v, the stored trace (ū = v·β^(t − origin)); flat."""
        return None if self.state is None else self.state.trace

    @utility.setter
    def utility(self, value: Tensor) -> None:
        trace = self.state.trace
        if value.shape != trace.shape:
            raise ConfigError(f"upgd: the saved utility has {value.numel()} entries, this model "
                              f"needs {trace.numel()}; was it saved for another model?")
        trace.copy_(value)  # in place: the layout's views read this buffer

    @property
    def utility_origin(self) -> int:
        return self.state.origin

    @utility_origin.setter
    def utility_origin(self, value: int) -> None:
        self.state.origin = int(value)

    @property
    def steps(self) -> int:
        return self.state.steps

    @steps.setter
    def steps(self, value: int) -> None:
        self.state.steps = int(value)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["utility"] = state["utility"].clone()  # the buffer changes in place every step
        return state
