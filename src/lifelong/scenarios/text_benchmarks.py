"""The text benchmarks of O-LoRA / MIGU (Wang et al. 2023; Du et al. 2024) and DAS's domains.

- `text-standard`: the "standard CL benchmark" dbpedia, amazon, yahoo, agnews in its three
  published orders. Yahoo Answers is not available offline: Yelp (the same Zhang et al. 2015
  family, 5 ratings like Amazon) takes its place, and the scenario's name says so.
- `text-long`: the long-sequence benchmark's 15 tasks in O-LoRA's order, without Yahoo (14).
- `text-domains`: continual pre-training (Ke et al. 2023's DAS): each task is a domain's raw text
  with the masked-LM loss (an encoder) or the causal-LM loss (a decoder).

Encoders classify (a Linear head over the pooled tokens); decoders generate the label's words
after an instruction (`lifelong.scenarios.text`). The papers train T5-large or LLaMA for 1 epoch
per task (lr 1e-3 with LoRA, batch 8, constant schedule) on 1000 samples per class and more; here
the defaults fit a CPU: all-MiniLM-L6-v2, 1000 train and 500 test samples per task, 128 tokens,
AdamW 5e-5 (full fine-tuning), batch 16, 1 epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.config import Config, option
from ..data.text import TEXT_TASKS, load_text_task
from ..errors import ConfigError
from .task import Scenario

STANDARD_ORDERS = {  # yahoo → yelp (not available offline)
    1: ("dbpedia", "amazon", "yelp", "agnews"),
    2: ("dbpedia", "amazon", "agnews", "yelp"),
    3: ("yelp", "amazon", "agnews", "dbpedia"),
}
LONG_ORDER = tuple(t for t in TEXT_TASKS if t != "yahoo")
DOMAINS = ("agnews", "amazon", "yelp", "dbpedia")


@dataclasses.dataclass
class TextOptions(Config):
    _owner = "benchmark"
    tasks: str = option("", "comma-separated task names, replacing the benchmark's task order")
    format: str = option("auto", "auto (classify with an encoder, generate with a decoder), "
                         "classify or generate")
    train_per_task: int | None = option(1000, "training samples per task (drawn at random; "
                                        "none: all)", low=1)
    test_per_task: int | None = option(500, "test samples per task (none: all)", low=1)
    max_length: int = option(128, "tokens per sample (longer texts are truncated)", low=8)
    source: str = option("local", "local (text/<task>/ in the data directory), hub (the known "
                         "tasks' Hugging Face datasets) or hub:DATASET_ID")
    sample_seed: int = option(0, "seed of the sample subsets (the same for every method)", low=0)


@dataclasses.dataclass
class StandardOptions(TextOptions):
    order: int = option(1, "task order: 1 dbpedia-amazon-yelp-agnews, 2 dbpedia-amazon-agnews-"
                        "yelp, 3 yelp-amazon-agnews-dbpedia (yelp stands in for yahoo)",
                        low=1, high=3)


@dataclasses.dataclass
class DomainOptions(TextOptions):
    format: str = option("auto", "auto (mlm with an encoder, clm with a decoder), mlm or clm")
    mlm_probability: float = option(0.15, "mlm: fraction of tokens masked", low=0, high=1,
                                    low_open=True)


def task_order(benchmark: str, opts: Any) -> tuple[list[str], str]:
    """The tasks, and what the scenario's name should say about them."""
    if opts.tasks:
        names = [t.strip() for t in opts.tasks.split(",") if t.strip()]
        if "yahoo" in names and opts.source == "local":
            raise ConfigError("yahoo is not available offline; leave it out, use yelp in its "
                              "place, or load it with benchmark.source=hub")
        return names, ""
    if benchmark == "text-standard":
        return list(STANDARD_ORDERS[opts.order]), f" (order {opts.order}; yelp in place of yahoo)"
    if benchmark == "text-long":
        return list(LONG_ORDER), " (14 of 15 tasks: yahoo left out, not available offline)"
    return list(DOMAINS), ""


def build_text(benchmark: str, opts: Any, scenario: str, *, data_dir: str | None,
               head: str = "multi", mask_unseen: bool, model: str | None) -> Scenario:
    """The scenario of a text benchmark for `model` (hf:NAME), whose tokenizer it uses."""
    from ..models.hf import is_decoder, load_tokenizer
    from .text import text_scenario

    if not model or not model.startswith("hf:"):
        raise ConfigError(f"benchmark {benchmark} needs a Hugging Face model (--model "
                          f"hf:NAME_OR_PATH, e.g. hf:all-MiniLM-L6-v2 or hf:tiny-bert), got "
                          f"'{model}'")
    name = model[3:]
    decoder = is_decoder(name)
    fmt = opts.format
    if fmt == "auto":
        if benchmark == "text-domains":
            fmt = "clm" if decoder else "mlm"
        else:
            fmt = "generate" if decoder else "classify"
    allowed = ("mlm", "clm") if benchmark == "text-domains" else ("classify", "generate")
    if fmt not in allowed:
        raise ConfigError(f"benchmark.format '{fmt}' is not accepted by {benchmark}; use auto or "
                          f"one of {', '.join(allowed)}")
    if fmt in ("generate", "clm") and not decoder:
        raise ConfigError(f"format {fmt} needs a decoder (causal LM); {name} is an encoder")
    names, note = task_order(benchmark, opts)
    tasks = [load_text_task(t, data_dir, source=opts.source).subset(
        opts.train_per_task, opts.test_per_task, opts.sample_seed + i)
        for i, t in enumerate(names)]
    return text_scenario(tasks, load_tokenizer(name), model=name, format=fmt, scenario=scenario,
                         head=head, max_length=opts.max_length, mask_unseen=mask_unseen,
                         name=benchmark + note, seed=opts.sample_seed,
                         mlm_probability=getattr(opts, "mlm_probability", 0.15))
