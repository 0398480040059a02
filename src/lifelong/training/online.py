"""The online training loop, beside `train_task`: each sample is scored by the current model,
then learned from.

    for each mini-batch of the stream (batch size 1 by default):
        batch  = method.prepare_batch(batch)          # only if the method uses it
        output = model(batch.x)
        score the stream's rows of `output`           # online accuracy / squared error
        loss   = batch.loss(output) + method.penalty(batch, output)
        loss.backward(); optimizer.step()             # + the method's step hooks

Task boundaries are announced to the method only when `boundaries=True`, through the task
lifecycle (`lifelong.training.lifecycle`: before_task and training_data with the task's segment
at its start, after_task with the segment at its end); by default the stream is task-free. The
online score is the output of the very forward pass that the update uses, so it costs one argmax
per step; it is gathered in tensors and read once per bin, so a step never waits on the device.
A non-finite loss (each step's on the CPU, each bin's on a GPU) or non-finite weights (checked at
each bin's end) raise `DivergedError` (`lifelong.training.divergence`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..core.batch import Batch
from ..core.method import Method
from ..scenarios.streams import Stream
from .divergence import LossWatch, check_weights
from .lifecycle import begin_task, end_task
from .loop import training_step
from .progress import Progress


@dataclasses.dataclass
class StreamBin:
    """The online metric over samples [start, end) of the stream."""

    index: int
    start: int
    end: int
    task: int  # the task of the bin's last sample
    value: float  # online accuracy (classification) or mean squared error (regression)
    loss: float  # mean training loss (penalties included)
    seconds: float


@dataclasses.dataclass
class StreamStats:
    bins: list[StreamBin]
    task_values: list[float]  # the online metric of each task
    samples: int
    steps: int
    seconds: float


class _Accumulator:
    """Online scores of the open bin, kept as tensors until they are read (no device sync)."""

    def __init__(self, regression: bool) -> None:
        self.regression = regression
        self.scores: list[Tensor] = []  # per step: predicted classes, or mean squared errors
        self.targets: list[Tensor] = []
        self.sizes: list[int] = []
        self.losses: list[Tensor] = []

    def add(self, output: Tensor, y: Tensor, loss: Tensor, loss_is_error: bool) -> None:
        """`loss_is_error`: the loss is exactly the batch's mean squared error (no penalty, no
        replayed rows), so the regression score reuses it instead of recomputing."""
        detached = loss.detach()
        if self.regression:
            self.scores.append(detached if loss_is_error else
                               (output.detach() - y.view_as(output)).square().sum(1).mean())
            self.sizes.append(len(y))
        else:
            self.scores.append(output.detach().argmax(1))
            self.targets.append(y)
        self.losses.append(detached)

    def values(self) -> tuple[Tensor, int, float]:
        """(sum of scores: hits or squared errors, number of samples, mean loss); then empties."""
        if not self.scores:
            return torch.zeros(()), 0, float("nan")
        if self.regression:
            sizes = torch.tensor(self.sizes, dtype=self.scores[0].dtype)
            total = (torch.stack(self.scores).cpu() * sizes).sum()
            count = sum(self.sizes)
        else:
            hits = torch.cat(self.scores).eq(torch.cat(self.targets))
            total, count = hits.sum().cpu().double(), len(hits)
        loss = float(torch.stack(self.losses).mean())
        self.scores, self.targets, self.sizes, self.losses = [], [], [], []
        return total, count, loss


def stream_schedule(stream: Stream, batch_size: int, max_samples: int | None = None
                    ) -> tuple[int, int]:
    """(tasks, steps) that `train_stream` runs: each task's segment is cut into batches of its
    own, and `max_samples` ends the stream early."""
    total = min(stream.total_samples, max_samples or stream.total_samples)
    full, rest = divmod(total, stream.samples_per_task)
    steps = full * -(-stream.samples_per_task // batch_size) + -(-rest // batch_size)
    return full + (rest > 0), steps


def train_stream(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: Method,
    stream: Stream,
    *,
    batch_size: int = 1,
    bin_size: int | None = None,
    max_samples: int | None = None,
    boundaries: bool = False,
    device: torch.device | str = "cpu",
    on_bin: Callable[[StreamBin], None] | None = None,
    diagnose_every: int | None = None,
    on_diagnose: Callable[[int, int], None] | None = None,
    on_task_end: Callable[[int, float], None] | None = None,
    progress: Progress | None = None,
) -> StreamStats:
    """Train online on `stream`; see the module docstring.

    `bin_size` (samples, default one task) groups the online metric; `on_diagnose(task,
    samples_seen)` runs every `diagnose_every` samples (default: at each bin's end);
    `max_samples` stops the stream early.
    """
    device = torch.device(device)
    bin_size = bin_size or stream.samples_per_task
    diagnose_every = diagnose_every or bin_size
    total = min(stream.total_samples, max_samples or stream.total_samples)
    prepare = method.prepare_batch if method.uses("prepare_batch") else None
    penalty = method.penalty if method.uses("penalty") else None

    bins: list[StreamBin] = []
    task_values: list[float] = []
    accumulator = _Accumulator(stream.regression)
    bin_total, bin_count = 0.0, 0  # flushed scores of the open bin
    bin_losses: list[float] = []
    seen, steps, bin_start, next_bin, next_diagnosis = 0, 0, 0, bin_size, diagnose_every
    bin_steps = 0  # steps at the end of the last bin (weights known finite)
    started = bin_clock = time.perf_counter()
    loss_is_error = prepare is None and penalty is None
    watch = LossWatch(device, -(-total // batch_size))

    def flush(task_score: list[float]) -> None:
        nonlocal bin_total, bin_count
        score_sum, count, mean_loss = accumulator.values()
        if count:
            watch.check(steps, mean_loss)  # off the CPU, the loss is only read here
            task_score[0] += float(score_sum)
            task_score[1] += count
            bin_total += float(score_sum)
            bin_count += count
            bin_losses.append(mean_loss)

    model.train()
    for task in range(stream.num_tasks):
        if seen >= total:
            break
        segment = stream.segment(task).select(slice(0, total - seen)).to(device)
        if boundaries:
            begin_task(method, task, segment, fixed_data=True)
        if progress is not None:
            progress.start_task(task, -(-len(segment) // batch_size))
        task_score = [0.0, 0]  # sum of scores, samples
        watch.task = task
        for i, (x, y) in enumerate(zip(segment.x.split(batch_size), segment.y.split(batch_size))):
            output, loss = training_step(model, optimizer, Batch(x, y), None, prepare, penalty)
            accumulator.add(output[:len(x)], y, loss, loss_is_error)
            seen += len(x)
            steps += 1
            watch.step(steps, loss)
            if progress is not None and steps % 256 == 0:
                progress.update(i + 1, 0, None, loss.detach(), 1)
            if seen >= next_bin or seen >= total:
                flush(task_score)
                check_weights(model, task=task, step=steps, first_step=bin_steps + 1,
                              total_steps=watch.total_steps)
                bin_steps = steps
                now = time.perf_counter()
                result = StreamBin(len(bins), bin_start, seen, task, bin_total / bin_count,
                                   sum(bin_losses) / len(bin_losses), now - bin_clock)
                bins.append(result)
                if on_bin is not None:
                    on_bin(result)
                bin_total, bin_count, bin_losses = 0.0, 0, []
                bin_start, next_bin, bin_clock = seen, next_bin + bin_size, now
            if on_diagnose is not None and (seen >= next_diagnosis or seen >= total):
                on_diagnose(task, seen)
                next_diagnosis += diagnose_every
        flush(task_score)  # the task may end inside a bin: the bin keeps these scores
        task_values.append(task_score[0] / task_score[1])
        if on_task_end is not None:
            on_task_end(task, task_values[-1])
        if progress is not None:
            metric = "error" if stream.regression else "accuracy"
            progress.end_task(f"online {metric} {task_values[-1]:.4f}")
        if boundaries:
            end_task(method, task, segment)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return StreamStats(bins, task_values, seen, steps, time.perf_counter() - started)
