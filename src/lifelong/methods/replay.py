"""Experience replay (ER): every batch is the new batch plus an equal-sized batch from memory.

The memory is a reservoir (task-free: updated with every new batch) or class-balanced (filled at
the end of each task); see `lifelong.memory`.
"""

from __future__ import annotations

import dataclasses

from ..core.batch import Batch
from ..core.config import option
from ..core.registry import register_method
from ..memory import MemoryConfig, MemoryMethod


@dataclasses.dataclass
class ReplayConfig(MemoryConfig):
    replay_batch_size: int | None = option(
        None, "samples replayed per step (None: as many as the new batch)", low=1)


@register_method
class Replay(MemoryMethod):
    name = "replay"
    description = "experience replay: mix stored samples of past tasks into every batch"
    Config = ReplayConfig

    def prepare_batch(self, batch: Batch) -> Batch:
        replayed = self.memory.sample(self.config.replay_batch_size or batch.num_new)
        self.observe(batch)
        return batch if replayed is None else Batch.cat(batch, replayed)
