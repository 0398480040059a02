"""The training loop, written once: mini-batches sliced from tensors already on the device.

    batch  = method.prepare_batch(batch)                       # replay: add memory samples
    output = model(batch.x)                                    # all output units
    loss   = CE(readout(output, task ids), y) + method.penalty(batch, output)  # batch.loss
    loss.backward(); optimizer.step()                          # step hooks: method.transform_grads
                                                               # before, method.after_step after
Hooks a method does not implement are not called at all, so `naive` runs the plain loop.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..core.batch import Batch
from ..core.method import Method
from ..core.readout import Readout
from .divergence import LossWatch
from .progress import Progress


@dataclasses.dataclass
class TaskTrainingStats:
    steps: int
    seconds: float
    epoch_losses: list[float]  # mean training loss of each epoch (or each pass over the data)
    first_loss: float | None = None  # the loss of the task's first step, before any update


Prepare = Callable[[Batch], Batch]
Penalty = Callable[[Batch, Tensor], "Tensor | None"]


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
                  readout: Readout | None, prepare: Prepare | None, penalty: Penalty | None
                  ) -> tuple[Tensor, Tensor]:
    """One update (see the module docstring); `prepare` / `penalty` are the method's hooks, or
    None when it does not use them. Returns the model's output and the loss."""
    if prepare is not None:
        batch = prepare(batch)
    output = model(batch.x)
    loss = batch.loss(output if readout is None else readout.select(output, batch.task_ids))
    if penalty is not None:
        term = penalty(batch, output)
        if term is not None:
            loss = loss + term
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return output, loss


def count_steps(size: int, batch_size: int, epochs: int | None, iterations: int | None) -> int:
    """Mini-batches in a task: `iterations`, or `epochs` passes of ceil(size / batch_size)."""
    if (epochs is None) == (iterations is None):
        raise ValueError("give exactly one of epochs and iterations")
    return iterations if iterations is not None else epochs * math.ceil(size / batch_size)


def train_task(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: Method,
    readout: Readout,
    data: Batch,
    *,
    batch_size: int,
    epochs: int | None = None,
    iterations: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> TaskTrainingStats:
    """Train on one task's data for `epochs` passes or `iterations` mini-batches.

    Each pass visits the samples in a new random order drawn from `generator` (on the CPU, so a
    seed gives the same order on any device). A non-finite loss raises `DivergedError`
    (`lifelong.training.divergence`: the exact step on the CPU, a window of steps on a GPU).
    """
    size = len(data)
    total_steps = count_steps(size, batch_size, epochs, iterations)
    prepare = method.prepare_batch if method.uses("prepare_batch") else None
    penalty = method.penalty if method.uses("penalty") else None
    x, y, task_ids = data.x, data.y, data.task_ids
    device = x.device

    model.train()
    started = time.perf_counter()
    epoch_losses: list[float] = []
    loss_sum = torch.zeros((), device=device)
    watch = LossWatch(device, total_steps)
    order = torch.empty(0, dtype=torch.long)
    position, epoch, steps_in_epoch = size, 0, 0
    first_loss: float | None = None
    for step in range(total_steps):
        if position >= size:  # a new pass over the data
            if steps_in_epoch:
                epoch_losses.append(_checked_mean(watch, step, loss_sum, steps_in_epoch))
                loss_sum.zero_()
            order = torch.randperm(size, generator=generator).to(device)
            position, epoch, steps_in_epoch = 0, epoch + 1, 0
        index = order[position:position + batch_size]
        position += batch_size
        batch = Batch(x[index], y[index], None if task_ids is None else task_ids[index])
        _, loss = training_step(model, optimizer, batch, readout, prepare, penalty)
        loss_sum += loss.detach()
        steps_in_epoch += 1
        watch.step(step + 1, loss, loss_sum)
        if step == 0:
            first_loss = float(loss.detach())  # one read per task: the reference of a rise
        if progress is not None:
            progress.update(step + 1, epoch, epochs, loss_sum, steps_in_epoch)
    if steps_in_epoch:
        epoch_losses.append(_checked_mean(watch, total_steps, loss_sum, steps_in_epoch))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return TaskTrainingStats(total_steps, time.perf_counter() - started, epoch_losses,
                             first_loss)


def _checked_mean(watch: LossWatch, step: int, loss_sum: Tensor, steps: int) -> float:
    """A pass's mean loss, read once, and checked finite up to `step`."""
    total = float(loss_sum)
    watch.check(step, total)
    return total / steps
