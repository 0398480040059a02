"""Continual learning inside a Hugging Face `transformers.Trainer`: one added line per task.

    from lifelong.core import build_method
    from lifelong.integrations.hf import attach

    method = build_method("ewc", {"ewc": {"lambda": 100}})
    for task, dataset in enumerate(datasets):
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        attach(trainer, method, task=task)
        trainer.train()

`attach` adds a `LifelongCallback` and replaces the trainer's `compute_loss` for training steps:

- `on_train_begin` (the optimizer exists by then): the method attaches to the model, wrapped in a
  `LogitsAdapter` (or `HFCausalLM`) that shares its parameters, and to the *inner* torch
  optimizer of Accelerate's `AcceleratedOptimizer`, so gradient hooks fire once per real update:
  with gradient accumulation only at sync steps, with a `GradScaler` after unscaling and never on
  a skipped step; then the task begins (`lifelong.training.lifecycle.begin_task`: before_task,
  and training_data for a method that reads the task's data).
- each training step is lifelong's (`lifelong.training.loop.training_step`): the batch becomes a
  lifelong `Batch` (packed token ids, PAD = -1; a causal LM's labels shifted so that `y[:, i]` is
  the target of position i), `prepare_batch` (replay), the forward pass, `Batch.loss` plus the
  method's penalty (LwF). The loss is a per-batch mean, which the Trainer divides by the
  accumulation steps. Evaluation keeps the Trainer's own loss.
- `on_train_end`: the task ends (`end_task`: after_task with the task's batches), then the
  method detaches (its random generators carry on at the next attach), so the next task's
  Trainer can attach it.

The Trainer clips gradients before `optimizer.step()`, so gradients a method adds at the step
(EWC's and the other quadratic anchors') are not clipped, and its reported loss leaves them out.
Methods that store samples (replay, DER, A-GEM) need batches of one length: tokenize with
`padding="max_length"`, or pass `pad_to`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.batch import IGNORE, Batch, whole
from ..core.compose import Composite
from ..core.method import Method
from ..errors import ConfigError
from ..models.hf import PAD, HFCausalLM, LogitsAdapter, pack_ids, unpack_ids
from ..training.lifecycle import begin_task, check_trains_on_given_data, end_task
from . import require

transformers = require("transformers")

_MODEL_KEYS = ("input_ids", "attention_mask")
_SAVED: WeakKeyDictionary[Method, dict[str, Any]] = WeakKeyDictionary()  # across attaches


# --- Hugging Face batches <-> lifelong Batches ---------------------------------------------------
def is_causal_lm(model: nn.Module) -> bool:
    """Whether the Trainer would shift this model's labels (a causal language model)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    return type(base).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def to_batch(inputs: dict[str, Tensor], *, task: int, causal_lm: bool = False,
             pad_to: int | None = None) -> Batch:
    """A collated Hugging Face batch as a lifelong `Batch`: x = packed `input_ids`, y = `labels`
    (a causal LM's shifted left, IGNORE at the end, as `lifelong.core.batch.token_loss` wants),
    task ids = `task`; `pad_to` pads x with PAD and token labels with IGNORE to that length."""
    missing = [key for key in ("input_ids", "labels") if key not in inputs]
    if missing:
        raise ConfigError(f"lifelong needs each batch's {' and '.join(missing)}; the batch has "
                          f"{', '.join(sorted(inputs))}")
    x = pack_ids(inputs["input_ids"], inputs.get("attention_mask"))
    y = inputs["labels"]
    if causal_lm:
        y = F.pad(y[:, 1:], (0, 1), value=IGNORE)
    if pad_to is not None:
        if x.shape[1] > pad_to:
            raise ConfigError(f"a batch has {x.shape[1]} tokens, more than pad_to={pad_to}")
        x = F.pad(x, (0, pad_to - x.shape[1]), value=PAD)
        if y.dim() == 2:
            y = F.pad(y, (0, pad_to - y.shape[1]), value=IGNORE)
    return Batch(x, y, torch.full((len(x),), task, dtype=torch.long, device=x.device))


