"""The method protocol: one small object with a few optional hooks.

A continual-learning method intervenes in an ordinary training step at a few moments. Each hook is
named after *when* it runs; a method overrides only those it needs:

=====================  ===========================================================  ==============
hook                   when / what                                                  example
=====================  ===========================================================  ==============
`before_task(t)`       a task starts                                                LwF's teacher
`training_data(t, d)`  the task's training set is chosen                            joint
`prepare_batch(b)`     before the forward pass: change what a batch holds           replay
`penalty(b, out)`      after the forward pass: a term added to the loss             EWC, LwF
`transform_grads()`    optimizer step pre-hook: change the gradient                 A-GEM
`after_step()`         optimizer step post-hook: change the weights                 (CBP, S&P)
`after_task(t, d)`     the task ended: consolidate with its data                    EWC's Fisher
`evaluation_task(t)`   task t's test data comes next (None: evaluation is over)     PackNet masks
`report(t, evaluate)`  after the evaluation: numbers the method measures            L1's ticket
=====================  ===========================================================  ==============

`transform_grads` and `after_step` run from `optimizer.register_step_pre_hook` /
`register_step_post_hook`, so they fire once per real update from *any* loop that calls
`optimizer.step()`: lifelong's trainer, a Hugging Face Trainer, or ten lines of plain PyTorch.

Each method declares what it needs (`CAPABILITIES`: `needs_task_boundaries`, `scenarios`, ...)
so an impossible combination is refused before training: a class attribute gives the value under
the default config, and a capability that depends on the config is computed by `capabilities()`,
which sets it on the object whenever the config is set (replay with `weighting=tasks` needs task
boundaries). A method keeps its state in `state_attrs` so that `state_dict()` /
`load_state_dict()` round-trip without pickling code. When the trainable parameters change (a
LoRA method adds adapters), `parameters_changed()` re-reads them and the method's
`on_parameters_changed` carries its per-parameter state over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, NoReturn

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .batch import Batch, BatchLike, as_batch, iter_batches
from .config import Config
from .probe import RunningStats, probe
from .readout import SCENARIOS, Readout

HOOKS = ("before_task", "training_data", "prepare_batch", "penalty", "transform_grads",
         "after_step", "after_task", "evaluation_task", "report")

# `evaluate(model)` -> accuracy of `model` on the test set of every task, in task order (a
# sequence: the run's evaluator evaluates a task when it is read, so read only those needed).
Evaluator = Callable[[nn.Module], Sequence[float]]

# What a method needs from the scenario; `check_compatible` refuses a run that cannot give it.
CAPABILITIES = ("needs_task_boundaries", "needs_task_ids_at_test", "scenarios", "stores_data",
                "needs_transformer", "composable")

# When several methods change the gradient, they run in this order (then in composition order):
OBJECTIVE = 0  # gradients of penalty terms (EWC, L2): part of the objective, added first
TRANSFORM = 1  # projections, masks and preconditioners act on the full gradient

# Why a penalty on weight changes (EWC, SI, MAS, L2) leaves class-incremental learning
# unprotected (van de Ven et al. 2022); measured: Split MNIST ACC 0.197 for EWC and SI against
# 0.198 for naive (docs/benchmarks.md), split-digits ACC 0.16-0.19 and forgetting 0.91-0.99 for
# EWC, SI, MAS and L2 (seeds 0, 1), as naive.
WEIGHT_PENALTY_CLASS_IL = (
    "a penalty on weight changes cannot keep the classes of different tasks apart, since they "
    "are never trained together, so it forgets about as much as fine-tuning (pair it with "
    "replay, e.g. replay+{name})")


@dataclasses.dataclass
class NoConfig(Config):
    """A method without hyper-parameters."""


class Method:
    """Base class of every continual-learning method; see the module docstring."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[Config]] = NoConfig

    # Capabilities (`CAPABILITIES`), checked before training starts: the values under the
    # default config; `capabilities()` gives those that depend on the config.
    needs_task_boundaries: bool = False  # before_task/after_task with the task's data
    needs_task_ids_at_test: bool = False  # only possible in task-incremental learning
    scenarios: tuple[str, ...] = SCENARIOS
    stores_data: bool = False  # keeps training samples (a memory)
    needs_transformer: bool = False  # attention heads and FFN units (DAS)
    composable: bool = True  # may be combined with other methods (`replay+ewc`)
    gradient_stage: ClassVar[int] = TRANSFORM  # see OBJECTIVE / TRANSFORM above
    # Scenarios the method runs in but is known not to protect, with the reason: a run there
    # starts with one warning line (`lifelong.core.compose.unprotected_warnings`), not an error.
    unprotected_scenarios: ClassVar[dict[str, str]] = {}

    # Attributes saved by state_dict(): tensors, numbers, lists/dicts of them, or objects with
    # their own state_dict()/load_state_dict().
    state_attrs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Config | dict[str, Any] | None = None, **overrides: Any) -> None:
        if isinstance(config, Config):
            if overrides:
                config = config.replace(**overrides)
        else:
            config = self.Config.from_dict({**(config or {}), **overrides})
        if not isinstance(config, self.Config):
            raise ConfigError(f"{self.name} takes a {self.Config.__name__}, "
                              f"not a {type(config).__name__}")
        self.config = config
        self._apply_capabilities()
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.readout: Readout = Readout.identity()
        self.params: list[Tensor] = []
        self.param_names: list[str] = []
        self.generator: torch.Generator | None = None
        self.task: int = -1  # the task being trained (-1 before the first)
        self._handles: list[Any] = []

    # --- lifecycle -----------------------------------------------------------------------------
    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        readout: Readout | None = None,
        *,
        seed: int | None = None,
        step_hooks: bool = True,
    ) -> Method:
        """Bind to a model (and optimizer) and register the optimizer hooks the method uses.

        `step_hooks=False` leaves the optimizer alone (a `Composite` registers one hook that
        calls its members in order).
        """
        if self.model is not None:
            raise RuntimeError(f"{self.name} is already attached; call detach() first")
        self.model = model
        self.optimizer = optimizer
        self.readout = readout or Readout.identity()
        named = trainable_parameters(model)
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self._probe_stats = RunningStats(model)  # see loss_gradients
        device = self.params[0].device if self.params else torch.device("cpu")
        if seed is None:  # follow the global seed, so seeded runs stay reproducible
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        # `uses` (not `overrides`): a method acts at a step hook only in some configurations
        wants_optimizer_hooks = self.uses("transform_grads") or self.uses("after_step")
        if wants_optimizer_hooks and optimizer is None:
            raise ConfigError(f"{self.name} changes gradients or weights at each optimizer step "
                              "and needs the optimizer: attach(model, optimizer)")
        if step_hooks and self.uses("transform_grads"):
            self._handles.append(optimizer.register_step_pre_hook(self._pre_step_hook))
        if step_hooks and self.uses("after_step"):
            self._handles.append(optimizer.register_step_post_hook(self._post_step_hook))
        self.on_attach()
        return self

    def detach(self) -> None:
        """Remove every hook this method registered; the model is left as it is."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.on_detach()
        self.model = None
        self.optimizer = None

    def parameters_changed(self) -> bool:
        """Re-read which parameters train (`params`, `param_names`) after something changed them
        (a LoRA method adds adapters and freezes the rest: at attach, and for inc-lora and
        o-lora at each new task). When they differ from the last look, `on_parameters_changed`
        carries the method's per-parameter state over; returns whether they differed.

        A `Composite` calls it on its members after any member's `attach`, `before_task` and
        `load_state_dict`; a loop that changes which parameters train calls it itself."""
        if self.model is None:  # not attached: nothing to read yet
            return False
        named = trainable_parameters(self.model)
        self.param_names = [n for n, _ in named]  # peft renames the layers it wraps
        if [id(p) for _, p in named] == [id(p) for p in self.params]:
            return False
        before, self.params = self.params, [p for _, p in named]
        self.on_parameters_changed(before)
        return True

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        """`params` changed from `before`: rebuild what depends on them (`carry_over` moves a
        per-parameter list). A parameter that stopped training can no longer move, so it leaves
        the method's state (and any penalty's value); one that started has no history yet."""

    def capabilities(self) -> dict[str, Any]:
        """The capabilities (`CAPABILITIES`) that depend on this object's config, as
        {name: value}; each replaces the class attribute of that name on this object. Called
        whenever the config is set (construction, `load_state_dict`)."""
        return {}

    def _apply_capabilities(self) -> None:
        found = self.capabilities()
        unknown = sorted(set(found) - set(CAPABILITIES))
        if unknown:
            raise TypeError(f"{type(self).__name__}.capabilities() gave {', '.join(unknown)}; "
                            f"capabilities are: {', '.join(CAPABILITIES)}")
        for name, value in found.items():
            setattr(self, name, value)

    def on_attach(self) -> None:
        """Extra set-up once the model is known (e.g. forward hooks: append handles)."""

    def on_detach(self) -> None:
        """Extra clean-up; handles in `self._handles` are already removed."""

    def _pre_step_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.transform_grads()

    def _post_step_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.after_step()

    # --- hooks (all optional) ------------------------------------------------------------------
    def before_task(self, task: int) -> None:
        self.task = task

    def training_data(self, task: int, data: Batch) -> Batch:
        return data

    def prepare_batch(self, batch: Batch) -> Batch:
        return batch

    def penalty(self, batch: Batch, output: Tensor) -> Tensor | None:
        return None

    def transform_grads(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_task(self, task: int, data: Batch | Iterable[BatchLike]) -> None:
        pass

    def evaluation_task(self, task: int | None) -> None:
        """The next forward passes evaluate task `task`'s test data; `None` once evaluation is
        over. Only for methods whose model depends on the task (per-task weight masks), which
        therefore need the task id at test time."""

    def report(self, task: int, evaluate: Evaluator) -> dict[str, float]:
        """Numbers the method measured on `task` (a ticket's sparsity, its accuracy via
        `evaluate(model)`), called after the task's evaluation; the experiment logs them to
        metrics.jsonl and summary.json."""
        return {}

    @classmethod
    def overrides(cls, hook: str) -> bool:
        """Whether this method class implements `hook`."""
        return getattr(cls, hook) is not getattr(Method, hook)

    def uses(self, hook: str) -> bool:
        """Whether this method object acts at `hook` (the trainer skips the others)."""
        return self.overrides(hook)

    # --- helpers for methods -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.params[0].device if self.params else torch.device("cpu")

    def forward(self, batch: Batch) -> Tensor:
        """The model's logits for `batch`, read out for each sample's task."""
        return self.readout.select(self.model(batch.x), batch.task_ids)

    def task_loss(self, batch: Batch) -> Tensor:
        return batch.loss(self.forward(batch))

    def loss_gradients(self, batch: Batch, params: list[Tensor]) -> list[Tensor]:
        """∇ of the task loss on `batch` for `params`, without touching their `.grad` (zeros
        where a parameter does not reach the loss). Works inside an optimizer step hook.

        A probe, not training (A-GEM's and GEM's reference gradients): the model stays in the
        training step's mode, so BatchNorm normalises with the batch's statistics as for g, and
        its running statistics are put back afterwards (`lifelong.core.probe`)."""
        with torch.enable_grad(), probe(self.model, None, stats=self._probe_stats):
            found = torch.autograd.grad(self.task_loss(batch), params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, found)]

    def batches(self, data: Batch | Iterable[BatchLike], batch_size: int,
                limit: int | None = None) -> Iterator[Batch]:
        return iter_batches(data, batch_size, device=self.device, limit=limit,
                            generator=self.generator)

    def add_penalty(self, loss: Tensor, batch: BatchLike, output: Tensor) -> Tensor:
        """`loss` plus this method's penalty: the one line a user's own loop needs."""
        if not self.uses("penalty"):  # e.g. DAS without its contrastive loss
            return loss
        term = self.penalty(as_batch(batch), output)
        return loss if term is None else loss + term

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"config": self.config.to_dict(), "task": self.task}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        for attr in self.state_attrs:
            value = getattr(self, attr)
            state[attr] = value.state_dict() if hasattr(value, "state_dict") else value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state; call after `attach()` so tensors go to the model's device."""
        self.config = self.Config.from_dict(state["config"])
        self._apply_capabilities()
        self.task = state["task"]
        if "generator" in state and self.generator is not None:
            self.generator.set_state(state["generator"])
        for attr in self.state_attrs:
            current = getattr(self, attr, None)
            if hasattr(current, "load_state_dict"):
                current.load_state_dict(_to_device(state[attr], self.device))
            else:
                setattr(self, attr, _to_device(state[attr], self.device))

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        return f"{type(self).__name__}({values})"


