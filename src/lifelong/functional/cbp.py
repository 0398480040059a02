"""Continual backprop's pieces as functions over a small state (Dohare, Hernandez-Garcia, Lan,
Rahman, Mahmood and Sutton, "Loss of plasticity in deep continual learning", Nature 632, 2024).

For every hidden layer (`lifelong.models.introspection.hidden_units`) and unit j, with h the
unit's features in the step's training forward pass (the next layer's input; a conv unit's over
batch and positions) and w_out everything that reads unit j (the next layer's column j, a conv
next layer's weights of input channel j, or the columns of channel j after a flatten):

- age_j += 1; running mean f_j ← η f_j + (1 − η) mean(h_j);
- instantaneous utility, "contribution": mean|h_j| · Σ|w_out|, or "adaptable" (the adaptable
  contribution): mean|h_j − f̂_j| · Σ|w_out| / Σ|w_in|, w_in the unit's incoming weights;
- u_j ← η u_j + (1 − η) · instantaneous; û_j = u_j / (1 − η^age_j), f̂_j = f_j / (1 − η^age_j);
- units with age > m are eligible; a per-layer counter c += ρ · n_eligible; when c ≥ 1 the
  floor(c) eligible units with the lowest û are replaced and c keeps the fraction.

Replacing unit j: the next layer's bias absorbs its mean contribution, b_next += Σ w_out · f̂_j (so
the output is unchanged in expectation; the authors' code reads the mean after zeroing it and adds
nothing); its incoming weights are drawn again from the layer's initial distribution
(`init_bound`), its incoming bias, outgoing weights, utility, age and mean become 0, the
optimizer state of those rows and columns (every state tensor shaped like the parameter: momenta,
Adam's moments, AMSGrad's maximum) is zeroed, and a BatchNorm/LayerNorm entry of the unit is
reset (weight 1, bias 0, running mean 0, running variance 1).

Weight magnitudes are sums over w_out and w_in (the reference code takes means: a constant factor
per layer, so the same units are replaced). Ages live on the CPU as birth steps, so deciding how
many units to replace never waits for an accelerator; the only device read is the choice of the
lowest-utility units when a replacement happens. Data parallelism: `update_statistics_` averages
the batch means and activity terms over the replicas (one collective; two for the adaptable
utility, whose |h − f̂| needs the averaged mean first), so every replica replaces the same units.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import torch
from torch import Tensor, nn

from ..integrations.distributed import all_reduce_mean_, is_distributed
from ..models.introspection import HiddenLayer

_EPS = 1e-9  # slack for the fractional counter: ten steps of 0.1 replace a unit


def init_bound(weight: Tensor, init: str) -> float:
    """Half-width of the uniform distribution a layer's weights are (re-)drawn from: PyTorch's
    default U(±1/√fan_in) ("default"), kaiming_uniform_ for ReLU, or xavier_uniform_."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    if init == "default":  # kaiming_uniform_(a=√5), Linear's and Conv2d's default
        return 1.0 / math.sqrt(fan_in)
    if init == "kaiming":  # gain √2 · √(3 / fan_in)
        return math.sqrt(6.0 / fan_in)
    return math.sqrt(6.0 / (fan_in + fan_out))


@dataclasses.dataclass
class CBPState:
    """u and f of every hidden unit (flat, layer after layer), the step count, and per layer the
    units' birth steps (CPU int64; age = step − birth), the fractional counter c and the units
    replaced so far. `immature` (per layer: (birth step, units) not yet eligible, oldest first),
    `eligible` and `age` (ages on the device, kept for the adaptable utility only) follow from
    the births: `set_ages` recomputes them."""

    utility: Tensor
    mean: Tensor
    born: list[Tensor]
    counters: list[float]
    replaced: list[int]
    step: int = 0
    immature: list[collections.deque] = dataclasses.field(default_factory=list)
    eligible: list[int] = dataclasses.field(default_factory=list)
    age: Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.born]

    def offset(self, i: int) -> int:
        return sum(len(b) for b in self.born[:i])


def new_state(sizes: list[int], like: Tensor) -> CBPState:
    """Everything zero: utilities, means and ages."""
    return CBPState(like.new_zeros(sum(sizes)), like.new_zeros(sum(sizes)),
                    [torch.zeros(n, dtype=torch.long) for n in sizes], [0.0] * len(sizes),
                    [0] * len(sizes))


def ages(state: CBPState) -> list[Tensor]:
    """Per layer, each unit's age in steps (CPU int64)."""
    return [state.step - born for born in state.born]


