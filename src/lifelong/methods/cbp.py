"""Continual backprop, CBP (Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood and Sutton, "Loss of
plasticity in deep continual learning", Nature 632, 2024).

Plain backprop slowly loses its ability to learn when the data keep changing: units die, weights
grow, the representation collapses. CBP keeps injecting a little of the initial randomness: after
every optimizer step it re-initialises a small fraction of the least useful hidden units.

For every hidden layer (a Linear/Conv2d layer whose output, after activation and norm, feeds the
next Linear/Conv2d layer; the last weight layer is the output and is never touched) and every unit
j (an output unit or an out channel), with h the unit's features in the latest *training* forward
pass (the next layer's input; a conv unit's over batch and positions) and w_out everything that
reads unit j (the next layer's column j, a conv next layer's kernels of input channel j, or the
columns of channel j after a flatten):

- age_j += 1; running mean f_j ← η f_j + (1 − η) mean(h_j);
- instantaneous utility "contribution": mean|h_j| · Σ|w_out|, or "adaptable" (the adaptable
  contribution): mean|h_j − f̂_j| · Σ|w_out| / Σ|w_in|, w_in the unit's incoming weights;
- u_j ← η u_j + (1 − η) · instantaneous; û_j = u_j / (1 − η^age_j), f̂_j = f_j / (1 − η^age_j);
- units with age > m are eligible; a per-layer counter c += ρ · n_eligible; when c ≥ 1 the
  floor(c) eligible units with the lowest û are replaced and c keeps the fraction.

Replacing unit j: the next layer's bias absorbs the unit's mean contribution, b_next += Σ w_out ·
f̂_j (so the network's output is unchanged in expectation); then its incoming weights are drawn
again from the layer's initial distribution (`init`), its incoming bias, outgoing weights,
utility, age and mean become 0, the optimizer state of those rows and columns (every state
tensor shaped like the parameter: SGD momentum, Adam/AdamW moments, AMSGrad's maximum, ...) is
zeroed (the next layer's bias keeps its own), and a BatchNorm1d/2d or LayerNorm entry of the unit
between the two layers is reset (weight 1, bias 0, running mean 0, running variance 1).

The features come from a forward pre-hook on each next layer that keeps a reference to its input
in training mode only (evaluation passes are ignored, and so are other methods' probe passes that
leave the norm statistics alone, such as A-GEM's reference gradient: see
`lifelong.core.probe`; of several training passes before a step, the last counts). A next
layer without bias gets no correction.

Differences from the authors' code (github.com/shibhansh/loss-of-plasticity):

- their bias correction reads the running mean after zeroing it, so it adds nothing; here the
  correction is applied first, so it is exact for a unit with constant activation;
- weight magnitudes are sums over w_out and w_in (the reference code takes means): a constant
  factor per layer, so the units a layer replaces are the same;
- a Conv2d next layer with zero padding sees a constant channel only partly at the borders, so
  there the bias correction (Σ of the kernel) is exact in the interior only; with a LayerNorm
  between the layers, the reset unit also changes the normalisation of the other units.

Ages live on the CPU, so deciding how many units to replace never waits for the accelerator; the
only device read is the choice of the lowest-utility units when a replacement happens.

At batch size 1 with Linear layers and float32 parameters on the CPU (streaming), the statistics
above run as one compiled C call (`lifelong/functional/kernels/cbp.c`, option `fused`) instead of
12-20 PyTorch operations; the tests check it against the PyTorch path unit by unit.

Data parallelism (DDP): each replica sees its own shard of the batch, so the features' batch
means and activity terms are averaged over the replicas at every step (one collective of two
numbers per hidden unit; two for the adaptable utility, whose |h − f̂| needs the averaged mean
first). Utilities, means and ages are then the same everywhere, so every replica replaces the
same units, and it draws the same fresh weights: the generator's state is broadcast from rank 0
when the method is attached.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..core.config import Config, option
from ..core.method import Evaluator, Method
from ..core.probe import is_probing
from ..core.registry import register_method
from ..errors import ConfigError
from ..functional import kernels
from ..functional.kernels import cbp as cbp_kernel
from ..functional.kernels.cbp import StatisticsKernel
from ..integrations.distributed import all_reduce_mean_, broadcast_generator_, is_distributed

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
_EPS = 1e-9  # slack for the fractional counter: ten steps of 0.1 replace a unit


@dataclasses.dataclass
class CBPConfig(Config):
    replacement_rate: float = option(1e-4, "fraction ρ of a layer's eligible units replaced per "
                                     "step (carried over steps)", low=0, high=1)
    decay_rate: float = option(0.99, "decay η of the running utility and mean activation, "
                               "in [0, 1)", low=0, high=1)
    maturity_threshold: int = option(100, "a unit is eligible for replacement when its age "
                                     "(steps since it was initialised) exceeds m", low=0)
    utility: Literal["contribution", "adaptable"] = option(
        "contribution", "contribution |h|·Σ|w_out| (Nature paper) or the adaptable contribution "
        "|h − mean h|·Σ|w_out| / Σ|w_in|")
    init: Literal["default", "kaiming", "xavier"] = option(
        "default", "distribution of re-drawn incoming weights: PyTorch's default for the layer "
        "(U(±1/√fan_in)), kaiming_uniform for ReLU, or xavier_uniform")
    fused: bool = option(True, "batch size 1, Linear layers, float32 on the CPU: update the "
                         "statistics in one compiled C call (lifelong.functional.kernels; same "
                         "numbers); false: PyTorch operations")

    def validate(self) -> None:
        if self.decay_rate >= 1:
            raise ConfigError(f"cbp.decay_rate: {self.decay_rate!r} is out of range; "
                              "accepted: >= 0 and < 1")


@dataclasses.dataclass(eq=False)
class HiddenLayer:
    """One hidden layer: the weight layer whose units CBP replaces and the layer reading them."""

    name: str
    layer: nn.Module  # Linear or Conv2d: the units' incoming weights
    next: nn.Module  # Linear or Conv2d: the units' outgoing weights
    norms: list[nn.Module]  # BatchNorm/LayerNorm between the two, one entry per unit
    units: int
    units_last: bool  # the next layer reads the units on the input's last axis (Linear)
    bound: float  # U(±bound) for re-drawn incoming weights


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}→{module.out_features})"
    if isinstance(module, nn.Conv2d):
        return f"Conv2d({module.in_channels}→{module.out_channels})"
    return type(module).__name__


def _units_in(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _units_out(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


CHAIN_HELP = ("cbp needs a plain chain of nn.Linear / nn.Conv2d layers (registered in the order "
              "they run, with only activations, dropout, pooling, flatten and BatchNorm1d/2d or "
              "LayerNorm over the units between them), each layer reading all units of the one "
              "before (no residual connections: models such as resnet18 are not supported)")


def init_bound(weight: Tensor, init: str) -> float:
    """Half-width of the uniform distribution a layer's weights are drawn from."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    if init == "default":  # kaiming_uniform_(a=√5): U(±1/√fan_in), Linear's and Conv2d's default
        return 1.0 / math.sqrt(fan_in)
    if init == "kaiming":  # kaiming_uniform_ for ReLU: gain √2 · √(3 / fan_in)
        return math.sqrt(6.0 / fan_in)
    return math.sqrt(6.0 / (fan_in + fan_out))  # xavier_uniform_


