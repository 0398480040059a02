"""Lottery tickets per task: iterative magnitude pruning inside each task, PackNet-style.

Each task finds its own winning ticket (Frankle & Carbin 2019) among the weights no earlier task
owns, and keeps it frozen from then on (one network packed with per-task sub-networks, as in
PackNet, Mallya & Lazebnik 2018). Task-incremental only: testing task t uses the weights of
tasks ≤ t, so the task id must be known.

While task t trains:

- every entry owned by an earlier task is frozen: its gradient is zeroed before each optimizer
  step and its value restored exactly after it (momentum, Adam's moments or weight decay would
  otherwise still move it);
- every `round_steps` steps (at most `rounds` times), `fraction` of the task's remaining free
  weights is pruned by |w|, globally across layers
  (`lifelong.functional.prune.global_magnitude_masks`);
  the pruned ones are zeroed and kept at zero, and every free entry that survives (weights and
  biases alike) is rewound to its value at the task's start (θ₀, `rewind_step=0`) or after
  `rewind_step` steps of the task (Frankle et al. 2020). A rewind restarts the training, so the
  optimizer's state (momentum, Adam's moments and step) of the model's parameters is cleared
  then, and at the start of each task for the same reason;
- only entries the task uses are eligible: an entry whose gradient was zero at every step (the
  output units of another task's head, the weights of a unit that never fired) is neither
  pruned nor claimed, and stays free for later tasks.

At the task's end the surviving, used free weights become task t's ticket. The pruned ones stay
at zero and free. Only `nn.Linear` / `nn.ConvNd` weights are pruned
(`lifelong.functional.prune.prunable_parameters`); every other parameter (biases, normalisation
layers) is claimed whole by the first task that uses it and frozen afterwards, as PackNet does with
its biases: a shared layer's biases belong to the first task, while the biases of a later task's
own head units stay free until that task trains them.

Evaluating task t (`evaluation_task(t)`) zeroes every entry not owned by a task ≤ t (later
tickets and free entries) in place, and `evaluation_task(None)` puts the weights back from the
copy the method keeps anyway (no second model, nothing allocated per batch). So a task's test
predictions never change once it is learnt: zero forgetting in task-incremental learning, where
the heads are separate. BatchNorm running statistics are buffers, which no ticket can own: they
keep moving with every later task. So (`task_norm_stats`, on by default) the method keeps each
task's running statistics as they were at the task's end and `evaluation_task(t)` evaluates with
task t's (a few numbers per channel per task); the current ones are back after the evaluation.
A rewind puts the running statistics back to the rewind point too, as rewinding a whole model's
state (`lifelong.functional.prune.iterative_magnitude_pruning`) does.

Tasks must come in increasing order (a task may be trained again, as long as no later one has
been). Each task needs more than `rounds × round_steps` optimizer steps to do every round and
then train its ticket; a shorter task keeps the mask it has when it ends (`report()` says how
many rounds ran). Memory: a copy of the weights (the rewind point) and, per entry, an int16
owner, two bool masks and a 0/1 lock in the weights' dtype; evaluating in the middle of a task
puts the weights aside in one more copy.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..core.batch import Batch, BatchLike
from ..core.config import Config, option
from ..core.method import Evaluator, Method, refuse_parameter_change
from ..core.probe import load_running_stats, save_running_stats
from ..core.registry import register_method
from ..errors import ConfigError
from ..functional.prune import global_magnitude_masks, prunable_parameters

FREE = -1  # owner of an entry no task has claimed
_MAX_TASKS = torch.iinfo(torch.int16).max


@dataclasses.dataclass
class LotteryConfig(Config):
    fraction: float = option(
        0.2, "fraction of the task's remaining free weights pruned per round, globally by |w|; "
        "in (0, 1): 1 would prune every free weight", low=0, high=1, low_open=True,
        high_open=True)
    rounds: int = option(3, "pruning rounds per task (keeps about (1 - fraction)^rounds of the "
                         "free weights)", low=1)
    round_steps: int = option(
        200, "optimizer steps between pruning rounds; a task needs more than rounds × "
        "round_steps steps to do every round and train its ticket", low=1)
    rewind_step: int = option(
        0, "0: rewind survivors to the task's start weights θ₀; k: to their values after k "
        "steps of the task (k < round_steps)", low=0)
    task_norm_stats: bool = option(
        True, "evaluate each task with the BatchNorm running statistics it ended with (False: "
        "the current ones, which later tasks keep moving)")

    def validate(self) -> None:
        if self.rewind_step >= self.round_steps:
            raise ConfigError(f"{self._owner}.rewind_step: {self.rewind_step} must be smaller "
                              f"than round_steps ({self.round_steps}): the rewind point is "
                              "taken before the first pruning round")


@register_method
class Lottery(Method):
    """One lottery ticket per task, found by iterative magnitude pruning and then frozen."""

    name = "lottery"
    description = "a lottery ticket per task: iterative magnitude pruning, earlier tickets frozen"
    Config = LotteryConfig
    needs_task_boundaries = True
    needs_task_ids_at_test = True
    scenarios = ("task",)
    state_attrs = ("owner", "pruned", "used", "anchor", "steps", "rounds_done", "tickets",
                   "norm_stats", "anchor_norm_stats")

    def __init__(self, config: LotteryConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.owner: list[Tensor] | None = None  # per parameter: owning task, FREE = -1 (int16)
        self.pruned: list[Tensor] | None = None  # pruned during the current task (bool)
        self.used: list[Tensor] | None = None  # got a nonzero gradient in the current task
        self.anchor: list[Tensor] | None = None  # rewind point; frozen values; 0 where pruned
        self.steps = 0  # optimizer steps in the current task
        self.rounds_done = 0  # pruning rounds in the current task
        self.tickets: dict[int, dict[str, float]] = {}  # per task: what report() returns
        # BatchNorm running statistics (`lifelong.core.probe`): per task at its end, and at
        # the rewind point; empty lists for a model without them
        self.norm_stats: dict[int, list[Tensor]] = {}
        self.anchor_norm_stats: list[Tensor] | None = None
        self._prunable: list[bool] = []
        # per parameter, 1.0 where an entry is owned or pruned (no gradient, value restored), in
        # the parameter's dtype: lerp/addcmul with 0/1 weights select exactly and, unlike
        # masked_fill/where, run at memory speed on the CPU too; None where nothing is locked
        self._locked: list[Tensor | None] = []
        self._stash: list[Tensor] | None = None  # weights put aside during evaluation
        self._stats_stash: list[Tensor] | None = None  # running statistics, likewise
        self._synced = False  # anchor == params (evaluation can restore from it)
        self._evaluating: int | None = None

    # --- set-up --------------------------------------------------------------------------------
    def on_attach(self) -> None:
        prunable = {id(w) for _, w in prunable_parameters(self.model)}
        self._prunable = [id(p) in prunable for p in self.params]
        if self.owner is None:
            self.owner = [torch.full_like(p, FREE, dtype=torch.int16) for p in self.params]
            self.pruned = [torch.zeros_like(p, dtype=torch.bool) for p in self.params]
            self.used = [torch.zeros_like(p, dtype=torch.bool) for p in self.params]
            self.anchor = [p.detach().clone() for p in self.params]
        self._stash = None
        self._stats_stash = None
        self._evaluating = None
        self._refresh()

    def on_detach(self) -> None:
        self.evaluation_task(None)

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        # a frozen adapter would leave the ownership table, and evaluating an older task would
        # no longer zero the entries later tasks own
        refuse_parameter_change("lottery", "each entry's owning task for the parameters it "
                                "found at attach")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._refresh()

    @torch.no_grad()
    def _refresh(self) -> None:
        """Recompute what follows from the state: the locked entries, whether anchor == θ."""
        self._locked = []
        for p, owner, pruned in zip(self.params, self.owner, self.pruned):
            locked = (owner != FREE) | pruned
            self._locked.append(locked.to(p.dtype) if bool(locked.any()) else None)
        self._synced = all(torch.equal(a, p) for a, p in zip(self.anchor, self.params))

    def _reset_optimizer_state(self) -> None:
        """Forget momentum / Adam's moments and step count: the training restarts."""
        if self.optimizer is not None:
            for p in self.params:
                self.optimizer.state.pop(p, None)

    # --- hooks ---------------------------------------------------------------------------------
    @torch.no_grad()
    def before_task(self, task: int) -> None:
        latest = max((int(o.max()) for o in self.owner if o.numel()), default=FREE)
        if task < latest:
            raise ValueError(f"lottery trains tasks in increasing order; task {task} comes "
                             f"after task {latest}, whose ticket it would be evaluated without")
        if task >= _MAX_TASKS:
            raise ValueError(f"lottery supports at most {_MAX_TASKS} tasks")
        self.evaluation_task(None)
        super().before_task(task)
        self.steps = self.rounds_done = 0
        for pruned, used in zip(self.pruned, self.used):
            pruned.zero_()
            used.zero_()
        torch._foreach_copy_(self.anchor, [p.detach() for p in self.params])  # θ₀
        self.anchor_norm_stats = save_running_stats(self.model)
        self._reset_optimizer_state()
        self._refresh()

    @torch.no_grad()
    def transform_grads(self) -> None:
        for p, used, locked in zip(self.params, self.used, self._locked):
            grad = p.grad
            if grad is None:
                continue
            used.bitwise_or_(grad.bool())  # nonzero once in the task: the task uses the entry
            if locked is not None:
                grad.addcmul_(grad, locked, value=-1)  # g ← g − g·locked: 0 where locked

    @torch.no_grad()
    def after_step(self) -> None:
        for p, anchor, locked in zip(self.params, self.anchor, self._locked):
            if locked is not None:  # owned entries back to their values, pruned ones to 0
                p.lerp_(anchor, locked)  # exactly anchor where locked == 1, p where 0
        self.steps += 1
        self._synced = False
        cfg = self.config
        if self.steps == cfg.rewind_step:
            torch._foreach_copy_(self.anchor, [p.detach() for p in self.params])
            self.anchor_norm_stats = save_running_stats(self.model)
            self._synced = True
        if self.rounds_done < cfg.rounds and self.steps % cfg.round_steps == 0:
            self._prune_and_rewind()

    @torch.no_grad()
    def _prune_and_rewind(self) -> None:
        index = [i for i, prunable in enumerate(self._prunable) if prunable]
        weights = [self.params[i] for i in index]
        kept = [~self.pruned[i] for i in index]
        eligible = [(self.owner[i] == FREE) & self.used[i] for i in index]
        for i, keep in zip(index, global_magnitude_masks(weights, self.config.fraction, kept,
                                                         eligible)):
            torch.logical_not(keep, out=self.pruned[i])
            self.anchor[i].masked_fill_(self.pruned[i], 0)
        # rewind: free survivors (weights and biases) to the rewind point, the pruned to 0;
        # owned entries are equal in both
        torch._foreach_copy_([p.detach() for p in self.params], self.anchor)
        if self.anchor_norm_stats is not None:
            load_running_stats(self.model, self.anchor_norm_stats)
        self._reset_optimizer_state()
        self.rounds_done += 1
        self._refresh()

    @torch.no_grad()
    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        cfg = self.config
        if self.rounds_done and self.steps == self.rounds_done * cfg.round_steps:
            warnings.warn(f"lottery: task {task} ended at a pruning round, so its ticket was "
                          "rewound and not trained again; give each task more than rounds × "
                          f"round_steps = {cfg.rounds * cfg.round_steps} steps", stacklevel=2)
        eligible = pruned_count = free = total = 0
        for owner, pruned, used, prunable in zip(self.owner, self.pruned, self.used,
                                                 self._prunable):
            candidates = (owner == FREE) & used
            if prunable:
                eligible += int(candidates.count_nonzero())
                pruned_count += int(pruned.count_nonzero())
            owner.masked_fill_(candidates & ~pruned, task)  # the ticket (biases: used entries)
            if prunable:
                free += int((owner == FREE).count_nonzero())
                total += owner.numel()
            pruned.zero_()
        self.tickets[task] = {
            "ticket_sparsity": pruned_count / eligible if eligible else 0.0,
            "free_fraction": free / total if total else 0.0,
            "rounds": self.rounds_done,
        }
        torch._foreach_copy_(self.anchor, [p.detach() for p in self.params])  # frozen values
        self.norm_stats[task] = save_running_stats(self.model)
        self._refresh()

    @torch.no_grad()
    def evaluation_task(self, task: int | None) -> None:
        """Before task `task`'s test data: zero every entry not owned by a task ≤ `task`, in
        place; `None` puts the weights back."""
        params = [p.detach() for p in self.params]
        if self._evaluating is not None:
            torch._foreach_copy_(params, self.anchor if self._synced else self._stash)
            if self._stats_stash is not None:
                load_running_stats(self.model, self._stats_stash)
                self._stats_stash = None
            self._evaluating = None
        if task is None:
            return
        saved = self.norm_stats.get(task) if self.config.task_norm_stats else None
        if saved:  # a task that has ended, in a model with running statistics
            self._stats_stash = save_running_stats(self.model)
            load_running_stats(self.model, saved)
        if not self._synced:
            if self._stash is None:
                self._stash = [torch.empty_like(p) for p in params]
            torch._foreach_copy_(self._stash, params)
        for p, owner in zip(params, self.owner):
            p.masked_fill_((owner == FREE) | (owner > task), 0)
        self._evaluating = task

    def report(self, task: int, evaluate: Evaluator) -> dict[str, float]:
        """The task's ticket: `ticket_sparsity` (share of the task's eligible weights pruned),
        `free_fraction` (share of all prunable weights still free after it), `rounds` done."""
        return dict(self.tickets.get(task, {}))