def to_model_inputs(batch: Batch, inputs: dict[str, Tensor], pad_token_id: int = 0
                    ) -> dict[str, Tensor]:
    """Model inputs for a batch a method changed (replay's added rows), from its token ids."""
    other = set(inputs) - {*_MODEL_KEYS, "labels"}
    if "token_type_ids" in other and not inputs["token_type_ids"].any():
        other.discard("token_type_ids")  # all zeros: the model's default
    if other:
        raise ConfigError(f"the method adds samples to each batch, whose model inputs are rebuilt "
                          f"from token ids alone; the batch also has {', '.join(sorted(other))}")
    input_ids, attention_mask = unpack_ids(batch.x, pad_token_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _check_width(method: Method, batch: Batch) -> None:
    """Stored samples are concatenated with new ones: every batch must have one length."""
    width = _SAVED.setdefault(method, {}).setdefault("width", batch.x.shape[1])
    if batch.x.shape[1] != width:
        raise ConfigError(f"{method.name} stores samples, so every batch needs the same length; "
                          f"got {batch.x.shape[1]} tokens after {width}: tokenize with "
                          "padding='max_length', or pass pad_to=N to attach")


def task_batches(method: Method, loader: Iterable[dict[str, Tensor]], *, task: int,
                 pad_to: int | None = None) -> list[Batch]:
    """A task's data (e.g. the Trainer's train dataloader) as lifelong Batches, for after_task."""
    causal = isinstance(method.model, HFCausalLM)
    batches = [to_batch(inputs, task=task, causal_lm=causal, pad_to=pad_to) for inputs in loader]
    if method.stores_data:
        for batch in batches:
            _check_width(method, batch)
    return batches


def training_loss(method: Method, model: nn.Module, inputs: dict[str, Tensor], *, task: int,
                  pad_to: int | None = None) -> tuple[Tensor, Any]:
    """lifelong's training step on a Hugging Face batch, in the order of
    `lifelong.training.loop.training_step`: prepare_batch, forward, `Batch.loss` + penalty.
    `method` must be attached (`attach`); `model` is the one to call (it may be wrapped by
    DDP). Returns the loss (a mean over the batch) and the model's outputs."""
    batch = to_batch(inputs, task=task, causal_lm=isinstance(method.model, HFCausalLM),
                     pad_to=pad_to)
    model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    if method.uses("prepare_batch"):
        if method.stores_data:
            _check_width(method, batch)
        prepared = method.prepare_batch(batch)
        if prepared is not batch:
            model_inputs = to_model_inputs(prepared, inputs, method.model.pad_token_id)
        batch = prepared
    outputs = model(**model_inputs)
    loss = batch.loss(outputs.logits)
    if method.uses("penalty"):
        loss = method.add_penalty(loss, batch, outputs.logits)
    return loss, outputs


# --- attaching across tasks ----------------------------------------------------------------------
def _generators(method: Method) -> list[torch.Generator]:
    members = method.members if isinstance(method, Composite) else [method]
    return [m.generator for m in members if m.generator is not None]


def bind(method: Method, model: nn.Module, optimizer: torch.optim.Optimizer | None, *,
         seed: int | None = None) -> Method:
    """Attach `method` to a Hugging Face model (through a `LogitsAdapter`, sharing its
    parameters) and a torch optimizer; a method attached before continues its random streams,
    as if it had stayed attached (`seed` seeds the first attach)."""
    adapter = HFCausalLM(model) if is_causal_lm(model) else LogitsAdapter(model)
    method.attach(adapter, optimizer, seed=seed)
    for generator, state in zip(_generators(method), _SAVED.get(method, {}).get("rng", [])):
        generator.set_state(state)
    return method


def release(method: Method) -> None:
    """Detach `method`, keeping its random streams for the next `bind`."""
    _SAVED.setdefault(method, {})["rng"] = [g.get_state() for g in _generators(method)]
    method.detach()


# --- the Trainer ---------------------------------------------------------------------------------
class LifelongCallback(transformers.TrainerCallback):
    """Attaches `method` when training starts and consolidates the task when it ends."""

    def __init__(self, method: Method, task: int, *, seed: int | None = None,
                 pad_to: int | None = None) -> None:
        self.method, self.task, self.seed, self.pad_to = method, task, seed, pad_to

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module = None,
                       optimizer: Any = None, train_dataloader: Any = None, **kwargs: Any) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)  # AcceleratedOptimizer's torch one
        bind(self.method, model, inner, seed=self.seed)
        # the batches are gathered, after before_task, only for a method that reads them (NCL
        # counts the samples)
        data = None
        if self.method.uses("training_data"):
            data = lambda: whole(self._pad_to_longest(self._batches(train_dataloader)))  # noqa: E731
        begin_task(self.method, self.task, data, fixed_data=True,
                   remedy="give the Trainer that data as train_dataset instead")

    def on_train_end(self, args: Any, state: Any, control: Any, train_dataloader: Any = None,
                     **kwargs: Any) -> None:
        end_task(self.method, self.task, self._batches(train_dataloader))
        release(self.method)

    def _batches(self, loader: Any) -> list[Batch]:
        return task_batches(self.method, loader, task=self.task, pad_to=self.pad_to)

    @staticmethod
    def _pad_to_longest(batches: list[Batch]) -> list[Batch]:
        width = max(b.x.shape[1] for b in batches)
        pad = lambda t, v: t if t.dim() < 2 else F.pad(t, (0, width - t.shape[1]), value=v)  # noqa: E731
        return [Batch(pad(b.x, PAD), pad(b.y, IGNORE), b.task_ids) for b in batches]


