"""Experience replay (ER): every batch is the new batch plus an equal-sized batch from memory.

The memory is a reservoir (task-free: updated with every new batch) or class-balanced (filled at
the end of each task); see `lifelong.memory`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from ..core.batch import Batch, BatchLike
from ..core.config import option
from ..core.method import Method
from ..core.registry import register_method
from ..memory import MemoryConfig


@dataclasses.dataclass
class ReplayConfig(MemoryConfig):
    replay_batch_size: int | None = option(
        None, "samples replayed per step (None: as many as the new batch)", low=1)


@register_method
class Replay(Method):
    name = "replay"
    description = "experience replay: mix stored samples of past tasks into every batch"
    Config = ReplayConfig
    stores_data = True
    state_attrs = ("memory",)

    def __init__(self, config: ReplayConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.memory = self.config.build(None)

    @property
    def needs_task_boundaries(self) -> bool:  # type: ignore[override]
        return self.config.buffer == "class-balanced"

    def on_attach(self) -> None:
        self.memory.generator = self.generator

    def prepare_batch(self, batch: Batch) -> Batch:
        count = self.config.replay_batch_size or batch.num_new
        replayed = self.memory.sample(count)
        if self.config.buffer == "reservoir":
            self.memory.add(batch)
        return batch if replayed is None else Batch.cat(batch, replayed)

    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        if self.config.buffer == "class-balanced":
            self.memory.add_task(_whole(data))


def _whole(data: Batch | Iterable[BatchLike]) -> Batch:
    """A task's data as one Batch (the class-balanced memory picks from all of it)."""
    from ..core.batch import as_batch

    if isinstance(data, Batch):
        return data
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and hasattr(data[0], "shape"):
        return as_batch(data)
    batches = [as_batch(item) for item in data]
    whole = batches[0]
    for batch in batches[1:]:
        whole = Batch.cat(whole, batch)
    return whole
