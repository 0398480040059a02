"""Divergence checks: a non-finite training loss or non-finite weights stop a run.

`LossWatch` looks at the loss in a training loop. On the CPU it reads every step's loss (a float
already in memory, about a microsecond), so the error names the exact step. On a GPU, reading a
loss makes the host wait for the device, so it reads the running loss sum at most once a second
and wherever the loop reads it anyway (a pass's end, a bin's end) and the error names the window
of steps since the last good check. A non-finite value is absorbing in a sum (inf + x = inf,
NaN + x = NaN), so a finite sum proves every step in it finite.

`check_weights` looks at every parameter and floating-point buffer with one batched reduction
(the largest |value| of each tensor, one wait on the device) at the end of a task or a bin.
"""

from __future__ import annotations

import itertools
import math
import time

import torch
from torch import Tensor, nn

from ..errors import DivergedError

CHECK_INTERVAL = 1.0  # seconds between reads of the loss on a GPU


class LossWatch:
    """Raises `DivergedError("loss")` at the first non-finite training loss it sees."""

    def __init__(self, device: torch.device, total_steps: int | None = None, *,
                 task: int | None = None) -> None:
        self.exact = device.type == "cpu"  # reading a CPU loss never waits on a device
        self.total_steps, self.task = total_steps, task
        self.checked = 0  # steps known to have had finite losses
        self._next_read = time.perf_counter() + CHECK_INTERVAL

    def step(self, step: int, loss: Tensor, running: Tensor | None = None) -> None:
        """After step `step` (1-based) with loss `loss`; `running`: a sum of the losses since the
        last check (at least), read once a second off the CPU (None: only at `check`)."""
        if self.exact:
            if not math.isfinite(loss.item()):
                raise DivergedError("loss", task=self.task, step=step,
                                    total_steps=self.total_steps)
            return
        if running is not None:
            now = time.perf_counter()
            if now >= self._next_read:
                self._next_read = now + CHECK_INTERVAL
                self.check(step, float(running))

    def check(self, step: int, value: float) -> None:
        """`value`: a loss (a sum or a mean) over steps after the last check up to `step`."""
        if not math.isfinite(value):
            first = min(self.checked + 1, step)
            raise DivergedError("loss", task=self.task, step=step, first_step=first,
                                total_steps=self.total_steps)
        self.checked = step


def nonfinite_weights(model: nn.Module) -> str | None:
    """The name of the first parameter or floating-point buffer of `model` holding NaN or ±inf,
    or None when all are finite (one batched reduction and one read when they are)."""
    named = [(name, tensor.detach()) for name, tensor in
             itertools.chain(model.named_parameters(), model.named_buffers())
             if tensor.is_floating_point() and tensor.numel()]
    if not named:
        return None
    # the largest |value| per tensor: NaN and inf survive it, and it cannot overflow (a norm can)
    peaks = torch._foreach_norm([tensor for _, tensor in named], ord=math.inf)
    if bool(torch.stack([peak.float().to(peaks[0].device) for peak in peaks]).isfinite().all()):
        return None
    return next(name for (name, _), peak in zip(named, peaks) if not math.isfinite(float(peak)))


def check_weights(model: nn.Module, *, task: int | None = None, step: int | None = None,
                  first_step: int | None = None, total_steps: int | None = None) -> None:
    """Raise `DivergedError("weights of layer NAME")` when a weight of `model` is not finite."""
    name = nonfinite_weights(model)
    if name is not None:
        raise DivergedError(f"weights of layer {name}", task=task, step=step,
                            first_step=first_step, total_steps=total_steps)
