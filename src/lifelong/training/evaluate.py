"""Evaluation of a model on a task's test set, and on every task's (a row of the matrices)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.batch import IGNORE, Batch, per_sample_token_loss
from ..core.method import Method
from ..core.readout import Readout
from ..scenarios import Scenario


@torch.inference_mode()
def evaluate(model: nn.Module, readout: Readout, data: Batch,
             batch_size: int = 1000, *, per_token: bool = False) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on `data`, read out per sample's task.

    For token logits (generation tasks) a sample is correct when every target token is the
    arg-max under teacher forcing, which is exactly when greedy decoding generates the target
    (the first wrong token would be the first generated difference); its loss is the mean over
    its target tokens. `per_token=True` (language modelling) scores the fraction of target
    tokens predicted instead, and the mean loss per token."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=data.x.device)
    count = torch.zeros((), dtype=torch.long, device=data.x.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=data.x.device)
    for start in range(0, len(data), batch_size):
        batch = data.select(slice(start, start + batch_size))
        logits = readout.select(model(batch.x), batch.task_ids)
        if logits.dim() == 3 and per_token:
            targets = batch.y != IGNORE
            correct += ((logits.argmax(-1) == batch.y) & targets).sum()
            count += targets.sum()
            loss_sum += F.cross_entropy(logits.flatten(0, 1), batch.y.flatten(),
                                        ignore_index=IGNORE, reduction="sum").double()
            continue
        count += len(batch)
        if logits.dim() == 3:
            hits = (logits.argmax(-1) == batch.y) | (batch.y == IGNORE)
            correct += hits.all(1).sum()
            loss_sum += per_sample_token_loss(logits, batch.y).sum().double()
            continue
        correct += (logits.argmax(1) == batch.y).sum()
        loss_sum += F.cross_entropy(logits, batch.y, reduction="sum").double()
    model.train(was_training)
    total = max(int(count), 1)
    return correct.item() / total, loss_sum.item() / total


def evaluate_tasks(model: nn.Module, readout: Readout, scenario: Scenario, device: torch.device,
                   batch_size: int = 1000, *, method: Method | None = None
                   ) -> list[tuple[float, float]]:
    """(accuracy, mean loss) of `model` on every task's test set, in task order: a row of the
    accuracy and loss matrices. `method.evaluation_task` is told which task's data comes next
    (per-task masks), and None once the evaluation is over."""
    scores = []
    for task in scenario.tasks:
        if method is not None:
            method.evaluation_task(task.id)
        scores.append(evaluate(model, readout, task.test_data(device), batch_size,
                               per_token=scenario.per_token))
        if method is not None:
            method.evaluation_task(None)
    return scores


class TaskAccuracies(Sequence[float]):
    """`model`'s accuracy on every task's test set, in task order, each task evaluated when it
    is first read: the evaluator a method's report gets (`Evaluator`), which often needs one
    task's accuracy (L1's ticket on the task just learned), not every task's."""

    def __init__(self, model: nn.Module, readout: Readout, scenario: Scenario,
                 device: torch.device, batch_size: int = 1000) -> None:
        self._evaluate = lambda task: evaluate(model, readout, task.test_data(device), batch_size,
                                               per_token=scenario.per_token)[0]
        self._tasks, self._read = scenario.tasks, {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        position = range(len(self))[index]  # negative indices; IndexError past the end
        if position not in self._read:
            self._read[position] = self._evaluate(self._tasks[position])
        return self._read[position]
