"""Experience replay (ER): every batch is the new batch plus an equal-sized batch from memory.

The memory is a reservoir (task-free: updated with every new batch) or class-balanced (filled at
the end of each task); see `lifelong.methods.memory`.

`weighting="uniform"` averages the loss over all samples of the combined batch (new and replayed
count the same); `weighting="tasks"` weighs the new batch's mean loss by 1/t and the replayed
batch's by 1 − 1/t on the t-th task (van de Ven, Tuytelaars & Tolias 2022, "Three types of
incremental learning"), so the replayed tasks weigh as much as the new one each.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch

from ..core.batch import Batch
from ..core.config import option
from ..core.registry import register_method
from .memory import MemoryConfig, MemoryMethod


@dataclasses.dataclass
class ReplayConfig(MemoryConfig):
    replay_batch_size: int | None = option(
        None, "samples replayed per step (None: as many as the new batch)", low=1)
    weighting: Literal["uniform", "tasks"] = option(
        "uniform", "loss weights: uniform over samples, or 1/t new and 1 − 1/t replayed")


@register_method
class Replay(MemoryMethod):
    name = "replay"
    description = "experience replay: mix stored samples of past tasks into every batch"
    Config = ReplayConfig

    def capabilities(self) -> dict[str, Any]:
        found = super().capabilities()  # weighting=tasks needs to know which task is new
        found["needs_task_boundaries"] |= self.config.weighting == "tasks"
        return found

    def prepare_batch(self, batch: Batch) -> Batch:
        replayed = self.memory.sample(self.config.replay_batch_size or batch.num_new)
        self.observe(batch)
        if replayed is None:
            return batch
        combined = Batch.cat(batch, replayed)
        if self.config.weighting == "tasks":
            new_share = 1.0 / (self.task + 1)
            weight = torch.empty(len(combined), device=combined.x.device)
            weight[: len(batch)] = new_share / len(batch)
            weight[len(batch):] = (1.0 - new_share) / len(replayed)
            combined.extras["loss_weight"] = weight
        return combined