def set_ages(state: CBPState, values: list[Tensor], maturity: int, on_device: bool) -> None:
    """Set the units' ages and recount what follows from them (`on_device`: keep the device
    copy the adaptable utility reads)."""
    state.born, state.immature, state.eligible = [], [], []
    for age in values:
        age = torch.as_tensor(age).detach().to("cpu", torch.long)
        born = state.step - age
        state.born.append(born)
        births, counts = torch.unique(born[age <= maturity], sorted=True, return_counts=True)
        state.immature.append(collections.deque(zip(births.tolist(), counts.tolist())))
        state.eligible.append(int((age > maturity).sum()))
    state.age = torch.zeros(0)
    if on_device and state.born:
        state.age = torch.cat(ages(state)).to(state.utility.device, state.utility.dtype)


# --- the statistics ----------------------------------------------------------------------------
class Workspace:
    """Preallocated buffers for `update_statistics_` (allocating them at every step costs more
    than the arithmetic at batch size 1, and on wide layers faults pages in at every step)."""

    def __init__(self, layers: list[HiddenLayer], like: Tensor, adaptable: bool) -> None:
        self.layers = layers
        self.sizes = [hidden.units for hidden in layers]
        total = sum(self.sizes)
        # the batch means of the features and the activity term side by side, so that a
        # data-parallel run averages both in one collective
        self.stats = like.new_zeros(2 * total)
        self.batch, self.act = self.stats.split(total)
        self.out = like.new_zeros(total)  # Σ|w_out| (÷ Σ|w_in| when adaptable)
        self.incoming = like.new_zeros(total)  # Σ|w_in|
        self.corrected = like.new_zeros(total)  # −f̂
        self.out_weights = [hidden.next.weight.detach() for hidden in layers]
        self.in_weights = [hidden.layer.weight.detach() for hidden in layers]
        self.out_abs = [torch.empty_like(w) for w in self.out_weights]
        self.in_abs = [torch.empty_like(w) for w in self.in_weights] if adaptable else []

    def split(self, flat: Tensor) -> list[Tensor]:
        return list(flat.split(self.sizes))


