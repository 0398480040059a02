"""Composition (`replay+ewc`) and the checks that refuse impossible runs before training."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .batch import Batch, BatchLike
from .method import Evaluator, Method
from .readout import Readout
from .registry import expand_alias, get_method_class


class Composite(Method):
    """Several methods run in order: batches pass through each `prepare_batch`, penalties add up,
    and one optimizer hook per kind calls the members that act there, gradient changes by
    `gradient_stage` and then in the order given (the only place that orders them).

    When a member changes which parameters train (lora, inc-lora and o-lora freeze the model and
    add adapters at attach and at new tasks), every other member hears of it
    (`parameters_changed`) after that member's `attach`, `before_task` or `load_state_dict`."""

    name = "composite"
    description = "several methods applied in order"

    def __init__(self, members: Sequence[Method]) -> None:
        self.members = list(members)  # before Method.__init__, which asks capabilities()
        super().__init__()
        self.name = "+".join(m.name for m in self.members)  # type: ignore[misc]
        self._preparers = [m for m in members if m.uses("prepare_batch")]
        self._penalizers = [m for m in members if m.uses("penalty")]

    def capabilities(self) -> dict[str, Any]:
        """What the members need together: any member's need, the scenarios all support."""
        members = self.members
        return {
            "needs_task_boundaries": any(m.needs_task_boundaries for m in members),
            "needs_task_ids_at_test": any(m.needs_task_ids_at_test for m in members),
            "scenarios": tuple(s for s in members[0].scenarios
                               if all(s in m.scenarios for m in members)),
            "stores_data": any(m.stores_data for m in members),
            "needs_transformer": any(m.needs_transformer for m in members),
            "composable": all(m.composable for m in members),
        }

    def uses(self, hook: str) -> bool:
        return any(member.uses(hook) for member in self.members)

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
               readout: Readout | None = None, *, seed: int | None = None) -> Composite:
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.model, self.optimizer = model, optimizer
        self.readout = readout or Readout.identity()
        self.parameters_changed()
        for offset, member in enumerate(self.members):
            member.attach(model, optimizer, readout, seed=seed + offset, step_hooks=False)
            self.parameters_changed()
        # Gradient changes run by stage (penalty gradients before projections and masks), then
        # in the order the methods were given; weight changes in the order given.
        self._transformers = sorted((m for m in self.members if m.uses("transform_grads")),
                                    key=lambda m: m.gradient_stage)
        self._updaters = [m for m in self.members if m.uses("after_step")]
        if self._transformers:
            self._handles.append(optimizer.register_step_pre_hook(self._pre_step_hook))
        if self._updaters:
            self._handles.append(optimizer.register_step_post_hook(self._post_step_hook))
        return self

    def parameters_changed(self) -> bool:
        """Re-read which parameters train; when they changed, tell every attached member."""
        if not super().parameters_changed():
            return False
        for member in self.members:
            if member.model is not None:
                member.parameters_changed()
        return True

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for member in self.members:
            member.detach()
        self.model = self.optimizer = None

    def transform_grads(self) -> None:
        for member in self._transformers:
            member.transform_grads()

    def after_step(self) -> None:
        for member in self._updaters:
            member.after_step()

    def before_task(self, task: int) -> None:
        self.task = task
        for member in self.members:
            member.before_task(task)
            self.parameters_changed()  # inc-lora's new adapter

    def training_data(self, task: int, data: Batch) -> Batch:
        for member in self.members:
            data = member.training_data(task, data)
        return data

    def prepare_batch(self, batch: Batch) -> Batch:
        for member in self._preparers:
            batch = member.prepare_batch(batch)
        return batch

    def penalty(self, batch: Batch, output: Tensor) -> Tensor | None:
        total = None
        for member in self._penalizers:
            term = member.penalty(batch, output)
            if term is not None:
                total = term if total is None else total + term
        return total

    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        for member in self.members:
            member.after_task(task, data)

    def evaluation_task(self, task: int | None) -> None:
        for member in self.members:
            member.evaluation_task(task)

    def report(self, task: int, evaluate: Evaluator) -> dict[str, float]:
        """Each member's numbers, keyed `member.key` so that two members cannot collide."""
        return {f"{member.name}.{key}": value for member in self.members
                if member.uses("report") for key, value in member.report(task, evaluate).items()}

    def state_dict(self) -> dict[str, Any]:
        return {member.name: member.state_dict() for member in self.members}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parameters_changed()  # the model's own load may have added adapters (lora's hook)
        for index, member in enumerate(self.members):
            member.load_state_dict(state[member.name])
            if self.parameters_changed():  # its state added adapters: the members before it
                for earlier in self.members[:index]:  # saved theirs for the new parameters
                    earlier.load_state_dict(state[earlier.name])
        self._apply_capabilities()  # a member's loaded config may need other things

    def __repr__(self) -> str:
        return " + ".join(repr(m) for m in self.members)


