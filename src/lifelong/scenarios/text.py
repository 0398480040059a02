"""Text scenarios: a sequence of text tasks, tokenised for an encoder or a decoder.

Every sample becomes one row of packed token ids (`lifelong.models.hf.PAD` = -1 at padding,
all rows `max_length` long so that replay can mix tasks). Three formats:

- `classify` (an encoder with a Linear head): x = the tokenised text, y = the label, read out as
  in `split_by_classes`: task-incremental (one head per task, or with `head="shared"` one unit
  per distinct label name read per task), class-incremental (one unit per distinct label name:
  Amazon's and Yelp's five ratings share units) or domain-incremental.
- `generate` (a decoder, instruction style as in O-LoRA / MIGU): x = an instruction naming the
  task and its options, the text, "Answer:", then the label's words and the end-of-sequence
  token; y[i] is the token x[i + 1] where i predicts an answer token, IGNORE (-100) elsewhere.
  Accuracy is exact match: every answer token (and the end token) is the greedy choice, which is
  exactly when greedy decoding generates the label and stops (`training.evaluate`).
- `mlm` / `clm`: continual pre-training on each task's raw text (DAS's domains). `mlm` masks
  15% of the tokens (80% [MASK], 10% a random token, 10% kept; BERT) once, with a seed, and y holds
  the original ids there; `clm` predicts every next token. Accuracy is per token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from ..core.batch import IGNORE, Batch
from ..core.readout import Readout
from ..data.text import TextTaskData
from ..errors import ConfigError
from .task import Scenario, Task

TextFormat = Literal["classify", "generate", "mlm", "clm"]
FORMATS: tuple[str, ...] = ("classify", "generate", "mlm", "clm")
PAD = -1  # as lifelong.models.hf.PAD (not imported: that module needs no transformers either)


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """What a model for this scenario must be: its tokenizer's model, the format, the vocabulary."""

    model: str
    format: TextFormat
    vocab_size: int
    pad_token_id: int
    max_length: int


def instruction(task: TextTaskData) -> str:
    """The generation prompt's first line (O-LoRA style: name the task, list the options)."""
    return f"Task: {task.name}. Choose one of: {', '.join(task.labels)}."


def text_scenario(tasks: Sequence[TextTaskData], tokenizer: Any, *, model: str,
                  format: TextFormat = "classify", scenario: str = "task",
                  head: str = "multi", max_length: int = 128, mask_unseen: bool = True,
                  name: str = "text", seed: int = 0, mlm_probability: float = 0.15) -> Scenario:
    """The scenario of `tasks` (in this order) for the model whose `tokenizer` is given."""
    if format not in FORMATS:
        raise ConfigError(f"text format '{format}' is not accepted; use one of {FORMATS}")
    if max_length < 8:
        raise ConfigError(f"max_length must be at least 8 tokens, got {max_length}")
    if not tasks:
        raise ConfigError("a text scenario needs at least one task")
    if format == "mlm" and tokenizer.mask_token_id is None:
        raise ConfigError("format mlm needs a tokenizer with a mask token (an encoder such as "
                          "BERT); use clm for a decoder")
    if format == "classify":
        readout, unit_of = _classification_readout(tasks, scenario, head, mask_unseen)
    else:  # every task reads the whole vocabulary
        vocab = len(tokenizer)
        readout = Readout("domain", vocab, [[] for _ in tasks])
        unit_of = None
    built = []
    for t, task in enumerate(tasks):
        def make(split: str, t: int = t, task: TextTaskData = task) -> Batch:
            texts = task.train_texts if split == "train" else task.test_texts
            labels = task.train_labels if split == "train" else task.test_labels
            if format == "classify":
                x = _encode(tokenizer, texts, max_length)
                # task/domain: the label's position in the task's logits; class: its unit
                y = torch.as_tensor(np.asarray(unit_of[t])[labels] if scenario == "class"
                                    else labels, dtype=torch.long)
            elif format == "generate":
                x, y = _encode_generation(tokenizer, task, texts, labels, max_length)
            else:
                x = _encode(tokenizer, texts, max_length)
                rng = torch.Generator().manual_seed(seed * 1000 + t * 2 + (split == "test"))
                x, y = (_mask_tokens(tokenizer, x, mlm_probability, rng) if format == "mlm"
                        else _next_tokens(x))
            return Batch(x, y, torch.full((len(x),), t, dtype=torch.long))

        classes = tuple(range(len(task.labels)))
        built.append(Task(t, task.name, classes, lambda m=make: m("train"),
                          lambda m=make: m("test")))
    spec = TextSpec(model, format, len(tokenizer), _pad_id(tokenizer), max_length)
    kind = scenario if format == "classify" else "domain"
    result = Scenario(name, kind, built, readout, (max_length,),
                      [f"{task.name}:{label}" for task in tasks for label in task.labels])
    result.text = spec
    return result