def hidden_layers(model: nn.Module, init: str = "default") -> list[HiddenLayer]:
    """The model's hidden layers, in order; `ConfigError` if the model is not a plain chain."""
    chain: list[tuple[str, nn.Module, list[nn.Module]]] = []  # weight layer, norms after it
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise ConfigError(f"cbp: {name} is a grouped Conv2d (groups={module.groups}); "
                                  f"{CHAIN_HELP}")
            if not module.weight.is_contiguous():
                raise ConfigError(f"cbp: the weight of {name} is not contiguous; call "
                                  ".contiguous() on it (cbp reads it through views)")
            chain.append((name, module, []))
        elif isinstance(module, NORM_LAYERS):
            if chain:  # a norm on the model's input is not a unit's
                chain[-1][2].append(module)
        elif any(True for _ in module.parameters(recurse=False)):
            raise ConfigError(f"cbp: {name or 'the model'} is a {type(module).__name__} with "
                              f"parameters, which cbp cannot follow; {CHAIN_HELP}")
    if len(chain) < 2:
        raise ConfigError(f"cbp: found {len(chain)} Linear/Conv2d layer(s); it needs at least a "
                          f"hidden layer and an output layer. {CHAIN_HELP}")
    layers = []
    for (name, layer, norms), (next_name, following, _) in zip(chain, chain[1:]):
        units = _units_out(layer)
        reads = _units_in(following)
        found = f"{name}: {_describe(layer)} then {next_name}: {_describe(following)}"
        if isinstance(layer, nn.Linear) and isinstance(following, nn.Conv2d):
            raise ConfigError(f"cbp: found {found}; a Conv2d after a Linear layer is not "
                              f"supported. {CHAIN_HELP}")
        flatten = isinstance(layer, nn.Conv2d) and isinstance(following, nn.Linear)
        if (reads % units != 0) if flatten else (reads != units):
            need = f"a multiple of {units} inputs (flattened channels)" if flatten else \
                f"{units} inputs"
            raise ConfigError(f"cbp: found {found}, whose {units} units do not feed {reads} "
                              f"inputs (expected {need}). {CHAIN_HELP}")
        for norm in norms:
            if isinstance(norm, nn.LayerNorm):
                if isinstance(layer, nn.Conv2d) or tuple(norm.normalized_shape) != (units,):
                    raise ConfigError(
                        f"cbp: a LayerNorm{tuple(norm.normalized_shape)} follows {name}: "
                        f"{_describe(layer)}; only a LayerNorm over the {units} units of a Linear "
                        "layer has one entry per unit")
            elif norm.num_features != units:
                raise ConfigError(f"cbp: a {type(norm).__name__}({norm.num_features}) follows "
                                  f"{name}: {_describe(layer)} with {units} units")
        layers.append(HiddenLayer(name, layer, following, norms, units,
                                  units_last=isinstance(following, nn.Linear) and not flatten,
                                  bound=init_bound(layer.weight, init)))
    return layers


