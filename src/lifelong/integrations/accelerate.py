"""Continual learning in a plain Accelerate loop: attach once, two changed lines per step.

    from accelerate import Accelerator
    from lifelong.core import build_method
    from lifelong.integrations.accelerate import attach, task_batches, training_loss
    from lifelong.training.lifecycle import begin_task, end_task

    accelerator = Accelerator(gradient_accumulation_steps=2, mixed_precision="bf16")
    model, optimizer = accelerator.prepare(model, optimizer)
    method = attach(accelerator, model, optimizer, build_method("replay+ewc"))
    for task, loader in enumerate(loaders):
        loader = accelerator.prepare(loader)  # dicts of input_ids, attention_mask, labels
        begin_task(method, task)  # the task lifecycle: before_task (and, given data, training_data)
        for inputs in loader:
            with accelerator.accumulate(model):
                loss, outputs = training_loss(method, model, inputs, task=task)
                accelerator.backward(loss)
                optimizer.step()  # the method's gradient hooks run here, once per real update
                optimizer.zero_grad()
        end_task(method, task, task_batches(method, loader, task=task))

A method that reads the task's data before training (NCL counts its samples) gets it through
`begin_task`'s `data` argument, one `Batch` of the task's samples (the Trainer integration,
`lifelong.integrations.hf.LifelongCallback.on_train_begin`, builds it from the dataloader).

`training_loss` is lifelong's step on a Hugging Face batch (see `lifelong.integrations.hf`):
prepare_batch, forward, `Batch.loss` plus the method's penalty, a mean over the batch (which
`accelerator.backward` divides by the accumulation steps). The method is registered on the
*inner* torch optimizer, whose step Accelerate calls only when gradients are synchronised and,
with a `GradScaler`, after unscaling and only for steps it does not skip.

A model that is not a Hugging Face model is attached as it is; its loop adds the method's parts
to its own loss (`lifelong.core.Batch`):

    batch = method.prepare_batch(Batch(x, y))  # replay adds memory samples
    output = model(batch.x)
    loss = method.add_penalty(F.cross_entropy(output, batch.y), batch, output)  # LwF
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.method import Method
from . import require
from .hf import bind, task_batches, training_loss

require("accelerate")


def attach(accelerator: Any, model: nn.Module, optimizer: torch.optim.Optimizer,
           method: Method, *, seed: int | None = None) -> Method:
    """Attach `method` to an `accelerator.prepare`d model and optimizer; returns the method.

    The model is unwrapped (`accelerator.unwrap_model`), a Hugging Face one seen through a
    `LogitsAdapter` that shares its parameters; the hooks go on the inner torch optimizer.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # AcceleratedOptimizer's torch optimizer
    plain = accelerator.unwrap_model(model)
    if _is_hf_model(plain):
        return bind(method, plain, inner, seed=seed)
    return method.attach(plain, inner, seed=seed)


def _is_hf_model(model: nn.Module) -> bool:
    transformers = require("transformers")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    return isinstance(base, transformers.PreTrainedModel)


__all__ = ["attach", "task_batches", "training_loss"]
