"""Joint training on all data seen so far: the usual upper bound."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.batch import Batch
from ..core.method import Method, NoConfig
from ..core.registry import register_method


@dataclasses.dataclass
class JointConfig(NoConfig):
    """joint has no options (a class of its own so that messages name joint, not naive)."""


@register_method
class Joint(Method):
    """While training task t, train on the union of the training sets of tasks 0..t.

    Not a continual method (it keeps every sample); it shows what a single model can reach when
    nothing is forgotten. It does not combine with other methods.
    """

    name = "joint"
    description = "train on all data seen so far (the upper bound; keeps every sample)"
    Config = JointConfig
    needs_task_boundaries = True
    stores_data = True
    composable = False

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.seen: Batch | None = None

    def training_data(self, task: int, data: Batch) -> Batch:
        if self.seen is None:
            return data
        return Batch.cat(self.seen.to(data.x.device), data)

    def after_task(self, task: int, data: Any) -> None:
        if not isinstance(data, Batch):
            raise TypeError("joint needs the task's training data as one Batch")
        # compact: a task's data may be a view of a larger tensor (a subset of the dataset)
        self.seen = data.compact() if self.seen is None else Batch.cat(self.seen, data)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seen": None if self.seen is None else self.seen.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        seen = Batch.from_state(state["seen"])
        self.seen = None if seen is None else seen.to(self.device)
