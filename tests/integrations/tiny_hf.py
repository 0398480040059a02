"""Tiny Hugging Face models, token data and a reference loop for the integration tests."""

from __future__ import annotations

import pytest
import torch

from lifelong.core import Batch, Method, build_method
from lifelong.models.hf import LogitsAdapter
from lifelong.training.loop import training_step

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")

LENGTH = 10  # tokens per sequence (padding inside): one width, so replay can store samples


def tiny_bert(num_labels: int = 3, seed: int = 0) -> torch.nn.Module:
    """The issue's tiny BERT classifier, dropout off so two loops compute the same numbers."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=260, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=num_labels, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0)
    return transformers.AutoModelForSequenceClassification.from_config(config)


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=260, n_embd=32, n_layer=2, n_head=2, n_inner=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.AutoModelForCausalLM.from_config(config)


def token_rows(task: int, count: int = 8, num_labels: int = 3,
               causal: bool = False) -> list[dict[str, torch.Tensor]]:
    """`count` sequences of 4..LENGTH random tokens, right-padded with id 0, with a label that
    depends on the task (classification) or labels = the tokens, -100 at padding (causal LM)."""
    generator = torch.Generator().manual_seed(100 + task)
    ids = torch.randint(4, 260, (count, LENGTH), generator=generator)
    lengths = torch.randint(4, LENGTH + 1, (count,), generator=generator)
    mask = (torch.arange(LENGTH) < lengths[:, None]).long()
    ids = ids * mask
    if causal:
        labels = ids.masked_fill(mask == 0, -100)
    else:
        labels = (ids[:, 0] + task) % num_labels
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]}
            for i in range(count)]


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}


def as_lifelong_batch(rows: list[dict[str, torch.Tensor]], task: int) -> Batch:
    """The rows as lifelong's loop sees them, written out here: padding as -1 (classification)."""
    inputs = collate(rows)
    x = torch.where(inputs["attention_mask"] == 1, inputs["input_ids"], -1)
    return Batch(x, inputs["labels"], torch.full((len(rows),), task))


def training_args(tmp_path, **overrides):
    """A Trainer whose update is plain SGD on sequential batches, as the reference loop's."""
    settings = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no",
                    logging_steps=1, seed=0, per_device_train_batch_size=4, num_train_epochs=1,
                    optim="sgd", learning_rate=0.1, lr_scheduler_type="constant",
                    warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
                    train_sampling_strategy="sequential", disable_tqdm=True)
    return transformers.TrainingArguments(**{**settings, **overrides})


def lifelong_loop(model: torch.nn.Module, method: Method, tasks: list[list[dict]],
                  batch_size: int = 4, lr: float = 0.1) -> list[torch.Tensor]:
    """lifelong's own training_step over the tasks, batches in order; the per-step losses."""
    adapter = LogitsAdapter(model)
    optimizer = torch.optim.SGD(adapter.parameters(), lr=lr)
    method.attach(adapter, optimizer, seed=0)
    prepare = method.prepare_batch if method.uses("prepare_batch") else None
    penalty = method.penalty if method.uses("penalty") else None
    losses = []
    for task, rows in enumerate(tasks):
        data = as_lifelong_batch(rows, task)
        method.before_task(task)
        for start in range(0, len(data), batch_size):
            batch = data.select(slice(start, start + batch_size))
            _, loss = training_step(adapter, optimizer, batch, None, prepare, penalty)
            losses.append(loss.detach())
        method.after_task(task, data)
    method.detach()
    return losses


class CountingMethod(Method):
    """Records each transform_grads call and the gradient norm it saw (a test probe)."""

    name = "counting"
    description = "counts gradient transforms"

    def __init__(self) -> None:
        super().__init__()
        self.grad_norms: list[float] = []

    def transform_grads(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g.float()) for g in grads]))))


def method(spec: str) -> Method:
    params = {"ewc": {"lambda": 100.0}, "replay": {"memory_size": 6},
              "lwf": {"alpha": 2.0}}
    return build_method(spec, {name: params[name] for name in spec.split("+") if name in params})
