"""Utility-based Perturbed Gradient Descent, UPGD (Elsayed & Mahmood, ICLR 2024, "Addressing loss
of plasticity and catastrophic forgetting in continual learning").

Every weight carries a utility: how much the loss would grow if the weight were set to zero,
estimated by a Taylor expansion around the current weights,

    first order   u = −g⊙θ
    second order  u = −g⊙θ + ½ h⊙θ²      (h: the diagonal of the loss Hessian)

traced as ū ← β ū + (1 − β) u. The scaled utility s = sigmoid(û / M) ∈ (0, 1), with M the largest
utility over all parameters (`scaling=global`) or over the parameter's own tensor (`local`), gates
the update. Protecting UPGD (the paper's main algorithm, `protect=True`):

    θ ← (1 − lr·wd) θ − lr (g + ξ) ⊙ (1 − s),     ξ ~ N(0, σ²) fresh for every weight and step

so useful weights are shielded from both gradient and noise (against forgetting) and useless ones
are perturbed (against loss of plasticity). Non-protecting UPGD (`protect=False`) gates only the
noise: θ ← (1 − lr·wd) θ − lr (g + ξ ⊙ (1 − s)).

Implementation: a gradient transform. `transform_grads` (an optimizer step pre-hook) rewrites each
`p.grad` as (g + ξ)⊙(1 − s) + wd·θ (or g + ξ⊙(1 − s) + wd·θ), so that a plain
`torch.optim.SGD(lr)` without momentum or weight decay performs exactly the update above. With
another optimizer the same transformed gradient goes into it (with Adam that is an adaptive
variant, not the paper's SGD algorithm). The authors' README implementation scales the step by
2·lr (so that 1 − s ≈ ½ gives about the plain step); here, as in the paper's algorithm, it is lr.
`utility=first` is the default: it is the UPGD the authors publish (their README), and second
order adds about one plain SGD step's worth of time to each step (forward hooks, HesScale pass).

Details:

- Bias correction: û = ū / (1 − βᵗ). Since û and M are corrected by the same positive factor, it
  cancels in û / M and s = sigmoid(ū / max ū) exactly; the gate is computed from ū and
  `utility_estimate()` returns û. (The reference code takes M from the uncorrected ū but divides
  the corrected û by it, which inflates the gate early on; that is not copied.)
- Guard: if M ≤ 0 or M is not finite, no weight has positive utility, so there is nothing to
  protect: s = 0 (plain SGD plus the full noise); with `local`, per tensor.
- `level=feature` (the paper's feature-wise variant): one utility per hidden unit, the output of a
  Linear layer that is not the output layer: u_j = −Σ_b ∂L/∂z_bj z_bj for its pre-activation z_j,
  computed from the gradients already there as the sum of the weight-level utilities of the
  unit's incoming weights and bias, −Σ_i W_ji ∂L/∂W_ji − c_j ∂L/∂c_j (z = Wx + c). For ReLU,
  LeakyReLU, Identity and Dropout (σ(z) = σ'(z) z) it is exactly the utility of the unit's output
  after the activation, −Σ_b ∂L/∂h_bj h_bj; for Tanh and Sigmoid it is that of the pre-activation.
  Second order adds ½ Σ_b ĥ_z,bj z_bj² (HesScale, below). The gate 1 − s_j scales the gradient
  and noise of row j of the layer's weight and bias; the output layer (the model's `head`, else
  its last Linear) and any other parameter get the plain gradient (+ wd·θ), no noise.
- Second order needs h: the diagonal Hessian of the task loss (`Batch.loss`, cross-entropy or
  squared error, after the readout; penalty terms of other methods are not included), see
  `lifelong.functional.hessian`: exact for the output Linear layer, the HesScale / Becker & LeCun
  (1989) diagonal recursion for the Linear layers below it in a plain chain Linear → ReLU,
  LeakyReLU, Tanh, Sigmoid, Identity, Dropout → Linear. Parameters the recursion cannot reach
  (other layer types, anything before a non-chain module) get h = 0, i.e. first order. It needs
  the batch (targets, task ids): recorded by `prepare_batch` and `penalty`; a plain PyTorch loop
  calls `method.add_penalty(loss, batch, output)` before `backward()`.
- Noise (`noise`): `exact` draws ξ for every weight at every step, as the paper. On a CPU this is
  the expensive part: PyTorch's CPU generator produces about one normal per 3.5 ns, as much time
  as a whole batch-1 SGD step of a 784-100-100-10 MLP. `table` reads the values from a rolling
  table of normals (`lifelong.functional.noise.GaussianNoise`, shared with Shrink & Perturb):
  independent N(0, σ²) within a step, every table entry redrawn within 32 steps, but one step's
  noise partly repeats an earlier step's at other positions. `counter` draws fresh i.i.d.
  normals inside the fused CPU kernel (below) from a counter-based generator, Threefry2x32-20 of
  (element, tensor, step) under a key drawn from the method's seed, turned into normals by
  Box–Muller: as exact as `exact`, reproducible from the key and t alone, about 4x cheaper than
  torch's CPU generator and with no buffer to read. `auto` (default) picks `counter` where the
  kernel runs, `table` elsewhere on the CPU, and `exact` on accelerators, where drawing costs
  little.

Speed (batch-1 streaming is bound by passes over memory): the trace is stored as
v = ū·β^−(t − origin), so the decay costs no pass (v += β^−(t − origin)(1 − β)u, one fused
`_foreach_addcmul_`); v is rescaled to ū every ~2⁴⁰ of growth, and entries below 2⁻³⁰ of the
largest are then zeroed, which changes no float32 gate and keeps dead units' utilities out of
denormal numbers, many times slower to compute with. M is one `amax`. On a CPU, M is read as a
number (free there) and the gate is one fused in-place pass per tensor, g ← g⊙sigmoid(−v/M); on an
accelerator M stays on the device. The state (`state_dict`) holds v, its origin, t and the noise
source's state (for table noise, the table; for counter noise, the key).

Fused kernel (`fused`, default true; float32 parameters on the CPU, level=weight): the whole
transform is one call into C (`lifelong/functional/kernels/upgd.c`, compiled at first use with the
machine's compiler, PyTorch fallback without one): a sweep for the trace and the maxima, a sweep
for noise, gate and weight decay; five PyTorch passes become two, and about twenty operator calls
one (second order adds its curvature with PyTorch first). It computes the same update as the
PyTorch path up to float32 rounding (the tests run the formula tests on both paths).

Data parallelism (DDP): the first-order utility is made of DDP's averaged gradient and the
weights, the same on every replica; the second-order curvature comes from the replica's own
batch and is averaged over the replicas (one collective per step). The noise generator's state is
broadcast from rank 0 when the method is attached, so every replica draws the same ξ.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..core.batch import Batch
from ..core.config import Config, option
from ..core.method import TRANSFORM, Method
from ..core.registry import register_method
from ..errors import ConfigError
from ..functional import gradients_of, kernels
from ..functional.hessian import LinearChainRecorder, LinearCurvature, output_curvature
from ..functional.kernels import upgd as upgd_kernel
from ..functional.kernels.upgd import UPGDKernel
from ..functional.noise import GaussianNoise
from ..integrations.distributed import all_reduce_mean_, broadcast_generator_

# x ⊙ sigmoid(β v) in one pass (x where β v > c): see `UPGD._apply_gate`
_times_sigmoid = torch.ops.aten.softplus_backward.grad_input


@dataclasses.dataclass
class UPGDConfig(Config):
    utility: Literal["first", "second"] = option(
        "first", "Taylor order of the utility: first −g⊙θ (the authors' published UPGD), second "
        "adds ½h⊙θ² with h the diagonal Hessian (exact output layer, HesScale below)")
    beta_utility: float = option(0.999, "decay β of the utility trace ū", low=0, high=1)
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
    noise: Literal["auto", "exact", "counter", "table"] = option(
        "auto", "exact: a new normal per weight and step from torch's generator (the paper); "
        "counter: the same, drawn inside the fused CPU kernel by a counter-based generator "
        "(Threefry2x32-20); table: a window of a rolling noise table; auto: counter where the "
        "fused kernel runs, else table on the CPU and exact elsewhere")
    fused: bool = option(True, "on the CPU with float32 and level=weight, run the step as one "
                         "compiled C kernel (lifelong.functional.kernels; same update, "
                         "2 passes over memory instead of 5); false: always PyTorch operations")

    def validate(self) -> None:
        if self.beta_utility >= 1:
            raise ConfigError(f"upgd.beta_utility: {self.beta_utility!r} is out of range; "
                              "accepted: >= 0 and < 1")


@register_method
class UPGD(Method):
    name = "upgd"
    description = "utility-gated gradient and noise: protect useful weights, perturb the rest"
    Config = UPGDConfig
    gradient_stage = TRANSFORM
    state_attrs = ("utility", "utility_origin", "steps", "noise", "noise_key")

    def __init__(self, config: UPGDConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        # The trace is kept as v with ū_t = v · β^(t − utility_origin): the decay becomes a
        # larger coefficient for the new term (one pass instead of two); see `_trace_utility`.
        self.utility: Tensor | None = None  # v, flat: every weight, or every hidden unit
        self.utility_origin = 0
        self.steps = 0  # t: updates seen
        self.noise: GaussianNoise | None = None  # ξ's source (None when σ = 0 or counter)
        self.noise_key: list[int] | None = None  # counter noise: ξ_t is a function of (key, t)
        self._kernel: UPGDKernel | None = None
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
        cfg = self.config
        params = self.params
        if not params:
            raise ConfigError("upgd needs trainable parameters")
        dtype, device = params[0].dtype, params[0].device
        if any(p.dtype != dtype or p.device != device for p in params):
            raise ConfigError("upgd needs every trainable parameter on one device with one dtype")
        self._index = {id(p): i for i, p in enumerate(params)}
        if cfg.level == "weight":
            gated = list(range(len(params)))
            self._sizes = [p.numel() for p in params]  # utility segments: one per tensor
        else:
            self._hidden = self._hidden_layers(self._index)
            gated = [i for layer in self._hidden for i in layer[1:] if i is not None]
            self._sizes = [layer[0].out_features for layer in self._hidden]  # one per layer
        self._gated = gated
        self._all_gated = len(gated) == len(params)
        self._gated_params = [params[i] for i in gated]
        self._gated_sizes = [params[i].numel() for i in gated]
        self._gated_shapes = [params[i].shape for i in gated]
        self._noise_numel = sum(self._gated_sizes)
        self._host_scalars = device.type == "cpu"  # reading M costs no device sync

        self.utility = torch.zeros(sum(self._sizes), dtype=dtype, device=device)
        self._utility_segments = list(self.utility.split(self._sizes))
        self._keep = torch.empty_like(self.utility)  # 1 − s (accelerator path, `gate()`)
        self._noise_buffer = torch.empty(self._noise_numel, dtype=dtype, device=device)
        self._noise_views = self._shaped(self._noise_buffer)
        # Per gated tensor: the utilities its gate is computed from (a unit's utility broadcast
        # over its row of weights and its bias), the matching 1 − s, and its scaling segment.
        if cfg.level == "weight":
            self._utility_views = self._shaped(self.utility)
            self._gate_utility = self._utility_views
            self._keep_views = self._shaped(self._keep)
            self._gate_segment = list(range(len(gated)))
        else:
            self._gate_utility, self._keep_views, self._gate_segment = [], [], []
            for k, ((_, _, bias), u, keep) in enumerate(zip(
                    self._hidden, self._utility_segments, self._keep.split(self._sizes))):
                self._gate_utility.append(u.unsqueeze(1))
                self._keep_views.append(keep.unsqueeze(1))
                self._gate_segment.append(k)
                if bias is not None:
                    self._gate_utility.append(u)
                    self._keep_views.append(keep)
                    self._gate_segment.append(k)
        # sigmoid(x) rounds to 1 above this (float32: 17, float64: 37), softplus_backward's cut
        self._saturation = 40.0 if dtype == torch.float64 else 20.0
        self._kernel = self._fused_kernel(params)
        source = cfg.noise
        if source == "auto" and self._kernel is not None:
            source = "counter"
        if source == "counter" and self._kernel is None:
            raise ConfigError(
                "upgd noise=counter is drawn inside the fused CPU kernel, which does not run "
                "here: it needs level=weight, fused=true, float32 parameters on the CPU and a C "
                f"compiler ({kernels.unavailable('upgd') or 'see lifelong.functional.kernels'}); "
                "accepted here: noise=auto, exact or table")
        self._counter = source == "counter" and cfg.sigma > 0
        if self._counter and self.noise_key is None:
            self.noise_key = torch.randint(0, 2**32, (2,), generator=self.generator,
                                           device=self.generator.device).tolist()
        self.noise = (GaussianNoise(self._gated_params, self.generator, source)
                      if cfg.sigma > 0 and not self._counter else None)

        if cfg.utility == "second":
            self._recorder = LinearChainRecorder(self.model)
            self._handles.extend(self._recorder.register())
            if not self._recorder.chain:
                warnings.warn("upgd: the model does not end in a chain of Linear layers, so no "
                              "Hessian diagonal is known: second order acts as first order",
                              stacklevel=3)

    def _fused_kernel(self, params: list[Tensor]) -> UPGDKernel | None:
        """The compiled step, where it applies (level=weight, float32 CPU tensors)."""
        if not (self.config.fused and self.config.level == "weight"
                and upgd_kernel.supports(params)):
            return None
        lib = upgd_kernel.library()
        if lib is None:
            kernels.warn_unavailable("upgd", "upgd")
            return None
        return UPGDKernel(lib, params, self._utility_views)

    def _hidden_layers(self, index: dict[int, int]) -> list[tuple[nn.Linear, int, int | None]]:
        """(layer, index of its weight, index of its bias) of every Linear layer but the output
        layer (the model's `head`, else its last Linear) whose weight is trained."""
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        head = getattr(self.model, "head", None)
        output = head if isinstance(head, nn.Linear) else (linears[-1] if linears else None)
        hidden = [(m, index[id(m.weight)], None if m.bias is None else index.get(id(m.bias)))
                  for m in linears if m is not output and id(m.weight) in index]
        if not hidden:
            raise ConfigError("upgd level=feature needs a trained hidden Linear layer (a Linear "
                              "that is not the output layer); use level=weight")
        return hidden

    def _shaped(self, flat: Tensor) -> list[Tensor]:
        """Views of `flat` shaped like the gated parameters."""
        return [v.view(s) for v, s in zip(flat.split(self._gated_sizes), self._gated_shapes)]

    # --- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def transform_grads(self) -> None:
        self._step(lr=0.0)

    @torch.no_grad()
    def step_parameters(self, lr: float) -> None:
        """The whole SGD step θ ← θ − lr·(transformed gradient) in the compiled kernel, without
        writing the transformed gradient (`lifelong.optim.UPGD` calls this in place of
        `transform_grads` + SGD). Needs the kernel (`fused_kernel`)."""
        if self._kernel is None:
            raise RuntimeError("upgd: step_parameters needs the compiled kernel (fused_kernel)")
        if not lr > 0:
            raise ValueError(f"upgd: the learning rate must be > 0, got {lr}")
        self._step(lr=lr)

    @property
    def fused_kernel(self) -> bool:
        """Whether the step runs in the compiled CPU kernel."""
        return self._kernel is not None

    def _step(self, lr: float) -> None:
        cfg = self.config
        self.steps += 1
        grads = gradients_of(self.params)
        gated = grads if self._all_gated else [grads[i] for i in self._gated]
        curvature = self._curvature() if self._recorder is not None else {}
        if self._kernel is not None:  # the same update in two sweeps (kernels/upgd.c)
            coefficient = self._trace_coefficient()
            if curvature:
                self._trace_utility(grads, gated, curvature, coefficient)
            self._kernel.step(
                grads, -coefficient, trace=not curvature,
                sigma=cfg.sigma if self._counter or self.noise is not None else 0.0,
                protect=cfg.protect, weight_decay=cfg.weight_decay,
                local=cfg.scaling == "local", step=self.steps, key=self.noise_key or (0, 0),
                noise=None if self.noise is None else self.noise.sample(), lr=lr)
            return
        self._trace_utility(grads, gated, curvature, self._trace_coefficient())
        noise = None if self.noise is None else self.noise.sample()  # N(0, 1); ξ = σ·noise
        if cfg.protect:  # (g + ξ)(1 − s)
            if noise is not None:
                torch._foreach_add_(gated, noise, alpha=cfg.sigma)
            self._apply_gate(gated)
        elif noise is not None:  # g + ξ(1 − s)
            self._apply_gate(noise, out=self._noise_views)
            torch._foreach_add_(gated, self._noise_views, alpha=cfg.sigma)
        if cfg.weight_decay:
            torch._foreach_add_(grads, self.params, alpha=cfg.weight_decay)

    def _apply_gate(self, targets: list[Tensor], out: list[Tensor] | None = None) -> None:
        """out ← targets ⊙ (1 − s) (out=None: in place), where 1 − s = sigmoid(−ū/M), or 1 where
        M ≤ 0 or M is not finite. ū/M = v/max v: the factor β^(t − origin) cancels, like the bias
        correction.

        On a CPU, M is read as a number and each tensor takes one fused pass:
        aten.softplus_backward(x, v, β, c) = x ⊙ sigmoid(β v) (x where β v > c, where sigmoid
        rounds to 1 anyway), with β = −1/M, or β = 0 and c = −1 (x unchanged) for the guard. On an
        accelerator M stays on the device and 1 − s is computed, then multiplied in."""
        if self._host_scalars:
            slopes = [(-1.0 / m, self._saturation) if m > 0 and math.isfinite(m) else (0.0, -1.0)
                      for m in self._maxima().tolist()]
            local = self.config.scaling == "local"
            for x, u, k, y in zip(targets, self._gate_utility, self._gate_segment, out or targets):
                slope, cut = slopes[k if local else 0]
                _times_sigmoid(x, u, slope, cut, grad_input=y)
            return
        self._compute_keep()
        if out is None:
            torch._foreach_mul_(targets, self._keep_views)
        else:
            torch._foreach_copy_(out, torch._foreach_mul(targets, self._keep_views))

    def _maxima(self) -> Tensor:
        """M: the largest utility overall (global) or per segment (local), up to β^(t − origin)."""
        if self.config.scaling == "global":
            return self.utility.amax().reshape(1)
        return torch.stack([u.amax() for u in self._utility_segments])

    def _compute_keep(self) -> None:
        """self._keep ← 1 − s, M kept on the device."""
        maxima = self._maxima()
        blocked = ~((maxima > 0) & torch.isfinite(maxima))
        scale = torch.where(blocked, 0.0, -maxima.reciprocal())
        if len(maxima) > 1:
            sizes = torch.tensor(self._sizes, device=maxima.device)
            scale = scale.repeat_interleave(sizes, output_size=self.utility.numel())
            blocked = blocked.repeat_interleave(sizes, output_size=self.utility.numel())
        torch.mul(self.utility, scale, out=self._keep)
        self._keep.sigmoid_().masked_fill_(blocked, 1.0)

    def _trace_coefficient(self) -> float:
        """ρ_t (1 − β) for ū ← β ū + (1 − β) u stored as v ← v + ρ_t (1 − β) u, ρ_t =
        β^−(t − origin), which keeps ū_t = v β^(t − origin); v is rescaled to ū (origin = t − 1)
        before ρ_t passes 2⁴⁰ (and simply decayed when β is almost 0)."""
        beta = self.config.beta_utility
        if beta < 2.0 ** -20:  # (almost) no memory: decay v directly, v = ū
            if beta == 0:
                self.utility.zero_()
            else:
                self.utility.mul_(beta)
            self.utility_origin = self.steps
        elif beta ** (self.steps - self.utility_origin) < 2.0 ** -40:
            self._rescale(self.steps - 1)
        return (1 - beta) / beta ** (self.steps - self.utility_origin)

    def _trace_utility(self, grads: list[Tensor], gated: list[Tensor],
                       curvature: dict[nn.Linear, LinearCurvature], coefficient: float) -> None:
        """v ← v + coefficient · u (see `_trace_coefficient`)."""
        if self.config.level == "weight":  # u = −g⊙θ (+ ½ h⊙θ²)
            torch._foreach_addcmul_(self._utility_views, grads, self.params, value=-coefficient)
            if curvature:
                targets, hessians, params = [], [], []
                for layer, c in curvature.items():
                    for p, h in ((layer.weight, c.weight), (layer.bias, c.bias)):
                        i = None if p is None or h is None else self._index.get(id(p))
                        if i is not None:
                            targets.append(self._utility_views[i])
                            hessians.append(h)
                            params.append(self.params[i])
                torch._foreach_mul_(hessians, params)  # h is ours: h⊙θ in place
                torch._foreach_addcmul_(targets, hessians, params, value=coefficient / 2)
            return
        # feature level: u_j = −Σ_i W_ji ∂L/∂W_ji − c_j ∂L/∂c_j (+ ½ Σ_b ĥ_z,bj z_bj²)
        products = torch._foreach_mul(gated, self._gated_params)
        k = 0
        for (layer, _, bias), target in zip(self._hidden, self._utility_segments):
            unit = products[k].sum(1)
            k += 1
            if bias is not None:
                unit += products[k]
                k += 1
            target.add_(unit, alpha=-coefficient)
            if layer in curvature:
                target.add_(curvature[layer].unit, alpha=coefficient / 2)

    def _rescale(self, step: int) -> None:
        """Make v = ū at `step` (origin = step). Entries smaller in size than 2⁻³⁰ M (M the
        largest utility, or the largest |ū| if none is positive) are set to 0: their gate
        sigmoid(−ū/M) rounds to ½ in float32 anyway, and left alone they would decay into denormal
        numbers, which make every pass over the buffer many times slower."""
        v = self.utility
        v.mul_(self.config.beta_utility ** (step - self.utility_origin))
        largest = v.amax()
        floor = torch.where(largest > 0, largest, v.abs().amax()) * 2.0 ** -30
        v.masked_fill_(v.abs() < floor, 0.0)
        self.utility_origin = step

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
            records = recorder.find(self._output)
            output = None if records is None else records[recorder.chain[-1]][1]
            if output is None or output.shape[0] != len(batch):
                self._warn_once("upgd: the last forward pass did not go through the model's "
                                "Linear chain with this batch; this step uses first order")
                return {}
            hessian, gradient = output_curvature(
                output, batch.y, batch.task_ids, self.readout, batch.extras.get("loss_weight"),
                with_gradient=recorder.curved)
            curvature = recorder.curvature(records, hessian, gradient,
                                           units=self.config.level == "feature")
            # data-parallel: the curvature of the global batch's loss, as DDP averages g
            all_reduce_mean_([h for c in curvature.values()
                              for h in (c.weight, c.bias, c.unit) if h is not None])
            return curvature
        finally:
            self._batch = self._output = None
            recorder.clear()

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            warnings.warn(message, stacklevel=4)
            self._warned = True

    # --- inspection and state ------------------------------------------------------------------
    def utility_estimate(self) -> list[Tensor]:
        """û = ū / (1 − βᵗ), per parameter (level=weight) or per hidden layer (feature)."""
        beta, t = self.config.beta_utility, self.steps
        factor = (beta ** (t - self.utility_origin) if beta else float(t > 0)) / (
            1.0 - beta ** t if t else 1.0)
        segments = (self._utility_views if self.config.level == "weight"
                    else self._utility_segments)
        return [u * factor for u in segments]

    def gate(self) -> list[Tensor]:
        """1 − s as of the last step (the utilities have not changed since), per weight (shaped
        like the parameters) or per hidden unit (one vector per hidden layer); ones before the
        first step."""
        self._compute_keep()
        keep = self._keep.clone()
        return self._shaped(keep) if self.config.level == "weight" else list(
            keep.split(self._sizes))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # copies: the buffers change in place at every step
        for name in ("utility",):
            if isinstance(state[name], Tensor):
                state[name] = state[name].clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        buffers = {"utility": self.utility}
        super().load_state_dict(state)
        for name, buffer in buffers.items():
            loaded = getattr(self, name)
            if buffer is None or loaded is None:
                continue
            if loaded.shape != buffer.shape:
                raise ConfigError(f"upgd: the saved {name} has {loaded.numel()} entries, this "
                                  f"model needs {buffer.numel()}; was it saved for another model?")
            buffer.copy_(loaded)
            setattr(self, name, buffer)  # keep the views into the buffers
