"""One task's lifecycle, written once: every loop that trains task after task goes through it.

    begin_task(method, t, data, readout)   # the readout activates task t's output units,
                                           # method.before_task(t), then the data to train on:
                                           # method.training_data(t, data) (joint: all so far)
    ... training: lifelong's train_task, online steps, a Trainer's or a user's own loop ...
    end_task(method, t, data)              # method.after_task(t, the task's own data)

`fit_task` runs begin → `train_task` → end for lifelong's task loop (`lifelong run`, the tests).
Loops that lifelong does not own use the two phases on their own: the Hugging Face callback calls
`begin_task` at `on_train_begin` and `end_task` at `on_train_end`, a data-parallel loop begins a
task before it wraps the model, the streaming loop at each announced boundary. So the order of
the hooks, and what data each one gets, is the same wherever a method runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..core.batch import Batch, BatchLike
from ..core.method import Method
from ..core.readout import Readout
from ..errors import ConfigError, DivergedError
from .divergence import check_weights
from .loop import TaskTrainingStats, count_steps, train_task
from .progress import Progress


def begin_task(method: Method, task: int, data: Batch | Callable[[], Batch] | None = None, *,
               readout: Readout | None = None, fixed_data: bool = False,
               remedy: str = "") -> Batch | None:
    """Start task `task`: `readout.begin_task`, `method.before_task`, and, when `data` (the
    task's training set, or this replica's shard of it; or a function that gives it, called
    after `before_task`, e.g. one that reads a Trainer's dataloader) is given, the data to train
    on as `method.training_data` chooses it; None without `data`.

    `fixed_data=True`: the caller trains on `data` as it is (a Trainer's dataset, a stream), so
    a method that chooses other data is refused rather than silently ignored (`remedy`: what to
    do instead, added to the message)."""
    if readout is not None:
        readout.begin_task(task)
    method.before_task(task)
    if data is None:
        return None
    if callable(data):
        data = data()
    chosen = method.training_data(task, data)
    if fixed_data and chosen is not data:
        raise ConfigError(f"{method.name} trains on other data than the task's, and this loop "
                          f"trains on the task's data as it is given{remedy and '; ' + remedy}")
    return chosen


def end_task(method: Method, task: int, data: Batch | Iterable[BatchLike]) -> None:
    """End task `task`: the method consolidates with the task's own data (not what
    `training_data` added: joint's earlier tasks, already consolidated)."""
    method.after_task(task, data)


def check_trains_on_given_data(method: Method, loop: str, remedy: str) -> None:
    """Refuse, before training, a method that trains on stored samples of earlier tasks as well
    (joint) where `loop` (a Trainer, a stream) trains on the task's data as it is given."""
    if method.uses("training_data") and method.stores_data:
        raise ConfigError(f"{method.name} trains on the stored samples of earlier tasks as well, "
                          f"which {loop} cannot do; {remedy}")


def fit_task(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: Method,
    readout: Readout,
    task: int,
    data: Batch,
    *,
    batch_size: int,
    epochs: int | None = None,
    iterations: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
) -> TaskTrainingStats:
    """Train task `task` on `data` from begin to end (see the module docstring) with lifelong's
    loop, `epochs` passes or `iterations` mini-batches drawn in the order of `generator`.
    A non-finite loss, or non-finite weights at the end of training, raise `DivergedError`
    before `end_task`."""
    train_data = begin_task(method, task, data, readout=readout)
    if progress is not None:
        progress.start_task(task, count_steps(len(train_data), batch_size, epochs, iterations))
    try:
        stats = train_task(model, optimizer, method, readout, train_data,
                           batch_size=batch_size, epochs=epochs, iterations=iterations,
                           generator=generator, progress=progress)
        check_weights(model, task=task)  # before the method consolidates them
    except DivergedError as error:
        error.task = task
        raise
    end_task(method, task, data)
    return stats
