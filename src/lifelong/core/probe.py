"""Passes that measure the model instead of training it: one `probe()` context for all of them.

Methods run forward passes of their own besides the training step's: a Fisher or importance
estimate, a reference gradient, a teacher's targets, the diagnostics. Two things must hold for
every such pass, and `probe(model, training)` gives both:

- methods that watch *training* passes (continual backprop's features, MIGU's magnitudes) ignore
  it: `is_probing()` is true inside the block, in this thread;
- the normalisation statistics that evaluation uses (BatchNorm running means and variances) do
  not move, or the evaluation of old tasks silently changes.

The mode of the pass follows the method's definition:

- `training=False` (default): the model *as evaluated* (a Fisher, MAS's importance, a teacher's
  targets, the diagnostics): eval mode, running statistics used and not updated;
- `training=True`: the model *as trained* (SPG's importance, taken with dropout on as in the
  paper; DAS's gate gradients): train mode, each batch normalised with its own statistics, and the
  running statistics put back afterwards;
- `training=None`: the modes of the training step as they are (A-GEM's and GEM's reference
  gradients, which must be comparable with the step's gradient), statistics put back afterwards.

Either way every submodule gets its own mode back afterwards (`training_mode`: a BatchNorm a user
keeps in eval mode inside a training model stays so). Passes that are part of the training
objective (DER's logit matching on memory samples) are training passes, not probes: they update
the statistics as replayed samples in the batch would.

Per method (the reasons are in each method's docstring): EWC, online EWC, MAS, NCL (Fisher and
importance), LwF's teacher, L1's and lottery's evaluation copies and the diagnostics probe in eval
mode; SPG and DAS in train mode; A-GEM and GEM in the step's modes; DER/DER++ update the
statistics; SI, L2, replay, CBP, UPGD, Shrink & Perturb make no pass of their own. CBP resets the
BatchNorm entries of the units it replaces; lottery keeps each task's running statistics for its
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
def _probing() -> Iterator[None]:
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def is_probing() -> bool:
    """Whether a probe pass (`probe()`) is running in this thread."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def probe(model: nn.Module, training: bool | None = False, *,
          stats: RunningStats | None = None) -> Iterator[None]:
    """Run the block as a pass that measures `model`, not one that trains it (module docstring):
    `is_probing()` is true inside; `training` False: eval mode, True: train mode, None: the modes
    as they are; the running statistics are put back afterwards when the pass may move them, and
    every submodule gets its own mode back. `stats`: the model's `RunningStats`, found once, for a
    probe made at every step."""
    with _probing():
        if training is False:
            with training_mode(model, False):
                yield
            return
        stats = stats if stats is not None else RunningStats(model)
        if training is None:
            with stats.frozen():
                yield
            return
        with training_mode(model, True), stats.frozen():
            yield


__all__ = ["RunningStats", "is_probing", "load_running_stats", "probe", "running_stat_buffers",
           "running_stat_modules", "save_running_stats", "training_mode"]
