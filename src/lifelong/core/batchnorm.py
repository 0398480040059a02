"""Normalisation statistics (BatchNorm running means and variances) around a method's own passes.

A model with BatchNorm keeps running statistics that every forward pass in training mode updates
and that evaluation uses. Methods run forward passes of their own besides the training step's:
a Fisher or importance estimate, a reference gradient, a teacher's targets. Such a pass must not
move the running statistics, or the evaluation of old tasks silently changes. The rule the
methods follow:

- where the method's definition uses the model *as evaluated* (a Fisher, MAS's importance, a
  teacher's targets, the diagnostics), the pass runs in eval mode: running statistics are used,
  and nothing is updated;
- where it uses the model *as trained* (A-GEM's and GEM's reference gradients, which must be
  comparable with the training step's gradient; SPG's importance, taken in train mode as in the
  paper), the pass runs in train mode, so it normalises with the batch's own statistics, inside
  `frozen_running_stats`, which puts the running statistics back afterwards;
- passes that are part of the training objective (DER's logit matching on memory samples) are
  training passes and update the statistics, as replayed samples in the batch would.

`frozen_running_stats` also marks the pass as auxiliary (`in_auxiliary_pass()`), so that a method
that watches training forward passes (continual backprop's feature statistics) can ignore it.
`training_mode(model, mode)` switches the mode for such a pass and then gives every submodule its
own mode back (a BatchNorm a user keeps in eval mode stays so).

Per method (the reasons are in each method's docstring): EWC, online EWC, MAS, NCL (Fisher and
importance), LwF's teacher, L1's and lottery's evaluation copies and the diagnostics run in eval
mode; A-GEM, GEM and SPG in train mode with the statistics restored; DER/DER++ update them; SI,
L2, replay, CBP, UPGD, Shrink & Perturb make no pass of their own. CBP resets the BatchNorm
entries of the units it replaces; lottery keeps each task's running statistics for its
evaluation.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

_state = threading.local()


def running_stat_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that keep running statistics (BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm
    with `track_running_stats=True`)."""
    return [m for m in model.modules()
            if isinstance(m, _NormBase) and m.track_running_stats and m.running_mean is not None]


def running_stat_buffers(model: nn.Module | list[nn.Module]) -> list[Tensor]:
    """running_mean, running_var and num_batches_tracked of every such module (of `model`, or
    of a list from `running_stat_modules`), in module order."""
    modules = model if isinstance(model, list) else running_stat_modules(model)
    buffers = []
    for module in modules:
        buffers += [b for b in (module.running_mean, module.running_var,
                                module.num_batches_tracked) if b is not None]
    return buffers


def save_running_stats(model: nn.Module) -> list[Tensor]:
    """Copies of `running_stat_buffers(model)`."""
    return [b.detach().clone() for b in running_stat_buffers(model)]


@torch.no_grad()
def load_running_stats(model: nn.Module, saved: list[Tensor]) -> None:
    """Copy `saved` (from `save_running_stats`) back into the model's buffers, in place."""
    buffers = running_stat_buffers(model)
    if len(buffers) != len(saved):
        raise ValueError(f"saved running statistics hold {len(saved)} tensors, the model has "
                         f"{len(buffers)}")
    for buffer, value in zip(buffers, saved):
        buffer.copy_(value)


class RunningStats:
    """The running-statistics buffers of one model, found once (for passes made at every step).

    `with stats.frozen(): ...` runs the block and then puts every buffer back as it was; a model
    without such buffers costs nothing.
    """

    def __init__(self, model: nn.Module) -> None:
        # the modules, not their buffers: `model.to(device)` replaces the buffer tensors
        self.modules = running_stat_modules(model)
        self._saved: list[Tensor] | None = None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        with _auxiliary():
            if not self.modules:
                yield
                return
            buffers = running_stat_buffers(self.modules)
            saved = self._saved
            if saved is None or [s.shape for s in saved] != [b.shape for b in buffers] or any(
                    s.device != b.device for s, b in zip(saved, buffers)):
                saved = [torch.empty_like(b) for b in buffers]
            self._saved = None  # a nested use of the same object allocates its own copies
            with torch.no_grad():
                for target, buffer in zip(saved, buffers):
                    target.copy_(buffer)
            try:
                yield
            finally:
                with torch.no_grad():
                    for buffer, value in zip(buffers, saved):
                        buffer.copy_(value)
                self._saved = saved


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Run the block, then restore the model's normalisation running statistics (and
    `num_batches_tracked`) to what they were; the pass is marked auxiliary meanwhile."""
    with RunningStats(model).frozen():
        yield


@contextlib.contextmanager
def training_mode(model: nn.Module, mode: bool) -> Iterator[None]:
    """Run the block with `model.train(mode)`, then give every submodule back its own previous
    mode (`model.train(was_training)` would also flip a BatchNorm a user keeps in eval mode
    inside a training model)."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(mode)
    try:
        yield
    finally:
        for module, was_training in modes:
            module.training = was_training


@contextlib.contextmanager
def _auxiliary() -> Iterator[None]:
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def in_auxiliary_pass() -> bool:
    """Whether a method's own pass (inside `frozen_running_stats`) is running in this thread."""
    return getattr(_state, "depth", 0) > 0


__all__ = ["RunningStats", "frozen_running_stats", "in_auxiliary_pass", "load_running_stats",
           "running_stat_buffers", "running_stat_modules", "save_running_stats", "training_mode"]