def update_statistics_(state: CBPState, work: Workspace, features: list[Tensor], eta: float,
                       contribution: bool) -> None:
    """One step of the running mean f and utility u of every hidden unit, from `features` (the
    next layers' inputs of the step's training pass) and the current weights; ages are the
    caller's (`state.step` already counts this step)."""
    layers = work.layers
    distributed = is_distributed()
    # batch 1 without positions: the batch means are the features themselves (data-parallel runs
    # take the general path, which keeps each replica's features apart from the mean)
    single = not distributed and all(h.numel() == hidden.units
                                     for h, hidden in zip(features, layers))
    views = None
    if single:
        torch.cat([h.detach().reshape(-1) for h in features], out=work.batch)
    else:
        dtype = work.batch.dtype  # (features may be half precision under autocast)
        views = [h.detach().to(dtype).reshape(-1, hidden.units, 1) if hidden.units_last
                 else h.detach().to(dtype).reshape(h.shape[0], hidden.units, -1)
                 for h, hidden in zip(features, layers)]
        for v, batch in zip(views, work.split(work.batch)):
            torch.mean(v, (0, 2), out=batch)
    if contribution:  # mean |h|: from this replica's features, before any averaging
        if single:
            torch.abs(work.batch, out=work.act)
        else:
            for v, act in zip(views, work.split(work.act)):
                torch.linalg.vector_norm(v, 1, (0, 2), out=act)
                act.div_(v.numel() // v.shape[1])
    if distributed:  # the global batch's statistics: [batch means, activity], one collective
        all_reduce_mean_([work.stats if contribution else work.batch])
    state.mean.lerp_(work.batch, 1.0 - eta)
    for w, magnitude, hidden, total in zip(work.out_weights, work.out_abs, layers,
                                           work.split(work.out)):  # Σ_k |w_out[k, j]|
        torch.abs(w, out=magnitude)
        if hidden.units_last:
            torch.sum(magnitude, 0, out=total)
        else:
            torch.sum(magnitude.view(w.shape[0], hidden.units, -1), (0, 2), out=total)
    if not contribution:
        state.age.add_(1.0)
        # −f̂ = f / (η^age − 1), with η^age − 1 = expm1(age · ln η)
        log_decay = math.log(eta) if eta else -math.inf
        negative = torch.mul(state.age, log_decay, out=work.corrected).expm1_()
        torch.div(state.mean, negative, out=negative)
        if single:
            torch.add(work.batch, negative, out=work.act).abs_()
        else:  # mean |h − f̂| over this replica's features, with the global f̂
            for v, f, act in zip(views, work.split(negative), work.split(work.act)):
                torch.linalg.vector_norm(v + f.view(1, -1, 1), 1, (0, 2), out=act)
                act.div_(v.numel() // v.shape[1])
            if distributed:
                all_reduce_mean_([work.act])
        for w, magnitude, hidden, total in zip(work.in_weights, work.in_abs, layers,
                                               work.split(work.incoming)):
            torch.sum(torch.abs(w, out=magnitude).view(hidden.units, -1), 1, out=total)
        work.out.div_(work.incoming.clamp_min_(torch.finfo(work.incoming.dtype).tiny))
    state.utility.mul_(eta).addcmul_(work.act, work.out, value=1.0 - eta)


# --- which units, how many ---------------------------------------------------------------------
def owed(state: CBPState, i: int, rate: float, maturity: int) -> int:
    """Units of layer i that become eligible at this step join the count; add ρ · n_eligible to
    the layer's counter and return the whole units owed (the counter keeps the fraction)."""
    immature = state.immature[i]
    while immature and state.step - immature[0][0] > maturity:
        state.eligible[i] += immature.popleft()[1]
    if not state.eligible[i]:
        return 0
    total = state.counters[i] + rate * state.eligible[i]
    count = min(int(total + _EPS), state.eligible[i])
    state.counters[i] = max(total - count, 0.0)
    return count


def bias_corrections(state: CBPState, i: int, eta: float, index: Tensor | None = None) -> Tensor:
    """1 − η^age of layer i's units (or of units `index`), on the CPU in float64."""
    age = state.step - (state.born[i] if index is None else state.born[i][index])
    return 1.0 - torch.full(age.shape, eta, dtype=torch.float64) ** age


def lowest_utility(state: CBPState, i: int, count: int, eta: float, maturity: int) -> Tensor:
    """The `count` eligible units of layer i with the lowest bias-corrected utility (CPU
    indices; ties go to the lower index)."""
    eligible = torch.nonzero(state.step - state.born[i] > maturity).squeeze(1)
    start = state.offset(i)
    utility = state.utility[start:start + len(state.born[i])]
    corrected = utility[eligible.to(utility.device)] / bias_corrections(
        state, i, eta, eligible).to(utility.device, utility.dtype)
    order = torch.sort(corrected, stable=True).indices[:count]
    return eligible[order.cpu()]


# --- replacing units ---------------------------------------------------------------------------
def _zero_state(optimizer: torch.optim.Optimizer | None, param: Tensor | None, index: Tensor,
                units: int | None = None) -> None:
    """Zero the optimizer state of `param`'s rows `index` (or, with `units`, its columns: the
    entries reading those units)."""
    if param is None or optimizer is None:
        return
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            if units is None:
                value[index] = 0
            else:
                value.view(value.shape[0], units, -1)[:, index] = 0


@torch.no_grad()
def reinitialise_(state: CBPState, i: int, hidden: HiddenLayer, index_cpu: Tensor, eta: float,
                  bound: float, generator: torch.Generator,
                  optimizer: torch.optim.Optimizer | None) -> None:
    """Replace units `index_cpu` of hidden layer i (see the module docstring), in this order:
    the next layer's bias correction (it reads f̂ before it is zeroed), fresh incoming weights
    U(±bound) from `generator`, zero incoming bias and outgoing weights, the units' statistics,
    the optimizer state of the touched rows and columns, the norm entries."""
    units, layer, following = hidden.units, hidden.layer, hidden.next
    device = layer.weight.device
    index = index_cpu.to(device)
    flat = index + state.offset(i)
    outgoing = following.weight.view(following.weight.shape[0], units, -1)
    if following.bias is not None:  # b += Σ w_out · f̂
        mean = state.mean[flat] / bias_corrections(state, i, eta, index_cpu).to(
            device, state.mean.dtype)
        following.bias.add_(outgoing[:, index].sum(2) @ mean)
    fresh = torch.empty((len(index),) + tuple(layer.weight.shape[1:]), device=device,
                        dtype=layer.weight.dtype)
    layer.weight[index] = fresh.uniform_(-bound, bound, generator=generator)
    if layer.bias is not None:
        layer.bias[index] = 0
    outgoing[:, index] = 0
    state.utility[flat] = 0
    state.mean[flat] = 0
    if len(state.age):
        state.age[flat] = 0
    state.born[i][index_cpu] = state.step
    state.immature[i].append((state.step, len(index_cpu)))
    state.eligible[i] -= len(index_cpu)
    state.replaced[i] += len(index_cpu)
    _zero_state(optimizer, layer.weight, index)  # (the next layer's bias keeps its state)
    _zero_state(optimizer, layer.bias, index)
    _zero_state(optimizer, following.weight, index, units=units)
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