def _zero_state(optimizer: torch.optim.Optimizer, param: Tensor | None, index: Tensor,
                units: int | None = None) -> None:
    """Zero the optimizer state of `param`'s rows `index` (or, with `units`, its columns: the
    entries reading those units)."""
    if param is None:
        return
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            if units is None:
                value[index] = 0
            else:
                value.view(value.shape[0], units, -1)[:, index] = 0


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
        self.counters: list[float] = []  # c: units owed for replacement, per layer
        self.replaced: list[int] = []  # units replaced so far, per layer
        # u and f of all hidden units in one flat tensor each (few kernels per step); the
        # `utility` and `mean_activation` properties give per-layer views
        self._sizes: list[int] = []
        self._offsets: list[int] = []
        self._utility = torch.zeros(0)
        self._mean = torch.zeros(0)
        self._age_dev = torch.zeros(0)  # ages on the device, for the adaptable utility only
        self._step = 0  # steps seen; a unit's age is _step − its birth
        self._born: list[Tensor] = []  # CPU int64, the step each unit was (re)initialised
        self._immature: list[collections.deque] = []  # (birth step, units) not yet eligible
        self._eligible: list[int] = []
        self._features: list[Tensor | None] = []  # input of each next layer, last training pass
        self._in_weights: list[Tensor] = []  # detached aliases of the layers' weights
        self._out_weights: list[Tensor] = []

    # --- set-up --------------------------------------------------------------------------------
    def attach(self, model: nn.Module, *args: Any, **kwargs: Any) -> CBP:
        hidden_layers(model)  # refuse a model cbp cannot follow before registering any hook
        return super().attach(model, *args, **kwargs)

    def on_attach(self) -> None:
        broadcast_generator_(self.generator)  # replicas re-draw the same weights
        self.layers = hidden_layers(self.model, self.config.init)
        sizes = [hidden.units for hidden in self.layers]
        weight = self.layers[0].layer.weight
        if sizes != self._sizes or len(self._utility) != sum(sizes):  # a new model
            self._sizes = sizes
            self._utility = weight.new_zeros(sum(sizes))
            self._mean = weight.new_zeros(sum(sizes))
            self.counters = [0.0] * len(sizes)
            self.replaced = [0] * len(sizes)
            self.ages = [torch.zeros(n, dtype=torch.long) for n in sizes]
        self._offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self._features = [None] * len(self.layers)
        self._in_weights = [hidden.layer.weight.detach() for hidden in self.layers]
        self._out_weights = [hidden.next.weight.detach() for hidden in self.layers]
        self._prepare()
        for i, hidden in enumerate(self.layers):
            self._handles.append(hidden.next.register_forward_pre_hook(self._recorder(i)))

    def _prepare(self) -> None:
        """Buffers and constants that follow from the model and the config."""
        cfg = self.config
        weight = self._in_weights[0]
        total = sum(self._sizes)
        for hidden in self.layers:
            hidden.bound = init_bound(hidden.layer.weight, cfg.init)
        self._utility = self._utility.to(weight.device, weight.dtype)
        self._mean = self._mean.to(weight.device, weight.dtype)
        self.ages = self.ages  # recounts the eligible units (the maturity threshold may differ)
        # this step's batch means of the features and activity term, side by side so that a
        # data-parallel run averages both in one collective
        self._stats = weight.new_zeros(2 * total)
        self._batch, self._act = self._stats.split(total)
        self._out = weight.new_zeros(total)  # Σ|w_out| (÷ Σ|w_in| when adaptable)
        self._out_split = self._split(self._out)
        self._in = weight.new_zeros(total)  # Σ|w_in|
        self._corrected = weight.new_zeros(total)  # −f̂, the bias-corrected mean
        self._log_decay = math.log(cfg.decay_rate) if cfg.decay_rate else -math.inf
        # preallocated |w| buffers: allocating them anew every step costs more than the math
        self._out_abs = [torch.empty_like(w) for w in self._out_weights]
        self._in_abs = [torch.empty_like(w) for w in self._in_weights] \
            if cfg.utility == "adaptable" else []
        self._kernel = self._statistics_kernel()

    def _statistics_kernel(self) -> StatisticsKernel | None:
        """The compiled statistics step, where it applies (see `CBPConfig.fused`)."""
        cfg = self.config
        in_weights = self._in_weights if cfg.utility == "adaptable" else None
        if not (cfg.fused and not is_distributed()
                and all(isinstance(layer.layer, nn.Linear) and layer.units_last
                        for layer in self.layers)
                and StatisticsKernel.applies(self._out_weights, in_weights)
                and self._utility.dtype == torch.float32):
            return None
        lib = cbp_kernel.library()
        if lib is None:
            kernels.warn_unavailable("cbp", "cbp")
            return None
        return StatisticsKernel(lib, self._out_weights, in_weights, cfg.decay_rate,
                                self._log_decay)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.model is not None:
            self._prepare()

    def on_detach(self) -> None:
        self._features = [None] * len(self.layers)

    def _recorder(self, i: int):
        features = self._features

        def record(module: nn.Module, args: tuple) -> None:
            if module.training and args and not is_probing():
                features[i] = args[0]  # a reference; detached when used
        return record

    # --- state: per-layer views of the flat tensors, ages on the CPU ---------------------------
    def _split(self, flat: Tensor) -> list[Tensor]:
        return list(flat.split(self._sizes)) if self._sizes else []

    def _join(self, values: list[Tensor], like: Tensor) -> Tensor:
        if [len(v) for v in values] != self._sizes:
            raise ValueError(f"cbp: state for layers of {[len(v) for v in values]} units, the "
                             f"model's hidden layers have {self._sizes}")
        return torch.cat([torch.as_tensor(v) for v in values]).to(like.device, like.dtype)

    @property
    def utility(self) -> list[Tensor]:
        """Per hidden layer, each unit's running utility u (not bias-corrected)."""
        return self._split(self._utility)

    @utility.setter
    def utility(self, values: list[Tensor]) -> None:
        self._utility = self._join(values, self._utility)

    @property
    def mean_activation(self) -> list[Tensor]:
        """Per hidden layer, each unit's running mean activation f (not bias-corrected)."""
        return self._split(self._mean)

    @mean_activation.setter
    def mean_activation(self, values: list[Tensor]) -> None:
        self._mean = self._join(values, self._mean)

    @property
    def ages(self) -> list[Tensor]:
        """Per hidden layer, each unit's age in steps (CPU int64)."""
        return [self._step - born for born in self._born]

    @ages.setter
    def ages(self, values: list[Tensor]) -> None:
        m = self.config.maturity_threshold
        self._born, self._immature, self._eligible = [], [], []
        for age in values:
            age = torch.as_tensor(age).detach().to("cpu", torch.long)
            born = self._step - age
            self._born.append(born)
            births, counts = torch.unique(born[age <= m], sorted=True, return_counts=True)
            self._immature.append(collections.deque(zip(births.tolist(), counts.tolist())))
            self._eligible.append(int((age > m).sum()))
        self._age_dev = torch.zeros(0)
        if self.config.utility == "adaptable" and self._born:
            self._age_dev = torch.cat(self.ages).to(self._utility.device, self._utility.dtype)

    # --- the step ------------------------------------------------------------------------------
    def after_step(self) -> None:
        features = self._features
        if not features or any(h is None for h in features):
            return  # no training forward pass seen yet
        layers = self.layers
        self._step += 1
        # Every input below is detached: nothing is recorded for autograd.
        distributed = is_distributed()
        # batch 1 and no positions: the batch means are the features themselves (data-parallel
        # runs take the general path, which keeps each replica's features apart from the mean)
        single = not distributed and all(h.numel() == layer.units
                                          for h, layer in zip(features, layers))
        if single and self._kernel is not None and self._kernel.usable(features):
            self._kernel.step(features, [self._age_dev, self._batch, self._act, self._out,
                                         self._in, self._corrected, self._mean, self._utility])
        else:
            self._update_statistics(features, single, distributed)
        self._replace_owed()

    def _update_statistics(self, features: list[Tensor], single: bool, distributed: bool) -> None:
        """This step's batch means, activity, outgoing (and incoming) weight magnitudes, and the
        running mean and utility, with PyTorch operations."""
        cfg = self.config
        eta = cfg.decay_rate
        layers = self.layers
        contribution = cfg.utility == "contribution"
        views = None
        if single:
            torch.cat([h.detach().reshape(-1) for h in features], out=self._batch)
        else:
            dtype = self._batch.dtype  # (features may be half precision under autocast)
            views = [h.detach().to(dtype).reshape(-1, layer.units, 1) if layer.units_last
                     else h.detach().to(dtype).reshape(h.shape[0], layer.units, -1)
                     for h, layer in zip(features, layers)]
            for v, batch in zip(views, self._split(self._batch)):
                torch.mean(v, (0, 2), out=batch)
        if contribution:  # mean |h|: from this replica's features, before any averaging
            if single:
                torch.abs(self._batch, out=self._act)
            else:
                for v, act in zip(views, self._split(self._act)):
                    torch.linalg.vector_norm(v, 1, (0, 2), out=act)
                    act.div_(v.numel() // v.shape[1])
        if distributed:  # the global batch's statistics: [batch means, activity], one collective
            all_reduce_mean_([self._stats if contribution else self._batch])
        self._mean.lerp_(self._batch, 1.0 - eta)
        for w, magnitude, layer, total in zip(self._out_weights, self._out_abs, layers,
                                              self._out_split):  # Σ_k |w_out[k, j]| per unit j
            torch.abs(w, out=magnitude)
            if layer.units_last:
                torch.sum(magnitude, 0, out=total)
            else:
                torch.sum(magnitude.view(w.shape[0], layer.units, -1), (0, 2), out=total)
        if not contribution:
            self._age_dev.add_(1.0)
            # −f̂ = f / (η^age − 1), with η^age − 1 = expm1(age · ln η)
            negative = torch.mul(self._age_dev, self._log_decay, out=self._corrected).expm1_()
            torch.div(self._mean, negative, out=negative)
            if single:
                torch.add(self._batch, negative, out=self._act).abs_()
            else:  # mean |h − f̂| over this replica's features, with the global f̂
                for v, f, act in zip(views, self._split(negative), self._split(self._act)):
                    torch.linalg.vector_norm(v + f.view(1, -1, 1), 1, (0, 2), out=act)
                    act.div_(v.numel() // v.shape[1])
                if distributed:
                    all_reduce_mean_([self._act])
            for w, magnitude, layer, total in zip(self._in_weights, self._in_abs, layers,
                                                  self._split(self._in)):
                torch.sum(torch.abs(w, out=magnitude).view(layer.units, -1), 1, out=total)
            self._out.div_(self._in.clamp_min_(torch.finfo(self._in.dtype).tiny))
        self._utility.mul_(eta).addcmul_(self._act, self._out, value=1.0 - eta)

    def _replace_owed(self) -> None:
        """Add ρ · eligible units to each layer's counter and replace the whole units owed."""
        cfg = self.config
        layers = self.layers
        m = cfg.maturity_threshold
        for i in range(len(layers)):
            immature = self._immature[i]
            while immature and self._step - immature[0][0] > m:
                self._eligible[i] += immature.popleft()[1]
            if not self._eligible[i]:
                continue
            owed = self.counters[i] + cfg.replacement_rate * self._eligible[i]
            count = min(int(owed + _EPS), self._eligible[i])
            self.counters[i] = max(owed - count, 0.0)
            if count:
                self._replace(i, self.lowest_utility(i, count))

    def bias_corrections(self, i: int, index: Tensor | None = None) -> Tensor:
        """1 − η^age of layer i's units (or of units `index`), on the CPU in float64."""
        age = self._step - (self._born[i] if index is None else self._born[i][index])
        return 1.0 - torch.full(age.shape, self.config.decay_rate, dtype=torch.float64) ** age

    def corrected_utility(self, i: int) -> Tensor:
        """Layer i's bias-corrected utility û = u / (1 − η^age) (inf where age is 0)."""
        return self.utility[i] / self.bias_corrections(i).to(self._utility.device,
                                                             self._utility.dtype)

    def lowest_utility(self, i: int, count: int) -> Tensor:
        """The `count` eligible units of layer i with the lowest bias-corrected utility (CPU
        indices; ties go to the lower index)."""
        eligible = torch.nonzero(self._step - self._born[i] > self.config.maturity_threshold)
        eligible = eligible.squeeze(1)
        utility = self.utility[i]
        corrected = utility[eligible.to(utility.device)] / self.bias_corrections(i, eligible).to(
            utility.device, utility.dtype)
        order = torch.sort(corrected, stable=True).indices[:count]
        return eligible[order.cpu()]

    @torch.no_grad()
    def _replace(self, i: int, index_cpu: Tensor) -> None:
        hidden = self.layers[i]
        units, layer, following = hidden.units, hidden.layer, hidden.next
        device = layer.weight.device
        index = index_cpu.to(device)
        flat = index + self._offsets[i]
        # 1. the next layer's bias takes over the unit's mean contribution: b += Σ w_out · f̂
        outgoing = following.weight.view(following.weight.shape[0], units, -1)
        if following.bias is not None:
            mean = self._mean[flat] / self.bias_corrections(i, index_cpu).to(device,
                                                                            self._mean.dtype)
            following.bias.add_(outgoing[:, index].sum(2) @ mean)
        # 2. fresh incoming weights, zero incoming bias and outgoing weights
        fresh = torch.empty((len(index),) + tuple(layer.weight.shape[1:]), device=device,
                            dtype=layer.weight.dtype)
        fresh.uniform_(-hidden.bound, hidden.bound, generator=self.generator)
        layer.weight[index] = fresh
        if layer.bias is not None:
            layer.bias[index] = 0
        outgoing[:, index] = 0
        # 3. the unit's statistics
        self._utility[flat] = 0
        self._mean[flat] = 0
        if len(self._age_dev):
            self._age_dev[flat] = 0
        self._born[i][index_cpu] = self._step
        self._immature[i].append((self._step, len(index_cpu)))
        self._eligible[i] -= len(index_cpu)
        # 4. optimizer state of the touched rows and columns (the next layer's bias keeps its)
        optimizer = self.optimizer
        _zero_state(optimizer, layer.weight, index)
        _zero_state(optimizer, layer.bias, index)
        _zero_state(optimizer, following.weight, index, units=units)
        # 5. norm entries of the unit
        for norm in hidden.norms:
            if getattr(norm, "weight", None) is not None:
                norm.weight[index] = 1
                _zero_state(optimizer, norm.weight, index)
            if getattr(norm, "bias", None) is not None:
                norm.bias[index] = 0
                _zero_state(optimizer, norm.bias, index)
            if getattr(norm, "running_mean", None) is not None:
                norm.running_mean[index] = 0
                norm.running_var[index] = 1
        self.replaced[i] += len(index_cpu)

    def report(self, task: int, evaluate: Evaluator) -> dict[str, float]:
        return {"replaced_units": float(sum(self.replaced))}