def parse_method_spec(spec: str) -> list[str]:
    """`"replay+ewc"` -> `["replay", "ewc"]`, refusing empty parts and duplicates."""
    names = [part.strip() for part in spec.split("+")]
    if not spec.strip() or any(not name for name in names):
        raise ConfigError(f"method '{spec}' is not valid; write one name or names joined by '+', "
                          "e.g. replay+ewc")
    names = [part for name in names for part in expand_alias(name)]  # lora-replay: lora, replay
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"method '{spec}' names {', '.join(duplicates)} twice")
    return names


def build_method(spec: str, params: Mapping[str, Mapping[str, Any]] | None = None) -> Method:
    """Build a method (or a composition) from its spec and per-method hyper-parameters.

    `params` maps a method name to its config values, e.g. `{"ewc": {"lambda": 100}}`.
    """
    names = parse_method_spec(spec)
    params = dict(params or {})
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ConfigError(f"settings given for {', '.join(unknown)}, which is not part of method "
                          f"'{spec}'")
    classes = [get_method_class(name) for name in names]
    members = [cls(dict(params.get(cls.name, {}))) for cls in classes]
    if len(members) > 1:
        for member in members:
            if member.name == "naive":
                raise ConfigError("naive is plain fine-tuning and cannot be combined; "
                                  f"use '{'+'.join(n for n in names if n != 'naive')}'")
            if not member.composable:
                raise ConfigError(f"{member.name} does not combine with other methods "
                                  f"({member.description})")
    return members[0] if len(members) == 1 else Composite(members)


def method_settings(method: Method) -> dict[str, dict]:
    """{member name: its full config} of a method or a composite (configs that have keys)."""
    members = method.members if isinstance(method, Composite) else [method]
    return {m.name: m.config.to_dict() for m in members if m.config.to_dict()}


def unprotected_warnings(method: Method, scenario: str) -> list[str]:
    """One line per member known not to protect `scenario` (`Method.unprotected_scenarios`);
    none when a member keeps samples of earlier tasks (replay+spg), the remedy they name."""
    members = method.members if isinstance(method, Composite) else [method]
    if any(m.stores_data for m in members):
        return []
    return [f"{m.name} does not protect {scenario}-incremental learning: {why}"
            for m in members if (why := m.unprotected_scenarios.get(scenario))]


def check_compatible(method: Method, scenario: str, *, task_boundaries: bool = True) -> None:
    """Refuse, with the reason, a method that cannot run in this scenario."""
    members = method.members if isinstance(method, Composite) else [method]
    for member in members:
        if scenario not in member.scenarios:
            raise ConfigError(f"{member.name} does not support the {scenario}-incremental "
                              f"scenario; it supports: {', '.join(member.scenarios)}")
        if member.needs_task_ids_at_test and scenario != "task":
            raise ConfigError(f"{member.name} needs the task id at test time, which only the "
                              f"task-incremental scenario gives (use --scenario task)")
        if member.needs_task_boundaries and not task_boundaries:
            raise ConfigError(f"{member.name} needs task boundaries, and the stream is "
                              "task-free; pass --boundaries to announce them, or choose a "
                              "task-free method (naive, l2 anchor=zero, cbp, upgd, "
                              "shrink-perturb)")