def _classification_readout(tasks: Sequence[TextTaskData], scenario: str, head: str,
                            mask_unseen: bool) -> tuple[Readout, list[list[int]]]:
    """The readout and, per task, the unit of each of its labels. Task-incremental with
    `head="shared"`: one unit per distinct label name, each task reading its own labels' units
    (the classifier's analogue of a decoder writing the label's words after the task's
    instruction)."""
    names: dict[str, int] = {}  # a unit per distinct label name, in order of appearance
    by_name = [[names.setdefault(label, len(names)) for label in t.labels] for t in tasks]
    if scenario == "task" and head == "shared":
        return Readout("task", len(names), by_name), by_name
    if scenario == "task":
        offsets = np.cumsum([0] + [len(t.labels) for t in tasks])
        units = [list(range(offsets[i], offsets[i] + len(t.labels))) for i, t in enumerate(tasks)]
        return Readout("task", int(offsets[-1]), units), units
    if scenario == "domain":
        width = max(len(t.labels) for t in tasks)
        units = [list(range(len(t.labels))) for t in tasks]
        return Readout("domain", width, units), units
    if scenario == "class":
        return Readout("class", len(names), by_name, mask_unseen=mask_unseen), by_name
    raise ConfigError(f"scenario '{scenario}' is not accepted; use task, domain or class")


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
               else tokenizer.eos_token_id or 0)


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> torch.Tensor:
    encoded = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length",
                        return_tensors="pt")
    return encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, PAD)


def _encode_generation(tokenizer: Any, task: TextTaskData, texts: list[str],
                       labels: np.ndarray, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Instruction + text (truncated to fit) + "Answer:" + the label's words + end token."""
    if tokenizer.eos_token_id is None:
        raise ConfigError("generation needs a tokenizer with an end-of-sequence token")
    head = tokenizer(instruction(task), add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id in head[1:]:  # some tokenizers end every text with it
        head = head[:head.index(tokenizer.eos_token_id, 1)]
    tail = tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
    answers = [tokenizer(" " + label, add_special_tokens=False)["input_ids"]
               + [tokenizer.eos_token_id] for label in task.labels]
    bodies = tokenizer(["\n" + text for text in texts], add_special_tokens=False)["input_ids"]
    x = torch.full((len(texts), max_length), PAD, dtype=torch.long)
    y = torch.full((len(texts), max_length), IGNORE, dtype=torch.long)
    for row, (body, label) in enumerate(zip(bodies, labels)):
        answer = answers[int(label)]
        room = max_length - len(head) - len(tail) - len(answer)
        if room < 1:
            raise ConfigError(f"max_length {max_length} leaves no room for the text of task "
                              f"{task.name} after its instruction ({len(head)} tokens) and "
                              f"answer '{task.labels[label]}'; raise max_length")
        prompt = head + body[:room] + tail
        sequence = prompt + answer
        x[row, :len(sequence)] = torch.tensor(sequence)
        start = len(prompt) - 1  # position predicting the first answer token
        y[row, start:start + len(answer)] = torch.tensor(answer)
    return x, y


def _next_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.full_like(x, IGNORE)
    y[:, :-1] = x[:, 1:]
    return x, y.masked_fill(y < 0, IGNORE)


def _mask_tokens(tokenizer: Any, x: torch.Tensor, probability: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: of the `probability` chosen real tokens, 80% [MASK], 10% random, 10% kept."""
    special = torch.zeros_like(x, dtype=torch.bool)
    for token in tokenizer.all_special_ids:
        special |= x == token
    candidates = (x >= 0) & ~special
    chosen = (torch.rand(x.shape, generator=generator) < probability) & candidates
    y = torch.where(chosen, x, torch.full_like(x, IGNORE))
    draw = torch.rand(x.shape, generator=generator)
    masked = x.clone()
    masked[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (draw >= 0.8) & (draw < 0.9)
    masked[swap] = torch.randint(len(tokenizer), (int(swap.sum()),), generator=generator)
    return masked, y
