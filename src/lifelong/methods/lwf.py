"""Learning without forgetting (Li & Hoiem 2016).

Before task t ≥ 1, a frozen copy of the model becomes the teacher. Training adds
α · T² · KL(softmax(z_old/T) || softmax(z_new/T)) on the current inputs, over the units of the old
tasks: in task-incremental learning one distillation per old head (averaged over heads); in
domain- and class-incremental learning one over all the old tasks' units together.

The teacher is a frozen copy (`lifelong.core.copy.frozen_copy`) in eval mode: its targets are
the old model as it is evaluated (BatchNorm on its running statistics, which its passes do not
update, and which are those of the model at the task boundary); the student's own statistics are
moved only by its training passes. The teacher's passes measure, not train: they run inside
`lifelong.core.probe.probe()`, which methods watching training passes ignore. The teacher's
state (weights and buffers) is saved with the method's state.

`weighting="tasks"` multiplies α by the number of old tasks in task- and domain-incremental
learning (so task-IL sums the heads' distillations instead of averaging them), as van de Ven et
al.'s code does for their 2022 comparison; class-incremental learning is not scaled.

Class-incremental learning: not protected, it forgets about as much as fine-tuning (Split MNIST,
docs/benchmarks.md; split-digits ACC 0.19, forgetting 0.99, as naive); a run there starts with a
warning that says so (`unprotected_scenarios`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor

from ..core.batch import Batch
from ..core.config import Config, option
from ..core.copy import frozen_copy
from ..core.method import Method
from ..core.probe import probe
from ..core.registry import register_method
from ..functional import distillation_loss


@dataclasses.dataclass
class LwFConfig(Config):
    alpha: float = option(1.0, "weight α of the distillation loss", low=0)
    temperature: float = option(2.0, "softmax temperature T", low=0, low_open=True)
    weighting: Literal["constant", "tasks"] = option(
        "constant", "α as given, or α × old tasks in task-/domain-IL (van de Ven et al. 2022)")


@register_method
class LwF(Method):
    name = "lwf"
    description = "learning without forgetting: distil the previous model's outputs"
    Config = LwFConfig
    needs_task_boundaries = True
    unprotected_scenarios = {"class": "distilling the old outputs on the new task's inputs does "
                             "not keep the old classes apart from the new ones, which are never "
                             "trained together, so it forgets about as much as fine-tuning "
                             "(Split MNIST ACC 0.199, naive 0.198; pair it with replay, e.g. "
                             "replay+lwf)"}

    def __init__(self, config: LwFConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.teacher: torch.nn.Module | None = None
        self._heads: Tensor | None = None  # task-incremental: [old tasks, width] unit table
        self._units: Tensor | None = None  # otherwise: the old tasks' units

    def before_task(self, task: int) -> None:
        super().before_task(task)
        if task == 0:
            return
        self.teacher = frozen_copy(self.model)
        self._select_old_units(task)

    def _select_old_units(self, task: int) -> None:
        old_tasks = list(range(task))
        if self.readout.kind == "task":
            self._heads = self.readout.unit_table[:task]
            self._padded = bool((self._heads < 0).any())
            self._units = None
        else:
            self._heads = None
            units = self.readout.units(old_tasks)
            self._units = None if self.readout.kind in ("none", "domain") else torch.tensor(
                units, device=self.device)

    def penalty(self, batch: Batch, output: Tensor) -> Tensor | None:
        if self.teacher is None:
            return None
        with torch.no_grad(), probe(self.teacher):
            target = self.teacher(batch.x)
        if self._heads is not None:
            # [batch, old heads, width]: each old head's logits; padding units become -inf.
            index = self._heads.clamp(min=0).expand(len(batch), -1, -1)
            pad = (self._heads < 0).expand_as(index)
            student = output.unsqueeze(1).expand(-1, index.shape[1], -1).gather(2, index)
            teacher = target.unsqueeze(1).expand(-1, index.shape[1], -1).gather(2, index)
            if self._padded:
                student = student.masked_fill(pad, float("-inf"))
                teacher = teacher.masked_fill(pad, float("-inf"))
        elif self._units is not None:
            student, teacher = output[:, self._units], target[:, self._units]
        elif output.dim() == 3:  # token logits: distil at the sample's tokens, not padding
            tokens = batch.x >= 0
            student, teacher = output[tokens], target[tokens]
        else:
            student, teacher = output, target
        padded = self._heads is not None and bool(self._padded)
        alpha = self.config.alpha
        if self.config.weighting == "tasks" and self.readout.kind != "class":
            alpha *= self.task
        return alpha * distillation_loss(student, teacher, self.config.temperature, padded=padded)

    def state_dict(self) -> dict[str, Any]:
        teacher = None if self.teacher is None else self.teacher.state_dict()
        return {**super().state_dict(), "teacher": teacher}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.teacher = None
        if state["teacher"] is not None:
            self.teacher = frozen_copy(self.model)
            self.teacher.load_state_dict(state["teacher"])
            self._select_old_units(self.task)