def attach(trainer: Any, method: Method, *, task: int, seed: int | None = None,
           pad_to: int | None = None) -> LifelongCallback:
    """Make `trainer.train()` train task `task` with `method` (see the module docstring).

    `seed` seeds the method's random generator at its first attach (default: drawn from torch's
    global generator, which the Trainer seeds with `args.seed`); `pad_to` pads every batch to
    that many tokens (needed by methods that store samples when batches differ in length).
    """
    if any(isinstance(c, LifelongCallback) for c in trainer.callback_handler.callbacks):
        raise ConfigError("this Trainer already has a lifelong method; make one Trainer per task")
    if method.needs_task_ids_at_test:
        raise ConfigError(f"{method.name} needs the task id at test time, which a Trainer's "
                          "evaluation does not give")
    check_trains_on_given_data(method, "a Trainer", "give the Trainer all that data as "
                               "train_dataset, with naive")
    if trainer.compute_loss_func is not None or trainer.args.label_smoothing_factor:
        raise ConfigError("lifelong computes the training loss itself (cross-entropy, as its own "
                          "loop): leave out compute_loss_func and label_smoothing_factor")
    if getattr(getattr(trainer.model, "config", None), "problem_type", None) == \
            "multi_label_classification":
        raise ConfigError("multi-label classification is not supported: lifelong's loss is "
                          "cross-entropy over one label (or squared error for regression)")
    callback = LifelongCallback(method, task, seed=seed, pad_to=pad_to)
    trainer.add_callback(callback)
    original = trainer.compute_loss

    def compute_loss(model: nn.Module, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        if method.model is None or not model.training:  # evaluation keeps the Trainer's loss
            return original(model, inputs, return_outputs=return_outputs,
                            num_items_in_batch=num_items_in_batch)
        loss, outputs = training_loss(method, model, inputs, task=task, pad_to=pad_to)
        return (loss, outputs) if return_outputs else loss

    trainer.compute_loss = compute_loss
    trainer.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it by the steps
    return callback


__all__ = ["LifelongCallback", "attach", "bind", "is_causal_lm", "release", "task_batches",
           "to_batch", "to_model_inputs", "training_loss"]
