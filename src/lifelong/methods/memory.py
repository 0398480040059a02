"""Episodic memories of past samples: a reservoir (task-free) and a class-balanced buffer.

Both store whole `Batch` rows (inputs, labels, task ids and any extras such as DER's logits) on
the device of the data they receive and sample uniformly without replacement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from ..core.batch import Batch, BatchLike, whole
from ..core.config import Config, option
from ..core.method import Method
from ..errors import ConfigError


class Memory:
    """Common storage and sampling."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator
        self.data: Batch | None = None  # the stored rows (for the reservoir: preallocated)

    @property
    def size(self) -> int:
        return 0 if self.data is None else len(self.data)

    def __len__(self) -> int:
        return self.size

    def sample(self, count: int) -> Batch | None:
        """`count` stored rows drawn uniformly without replacement (all of them if fewer)."""
        size = self.size
        if size == 0:
            return None
        device = self.data.x.device
        index = torch.randperm(size, generator=self._generator(device), device=device)[:count]
        return self.data.select(index)

    def stored(self) -> Batch | None:
        """The stored rows, owning their data (a reservoir not yet full is a slice of its
        preallocated rows, which a checkpoint would otherwise write whole)."""
        return None if self.data is None else self.data.select(slice(0, self.size)).compact()

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.generator is not None and self.generator.device != device:
            raise ValueError(f"memory generator is on {self.generator.device}, data on {device}")
        return self.generator

    def state_dict(self) -> dict[str, Any]:
        return {"data": _state(self.stored())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data = Batch.from_state(state["data"])


class ReservoirMemory(Memory):
    """Reservoir sampling (Vitter 1985): after n stream samples, each is stored with probability
    capacity/n, without knowing task boundaries. The update is vectorised over the batch and
    equals the sequential algorithm (a later sample that draws the same slot wins)."""

    def __init__(self, capacity: int, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        self.capacity = capacity
        self.seen = 0
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def add(self, batch: Batch) -> None:
        new = batch.select(slice(0, batch.num_new))
        count = len(new)
        if count == 0:
            return
        device = new.x.device
        if self.data is None:
            self.data = _allocate(new, self.capacity)
        positions = torch.arange(self.seen, self.seen + count, device=device)
        draws = torch.rand(count, generator=self._generator(device), device=device,
                           dtype=torch.float64)
        slots = torch.where(positions < self.capacity, positions,
                            (draws * (positions + 1).to(torch.float64)).long())
        accepted = slots < self.capacity
        rows = torch.arange(count, device=device)[accepted]
        slots = slots[accepted]
        winner = torch.full((self.capacity,), -1, dtype=torch.long, device=device)
        winner.scatter_reduce_(0, slots, rows, reduce="amax")
        targets = (winner >= 0).nonzero().squeeze(1)
        sources = winner[targets]
        _write(self.data, targets, new.select(sources))
        self.seen += count
        self._size = min(self.seen, self.capacity)

    def state_dict(self) -> dict[str, Any]:
        return {"data": _state(self.stored()), "seen": self.seen,
                "capacity": self.capacity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stored = Batch.from_state(state["data"])
        self.capacity, self.seen = state["capacity"], state["seen"]
        self._size = 0 if stored is None else len(stored)
        self.data = None
        if stored is not None:
            self.data = _allocate(stored, self.capacity)
            _write(self.data, torch.arange(self._size, device=stored.x.device), stored)


class ClassBalancedMemory(Memory):
    """At each task boundary, store a random subset of every class of the task.

    With `per_class` set, each class keeps up to that many samples (van de Ven et al. 2022 use 100
    per class on Split MNIST). Otherwise `capacity` is shared equally by all classes seen so far,
    and classes seen earlier give up samples as new ones arrive. A class is a (task, label) pair
    when task ids are known, so domain-incremental tasks that reuse labels are balanced too.
    """

    def __init__(self, capacity: int, per_class: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        self.capacity = capacity
        self.per_class = per_class
        self.groups: list[Batch] = []  # one Batch per class, rows in random order

    def add_task(self, data: Batch) -> None:
        device = data.x.device
        keys = data.y if data.task_ids is None else data.task_ids * (int(data.y.max()) + 1) + data.y
        order = torch.randperm(len(data), generator=self._generator(device), device=device)
        shuffled_keys = keys[order]
        new = [order[shuffled_keys == key] for key in torch.unique(shuffled_keys)]
        quota = self.per_class if self.per_class is not None else max(
            1, self.capacity // (len(self.groups) + len(new)))
        # each group owns exactly its rows: a slice would keep (and a checkpoint would write)
        # the whole class it was cut from
        self.groups = [group.select(slice(0, quota)).compact() for group in self.groups]
        self.groups += [data.select(rows[:quota]) for rows in new]
        self.data = _concat(self.groups)

    def state_dict(self) -> dict[str, Any]:
        return {"groups": [g.state() for g in self.groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups = [Batch.from_state(g) for g in state["groups"]]
        self.data = _concat(self.groups) if self.groups else None


def _state(batch: Batch | None) -> dict[str, Any] | None:
    return None if batch is None else batch.state()


def _allocate(like: Batch, rows: int) -> Batch:
    empty = lambda t: None if t is None else t.new_zeros((rows, *t.shape[1:]))  # noqa: E731
    return Batch(empty(like.x), empty(like.y), empty(like.task_ids),
                 {k: empty(v) for k, v in like.extras.items()})


def _write(storage: Batch, slots: Tensor, rows: Batch) -> None:
    storage.x[slots] = rows.x
    storage.y[slots] = rows.y
    if storage.task_ids is not None:
        storage.task_ids[slots] = rows.task_ids
    for key, value in storage.extras.items():
        value[slots] = rows.extras[key]


def _concat(groups: list[Batch]) -> Batch:
    first = groups[0]
    cat = lambda name: torch.cat([getattr(g, name) for g in groups])  # noqa: E731
    return Batch(cat("x"), cat("y"), None if first.task_ids is None else cat("task_ids"),
                 {k: torch.cat([g.extras[k] for g in groups]) for k in first.extras})


@dataclasses.dataclass
class MemoryConfig(Config):
    """The options of every method that keeps a memory."""

    memory_size: int = option(500, "samples kept in memory (shared by all classes)", low=1)
    memory_per_class: int | None = option(
        None, "class-balanced only: keep this many per class instead (no total limit)", low=1)
    buffer: Literal["reservoir", "class-balanced"] = option(
        "reservoir", "reservoir: task-free, updated every batch; class-balanced: filled with "
        "random samples of each class at the end of each task")

    def validate(self) -> None:
        if self.memory_per_class is not None and self.buffer != "class-balanced":
            raise ConfigError(f"{self._owner}.memory_per_class needs buffer=class-balanced")

    def build(self, generator: torch.Generator | None) -> ReservoirMemory | ClassBalancedMemory:
        if self.buffer == "reservoir":
            return ReservoirMemory(self.memory_size, generator)
        return ClassBalancedMemory(self.memory_size, self.memory_per_class, generator)


class MemoryMethod(Method):
    """Base of the methods that keep a memory configured by a `MemoryConfig`: a reservoir fed
    with every new batch (`observe`), or a class-balanced memory filled at each task's end."""

    stores_data = True
    needs_task_boundaries = False  # with the default buffer, a reservoir
    state_attrs: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(self, config: MemoryConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.memory = self.config.build(None)

    def capabilities(self) -> dict[str, Any]:
        # a class-balanced memory is filled with each task's data at its end
        return {"needs_task_boundaries": self.config.buffer == "class-balanced"}

    def on_attach(self) -> None:
        self.memory.generator = self.generator

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the saved config may keep another kind of memory than the one built for this config
        self.memory = self.Config.from_dict(state["config"]).build(self.generator)
        super().load_state_dict(state)

    def observe(self, batch: Batch) -> None:
        """Task-free memories learn from the stream: call with each new batch."""
        if self.config.buffer == "reservoir":
            self.memory.add(batch)

    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        if self.config.buffer == "class-balanced":
            self.memory.add_task(whole(data))
