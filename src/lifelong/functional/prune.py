"""Global magnitude pruning and lottery tickets for any PyTorch model and training loop.

Iterative magnitude pruning (IMP, Frankle & Carbin 2019, "The lottery ticket hypothesis: finding
sparse, trainable neural networks"): train, remove the `fraction` (20%) of the remaining weights
with the smallest |w|, ranked globally across layers, then reset the surviving weights to their
initial values θ₀ and train again; repeat. Only the weights of `nn.Linear` and `nn.ConvNd`
layers are pruned, never biases or normalisation parameters, and the mask is re-applied after
every optimizer step so that momentum, Adam's moments or weight decay cannot revive a pruned
weight. Frankle et al. 2020 ("Linear mode connectivity and the lottery ticket hypothesis") rewind
to the weights after k steps of the first training instead of θ₀, which finds tickets in larger
networks: `rewind_step=k`.

The pieces, usable one by one:

- `prunable_parameters(model)`: the weights IMP prunes;
- `global_magnitude_masks(weights, fraction, masks, eligible)`: one global pruning round;
- `apply_masks_`, `sparsity`, `keep_pruned(optimizer, weights, masks)` (a step hook);
- `iterative_magnitude_pruning(model, train, rounds=...)`: the whole loop around your own
  training function.

With your own loop::

    from lifelong.functional.prune import iterative_magnitude_pruning

    def train(model, round, on_step):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # fresh per round
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            on_step()  # re-applies the mask (or: optimizer.register_step_post_hook(on_step))
        return accuracy(model)  # anything; kept in the history

    result = iterative_magnitude_pruning(model, train, rounds=5)  # 1 - 0.8**5 = 67% sparse
    for record in result.history:
        print(record.round, record.sparsity, record.result)
    # `model` now holds the trained ticket; result.masks are its masks

A mask is a bool tensor shaped like its weight: True = kept, False = pruned.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PruningHandle", "PruningResult", "PruningRound", "apply_masks_",
           "global_magnitude_masks", "iterative_magnitude_pruning", "keep_pruned",
           "prunable_parameters", "sparsity"]

_PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


def prunable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weights IMP prunes: `weight` of every `nn.Linear` and `nn.ConvNd` (incl. transposed
    convolutions), in module order, each once even when shared.

    Biases, normalisation layers and embeddings are left out, as in Frankle & Carbin (2019):
    biases and norm parameters are few and set each unit's operating point; an embedding row is
    one token's whole representation, so magnitude says little about its importance. Pass your
    own list to the functions below to prune something else.
    """
    found: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (isinstance(module, _PRUNABLE) and isinstance(weight, nn.Parameter)
                and not isinstance(weight, nn.parameter.UninitializedParameter)
                and id(weight) not in seen):
            seen.add(id(weight))
            found.append((f"{name}.weight" if name else "weight", weight))
    return found


def _check_fraction(fraction: float) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not (
            0 < fraction < 1):
        raise ValueError(f"fraction must be a number in (0, 1), the share of the remaining "
                         f"weights to prune; got {fraction!r}")


def _bool_masks(kind: str, masks: Sequence[Tensor] | None,
                weights: Sequence[Tensor]) -> list[Tensor] | None:
    if masks is None:
        return None
    masks = list(masks)
    if len(masks) != len(weights):
        raise ValueError(f"{len(masks)} {kind} for {len(weights)} weights")
    for i, (mask, weight) in enumerate(zip(masks, weights)):
        if mask.dtype != torch.bool or mask.shape != weight.shape:
            raise ValueError(f"{kind}[{i}] must be a bool tensor shaped like its weight "
                             f"{tuple(weight.shape)}; got {mask.dtype} {tuple(mask.shape)}")
    return masks


