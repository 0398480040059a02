"""The batch that flows through a training step, and helpers to iterate over a task's data."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

IGNORE = -100  # target of token positions that carry no loss (prompt, padding), as in PyTorch/HF


@dataclasses.dataclass
class Batch:
    """Inputs, labels and (optionally) the task id of every sample.

    `stream_size` is the number of leading samples that came from the data stream; methods that
    append memory samples (replay) keep it, so later hooks know which rows are new. `extras` holds
    per-sample tensors a method stores alongside (e.g. DER's logits); every tensor's first
    dimension is the batch. `extras["loss_weight"]`, when a method sets it, weighs each sample's
    loss (the weights sum to 1); `loss()` honours it.
    """

    x: Tensor
    y: Tensor
    task_ids: Tensor | None = None
    extras: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    stream_size: int | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_new(self) -> int:
        return len(self) if self.stream_size is None else self.stream_size

    def to(self, device: torch.device | str) -> Batch:
        if self.x.device == torch.device(device):
            return self
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.x), move(self.y), move(self.task_ids),
                     {k: move(v) for k, v in self.extras.items()}, self.stream_size)

    def select(self, index: Tensor | slice) -> Batch:
        """Rows `index` of every tensor."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Batch(pick(self.x), pick(self.y), pick(self.task_ids),
                     {k: pick(v) for k, v in self.extras.items()})

    def compact(self) -> Batch:
        """This batch with tensors that own exactly their data: what a method keeps beyond a step
        (a memory) must not be a view into a larger tensor (a slice of the whole class or task),
        which would keep that tensor alive and be written whole by `torch.save`. Tensors that
        already own theirs are not copied."""
        own = lambda t: None if t is None else owning(t)  # noqa: E731
        return Batch(own(self.x), own(self.y), own(self.task_ids),
                     {k: own(v) for k, v in self.extras.items()}, self.stream_size)

    @property
    def is_regression(self) -> bool:
        """Floating-point targets: a regression batch (mean squared error), else class labels."""
        return self.y.is_floating_point()

    def loss(self, logits: Tensor) -> Tensor:
        """Cross-entropy of `logits` against integer labels `y`, or the squared error against
        floating-point targets (summed over outputs, as Dohare et al.'s regression problems do;
        with one output it is the usual MSE): the mean over samples, or the
        `loss_weight`-weighted sum."""
        weight = self.extras.get("loss_weight")
        if logits.dim() == 3:
            return token_loss(logits, self.y, weight)
        if self.is_regression:
            target = self.y.view_as(logits)
            if weight is None:  # one fused kernel: the mean over all entries, times the outputs
                outputs = logits.shape[1] if logits.dim() > 1 else 1
                error = F.mse_loss(logits, target)
                return error if outputs == 1 else error * outputs
            per_sample = (logits - target).square().flatten(1).sum(1)
            return (per_sample * weight).sum()
        if weight is None:
            return F.cross_entropy(logits, self.y)
        return (F.cross_entropy(logits, self.y, reduction="none") * weight).sum()

    def with_task_ids(self, task: int) -> Batch:
        if self.task_ids is not None:
            return self
        ids = torch.full((len(self),), task, dtype=torch.long, device=self.x.device)
        return dataclasses.replace(self, task_ids=ids)

    def state(self) -> dict[str, Any]:
        """Tensors only, for state dicts that load with `torch.load(weights_only=True)`."""
        return {"x": self.x, "y": self.y, "task_ids": self.task_ids, "extras": dict(self.extras)}

    @staticmethod
    def from_state(state: dict[str, Any] | None) -> Batch | None:
        if state is None:
            return None
        return Batch(state["x"], state["y"], state["task_ids"], dict(state["extras"]))

    @staticmethod
    def cat(first: Batch, second: Batch) -> Batch:
        """Rows of `first` then `second`; keeps `first`'s stream size."""
        if (first.task_ids is None) != (second.task_ids is None):
            raise ValueError("cannot concatenate a batch with task ids and one without")
        task_ids = None if first.task_ids is None else torch.cat([first.task_ids, second.task_ids])
        shared = first.extras.keys() & second.extras.keys()
        return Batch(
            torch.cat([first.x, second.x]),
            torch.cat([first.y, second.y]),
            task_ids,
            {k: torch.cat([first.extras[k], second.extras[k]]) for k in shared},
            first.num_new,
        )


def owning(tensor: Tensor) -> Tensor:
    """`tensor`, or a contiguous copy of it when it is a view of a larger (or strided) storage."""
    exact = tensor.numel() * tensor.element_size()
    if tensor.is_contiguous() and tensor.untyped_storage().nbytes() == exact:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def token_loss(logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy of token logits [batch, length, vocabulary] against targets [batch, length]
    (IGNORE where there is none): the mean over target tokens (Hugging Face's convention), or with
    per-sample `weight`, the weighted sum of each sample's mean over its target tokens."""
    if weight is None:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    return (per_sample_token_loss(logits, targets) * weight).sum()


def per_sample_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Each sample's mean cross-entropy over its target tokens, [batch]."""
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                             reduction="none").view(targets.shape)
    counts = (targets != IGNORE).sum(1).clamp(min=1)
    return losses.sum(1) / counts


BatchLike = Any  # a Batch, an (x, y) or (x, y, task_ids) tuple, or a dict with those keys


def as_batch(item: BatchLike) -> Batch:
    """Turn what a user's loader yields into a `Batch`."""
    if isinstance(item, Batch):
        return item
    if isinstance(item, dict):
        return Batch(item["x"], item["y"], item.get("task_ids"))
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        return Batch(*item)
    raise ConfigError(
        f"cannot use a {type(item).__name__} as a batch; pass a lifelong Batch, an (x, y) or "
        "(x, y, task_ids) tuple, or a dict with keys x, y[, task_ids]"
    )


def iter_batches(
    data: Batch | Iterable[BatchLike],
    batch_size: int,
    *,
    device: torch.device | str | None = None,
    limit: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[Batch]:
    """Mini-batches of a whole-task `Batch` (sliced in order, or a random subset of `limit`
    samples drawn with `generator`), or the batches of any iterable such as a DataLoader."""
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and isinstance(data[0], Tensor):
        data = as_batch(data)
    if isinstance(data, Batch):
        if limit is not None and limit < len(data):
            data = data.select(torch.randperm(len(data), generator=generator)[:limit].to(
                data.x.device))
        for start in range(0, len(data), batch_size):
            batch = data.select(slice(start, start + batch_size))
            yield batch if device is None else batch.to(device)
        return
    seen = 0
    for item in data:
        batch = as_batch(item)
        if limit is not None and seen + len(batch) > limit:
            batch = batch.select(slice(0, limit - seen))
        seen += len(batch)
        yield batch if device is None else batch.to(device)
        if limit is not None and seen >= limit:
            return


def whole(data: Batch | Iterable[BatchLike]) -> Batch:
    """A task's data as one Batch: a Batch as is, an (x, y[, t]) tuple, or a loader's batches
    concatenated (for methods that choose among all of a task's samples)."""
    if isinstance(data, Batch):
        return data
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and isinstance(data[0], Tensor):
        return as_batch(data)
    parts = [as_batch(item) for item in data]
    if not parts:
        raise ConfigError("the task's data is empty")
    result = parts[0]
    for part in parts[1:]:
        result = Batch.cat(result, part)
    return result