def refuse_parameter_change(name: str, keeps: str) -> NoReturn:
    """The `on_parameters_changed` of a method whose state cannot follow a change of the
    trainable parameters: one line saying so, and the order of composition that works."""
    raise ConfigError(f"{name} keeps {keeps} and cannot follow a change of the trainable "
                      "parameters (lora attached after it, or inc-lora's and o-lora's adapter "
                      f"per task); attach {name} after lora (lora+{name}), and not with inc-lora "
                      "or o-lora")


def trainable_parameters(model: nn.Module) -> list[tuple[str, Tensor]]:
    """(name, parameter) of every parameter of `model` that requires a gradient."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def carry_over(values: list[Tensor] | None, before: list[Tensor], after: list[Tensor],
               new: Callable[[Tensor], Tensor]) -> list[Tensor] | None:
    """Per-parameter state `values` (one entry per parameter of `before`) for the parameters
    `after`: each parameter keeps its entry, one new to the list gets `new(parameter)`, and the
    entries of parameters no longer in it are dropped. None (no state yet) stays None."""
    if values is None:
        return None
    by_id = {id(p): value for p, value in zip(before, values, strict=True)}
    return [by_id[id(p)] if id(p) in by_id else new(p) for p in after]


def copy_of(param: Tensor) -> Tensor:
    """A detached copy of a parameter's current values (the anchor of one that just joined)."""
    return param.detach().clone()


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value