@torch.no_grad()
def global_magnitude_masks(
    weights: Sequence[Tensor],
    fraction: float,
    masks: Sequence[Tensor] | None = None,
    eligible: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """One round of global magnitude pruning (Frankle & Carbin 2019): new masks.

    Among the entries that are kept (`masks`, default all) and `eligible` (default all), exactly
    `round(fraction × their number)` (halves round up) with the smallest |w| are pruned, ranked
    across all `weights` together: one global threshold, not one per layer. Ties are broken by
    position (a stable sort over the weights flattened and concatenated in order: earlier
    tensors and earlier entries go first), so the result is deterministic. Entries already pruned
    stay pruned; entries not eligible are never pruned (a weight owned by an earlier task, say).

    The ranking runs on the first weight's device. Returns one new bool mask per weight (on that
    weight's device); the inputs are not changed.
    """
    _check_fraction(fraction)
    weights = list(weights)
    kept = _bool_masks("masks", masks, weights)
    allowed = _bool_masks("eligible", eligible, weights)
    if not weights:
        return []
    device = weights[0].device
    scores, positions, sizes = [], [], []
    offset = 0
    for i, weight in enumerate(weights):
        candidate = None if kept is None else kept[i].to(device)
        if allowed is not None:
            other = allowed[i].to(device)
            candidate = other if candidate is None else candidate & other
        flat = weight.detach().reshape(-1).to(device)
        if candidate is None:
            index = torch.arange(flat.numel(), device=device)
        else:
            index = candidate.reshape(-1).nonzero().squeeze(1)
        scores.append(flat[index].abs())
        positions.append(index + offset)
        offset += flat.numel()
        sizes.append(flat.numel())
    score = torch.cat(scores)
    count = math.floor(fraction * score.numel() + 0.5)
    if kept is None:
        new = torch.ones(offset, dtype=torch.bool, device=device)
    else:
        new = torch.cat([m.reshape(-1).to(device) for m in kept])
    if count:
        order = torch.sort(score, stable=True).indices[:count]
        new[torch.cat(positions)[order]] = False
    return [chunk.reshape(w.shape).to(w.device).clone()
            for chunk, w in zip(new.split(sizes), weights)]


@torch.no_grad()
def apply_masks_(weights: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """Set the pruned entries (mask False) of each weight to zero, in place."""
    for weight, mask in zip(weights, masks, strict=True):
        weight.masked_fill_(~mask.to(weight.device), 0)


def sparsity(masks: Sequence[Tensor]) -> float:
    """The fraction of entries pruned (mask False) over all masks; 0.0 for none."""
    total = sum(m.numel() for m in masks)
    if not total:
        return 0.0
    kept = sum(int(m.count_nonzero()) for m in masks)
    return (total - kept) / total


class PruningHandle:
    """What `keep_pruned` returns: `remove()` unregisters its optimizer hooks."""

    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _keep_factors(weights: list[Tensor], masks: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """(weight, mask as 0/1 in the weight's dtype) for each weight with a pruned entry."""
    return [(w, m.to(device=w.device, dtype=w.dtype)) for w, m in zip(weights, masks)
            if not bool(m.all())]


def keep_pruned(optimizer: torch.optim.Optimizer, weights: Sequence[Tensor],
                masks: Sequence[Tensor]) -> PruningHandle:
    """Keep pruned weights at zero while `optimizer` trains: zero them now, zero their gradient
    before every `optimizer.step()` (a step pre-hook) and the weights themselves after it (a
    post-hook), so neither momentum, Adam's moments nor weight decay can revive them.

    The masks are copied now (later changes to `masks` are not seen), as 0/1 tensors in each
    weight's dtype: a multiplication zeroes the pruned entries, exactly for finite values and
    faster than `masked_fill_` on the CPU; no memory is allocated per step. Returns a handle
    whose `remove()` unregisters both hooks.
    """
    weights = list(weights)
    pairs = _keep_factors(weights, _bool_masks("masks", masks, weights))

    @torch.no_grad()
    def zero_gradients(opt: Any, args: Any, kwargs: Any) -> None:
        for weight, keep in pairs:
            if weight.grad is not None:
                weight.grad.mul_(keep)

    @torch.no_grad()
    def zero_weights(opt: Any = None, args: Any = None, kwargs: Any = None) -> None:
        for weight, keep in pairs:
            weight.mul_(keep)

    zero_weights()
    return PruningHandle([optimizer.register_step_pre_hook(zero_gradients),
                          optimizer.register_step_post_hook(zero_weights)])


@dataclasses.dataclass
class PruningRound:
    """One training of `iterative_magnitude_pruning`."""

    round: int  # 0: the dense network
    sparsity: float  # fraction of the prunable weights pruned while this round trained
    steps: int  # optimizer steps taken (calls of `on_step`)
    result: Any  # what `train` returned (an accuracy, a loss, a dict, None)


@dataclasses.dataclass
class PruningResult:
    """The ticket found by `iterative_magnitude_pruning`: its masks and each round's record."""

    names: list[str]  # of the pruned weights, as `prunable_parameters` names them
    masks: list[Tensor]  # one per weight, True = kept
    history: list[PruningRound]

    @property
    def sparsity(self) -> float:
        """The final fraction of prunable weights pruned."""
        return sparsity(self.masks)


# train(model, round, on_step) -> anything; on_step(*_) is called after each optimizer step
Train = Callable[[nn.Module, int, Callable[..., None]], Any]


def _snapshot(tensors: list[Tensor]) -> list[Tensor]:
    return [t.detach().clone() for t in tensors]


class _OnStep:
    """Called after each optimizer step of a round: re-applies the mask, counts the step and
    takes the rewind snapshot after `snapshot_at` steps (0: never)."""

    def __init__(self, params: list[Tensor], masks: list[Tensor], state: list[Tensor],
                 snapshot_at: int) -> None:
        self.pairs = _keep_factors(params, masks)
        self.state = state
        self.snapshot_at = snapshot_at
        self.steps = 0
        self.snapshot: list[Tensor] | None = None

    @torch.no_grad()
    def __call__(self, *_: Any) -> None:
        self.steps += 1
        for weight, keep in self.pairs:
            weight.mul_(keep)
        if self.steps == self.snapshot_at:
            self.snapshot = _snapshot(self.state)


def iterative_magnitude_pruning(
    model: nn.Module,
    train: Train,
    *,
    rounds: int,
    fraction: float = 0.2,
    rewind_step: int = 0,
    weights: Sequence[tuple[str, Tensor]] | None = None,
    train_ticket: bool = True,
) -> PruningResult:
    """Find a lottery ticket by iterative magnitude pruning (Frankle & Carbin 2019).

    `train(model, round, on_step)` is your own training: it trains `model` in place, calls
    `on_step()` after every `optimizer.step()` (or registers it: it accepts and ignores the
    arguments of an optimizer step post-hook) and returns anything worth keeping, e.g. the test
    accuracy. Create the optimizer inside `train`, so that each round starts afresh as in the
    paper. Round 0 trains the dense network; after each round, `fraction` of the remaining
    `weights` ((name, weight) pairs; default: `prunable_parameters(model)`) are pruned by global
    magnitude (`global_magnitude_masks`), and every parameter and buffer (biases and BatchNorm
    statistics included) is rewound to the rewind point, with the pruned weights at zero:

    - `rewind_step=0`: θ₀, the model as passed in (Frankle & Carbin 2019);
    - `rewind_step=k`: the model after k optimizer steps of round 0 (Frankle et al. 2020).

    With `rounds=r`, `train` runs r + 1 times and the ticket keeps about 0.8^r of the prunable
    weights (fraction 0.2). `train_ticket=False` skips the last training: `model` is then the
    ticket at its rewind point. The mask is applied at the start of every round, by `on_step`
    and at the end of every round. Returns the masks and one `PruningRound` per training.
    """
    _check_fraction(fraction)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or rewind_step < 0:
        raise ValueError(f"rewind_step must be an integer >= 0, got {rewind_step!r}")
    named = list(weights) if weights is not None else prunable_parameters(model)
    if not named:
        raise ValueError("nothing to prune: the model has no nn.Linear or nn.ConvNd weight "
                         "(pass `weights=` to choose)")
    names = [name for name, _ in named]
    params = [w for _, w in named]
    state = list(model.parameters()) + list(model.buffers())
    rewind_point = _snapshot(state) if rewind_step == 0 else None
    masks = [torch.ones_like(w, dtype=torch.bool) for w in params]
    history: list[PruningRound] = []
    total = rounds + 1 if train_ticket else rounds
    for round_ in range(total):
        on_step = _OnStep(params, masks, state, rewind_step if round_ == 0 else 0)
        result = train(model, round_, on_step)
        apply_masks_(params, masks)
        steps = on_step.steps
        if on_step.snapshot is not None:
            rewind_point = on_step.snapshot
        if steps == 0:
            warnings.warn(f"train() never called on_step() in round {round_}: the mask was "
                          "only applied before and after the round", stacklevel=2)
        if rewind_point is None:
            raise ValueError(f"rewind_step={rewind_step}, but round 0 made only {steps} "
                             "optimizer steps (calls of on_step)")
        history.append(PruningRound(round_, sparsity(masks), steps, result))
        if round_ == rounds:
            break
        masks = global_magnitude_masks(params, fraction, masks)
        with torch.no_grad():
            for tensor, saved in zip(state, rewind_point):
                tensor.copy_(saved)
            apply_masks_(params, masks)
    return PruningResult(names, masks, history)
