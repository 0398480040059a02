"""The one table of method cases that the shared suites run: conformance
(tests/methods/test_conformance.py), BatchNorm (tests/methods/test_batchnorm.py) and
data-parallel training (tests/test_distributed.py through tests/distributed_worker.py).

Each row is a label, a method spec, its settings (other keys keep their defaults) and the flags
the suites need. A method has a row per real mode (a Fisher kind, a buffer, an order of the
utility, ...), not only its default; settings are small so that every row runs in milliseconds.
Adding a method means adding rows; a row that cannot run in a suite names the suite in `skip`
with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from torch import nn

from lifelong.core import Method, build_method, get_method_class

SUITES = ("conformance", "batchnorm", "ddp")
MODELS = ("mlp", "cnn", "bert")


@dataclasses.dataclass(frozen=True)
class Case:
    label: str
    spec: str
    settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # mlp: a one-hidden-layer MLP; cnn: the toy's 8 features as a 2x4 image through a Conv2d
    # (Conv2d -> flatten -> Linear paths); bert: a tiny BERT classifier on token ids, for the
    # methods that need a transformer
    model: str = "mlp"
    # DDP only: seed each replica's method differently (as `seed + rank` would)
    rank_seeds: bool = False
    # DDP only: without the reductions/broadcasts of lifelong.integrations.distributed, the
    # replicas must diverge (True) or must stay identical, having nothing to reduce (False)
    needs_sync: bool = True
    # DDP only: methods that add parameters (LoRA adapters) are attached, and each task begun,
    # before the model is wrapped, and the wrapper is made again for every task: DDP reduces the
    # gradients of the parameters it was given. The others are attached to `ddp.module`.
    wraps_each_task: bool = False
    # suite name -> why this row cannot run there
    skip: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The registered methods the spec names."""
        return self.spec.split("+")

    @property
    def needs_transformer(self) -> bool:
        return any(get_method_class(name).needs_transformer for name in self.names)

    def build(self, **extra: Mapping[str, Any]) -> Method:
        """The method of this row; `extra` adds settings (e.g. those of a composed replay)."""
        return build_method(self.spec, {**self.settings, **extra})

    def __str__(self) -> str:  # the test id
        return self.label


def cases_for(suite: str, where: Callable[[Case], bool] | None = None) -> list[Case]:
    """The rows that `suite` can run (and that satisfy `where`)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; one of {SUITES}")
    return [c for c in CASES if suite not in c.skip and (where is None or where(c))]


def each_case(suite: str, where: Callable[[Case], bool] | None = None):
    """`@each_case("conformance")`: parametrise a test over `case`, one test id per label."""
    cases = cases_for(suite, where)
    return pytest.mark.parametrize("case", cases, ids=[c.label for c in cases])


def small_cnn(outputs: int, batch_norm: bool = False, seed: int = 0) -> nn.Module:
    """The toy's 8 features as a 1x2x4 image -> Conv2d(1, 4, 2) [-> BatchNorm2d] -> ReLU ->
    flatten -> Linear: CBP's and the introspection's Conv2d -> flatten -> Linear path."""
    torch.manual_seed(seed)
    norm = [nn.BatchNorm2d(4)] if batch_norm else []
    return nn.Sequential(nn.Unflatten(1, (1, 2, 4)), nn.Conv2d(1, 4, 2, padding=1), *norm,
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 5, outputs))


# Replacements every few steps (the defaults replace one unit in 10,000 steps after 100).
FAST_CBP = {"replacement_rate": 0.2, "maturity_threshold": 2}
AGEM = {"memory_size": 24, "ref_batch_size": 16}
LOTTERY = {"rounds": 2, "round_steps": 4}  # prunes at steps 4 and 8 of 6-18 step tasks
# A pruning round rewinds the running statistics with the weights (its own test in
# test_batchnorm.py), so the count of training passes there does not apply.
REWINDS = {"batchnorm": "a pruning round rewinds the running statistics with the weights"}
# The proxy KL needs dropout, which the round trip cannot redraw: conformance's BERT has none.
PROXY_KL = {"conformance": "the proxy KL needs dropout, which a restored run cannot redraw"}
# Rows that differ from another only in seeding each DDP replica differently.
DDP_ONLY = {suite: "the configuration of another row; only DDP seeds each replica differently"
            for suite in ("conformance", "batchnorm")}
# needs_sync=False: the method's statistics are made of DDP's averaged gradients and the (equal)
# weights, or of the per-replica memories that the DDP comparison leaves out: nothing to reduce.
CASES = [
    Case("naive", "naive", needs_sync=False),
    Case("joint", "joint", skip={
        "ddp": "its state holds the samples of the replica's own shards (as a memory does)"}),
    # --- regularisation ---
    Case("ewc", "ewc", {"ewc": {"lambda": 10.0}}),
    Case("ewc-online", "ewc", {"ewc": {"lambda": 10.0, "mode": "online", "gamma": 0.9}}),
    Case("ewc-sampled", "ewc", {"ewc": {"lambda": 10.0, "fisher": "sampled"}}),
    Case("ewc-empirical-subset", "ewc", {"ewc": {"lambda": 10.0, "fisher": "empirical",
                                                 "fisher_samples": 20, "fisher_batch_size": 6}}),
    Case("mas", "mas", {"mas": {"lambda": 1.0}}),
    Case("mas-subset", "mas", {"mas": {"lambda": 1.0, "importance_samples": 20,
                                       "importance_batch_size": 6}}),
    Case("si", "si", {"si": {"c": 1.0}}, needs_sync=False),
    Case("si-damped", "si", {"si": {"c": 1.0, "xi": 1.0}}, needs_sync=False),
    Case("l2", "l2", {"l2": {"lambda": 0.1}}, needs_sync=False),
    Case("l2-to-zero", "l2", {"l2": {"lambda": 0.1, "anchor": "zero"}}, needs_sync=False),
    Case("l1", "l1", needs_sync=False),
    Case("l1-ticket", "l1", {"l1": {"apply_ticket": True, "ticket_fraction": 0.5}},
         needs_sync=False),
    Case("lwf", "lwf", needs_sync=False),
    Case("lwf-tasks", "lwf", {"lwf": {"weighting": "tasks", "temperature": 1.0}},
         needs_sync=False),
    Case("ncl", "ncl"),
    Case("ncl-diagonal", "ncl", {"ncl": {"fisher": "diagonal"}}),
    Case("ncl-kfac-ewc", "ncl", {"ncl": {"precondition": False, "fisher_kind": "empirical"}}),
    Case("ncl-trust-region", "ncl", {"ncl": {"trust_region": 0.5, "gamma": 0.9}}),
    # --- memory ---
    Case("replay", "replay", {"replay": {"memory_size": 24}}, needs_sync=False),
    Case("replay-class-balanced", "replay",
         {"replay": {"memory_size": 24, "buffer": "class-balanced"}}, needs_sync=False),
    Case("replay-per-class-tasks", "replay",
         {"replay": {"buffer": "class-balanced", "memory_per_class": 5, "weighting": "tasks",
                     "replay_batch_size": 4}}, needs_sync=False),
    Case("agem", "agem", {"agem": AGEM}),
    Case("agem-reservoir", "agem",  # a small reference batch: conflicts happen in 9 steps
         {"agem": {"memory_size": 8, "ref_batch_size": 4, "buffer": "reservoir"}}),
    Case("agem-per-class", "agem", {"agem": {"memory_per_class": 5, "ref_batch_size": 8}}),
    Case("gem", "gem", {"gem": {"memory_per_task": 16}}),
    Case("gem-no-margin", "gem", {"gem": {"memory_per_task": 8, "margin": 0.0}}),
    Case("der", "der", {"der": {"memory_size": 24}}, needs_sync=False),
    Case("der-labels", "der", {"der": {"memory_size": 24, "beta": 0.2, "replay_batch_size": 4}},
         needs_sync=False),
    Case("derpp", "derpp", {"derpp": {"memory_size": 24}}, needs_sync=False),
    # --- masks and pruning ---
    Case("spg", "spg"),
    Case("spg-step", "spg", {"spg": {"mask": "step", "importance_samples": 20,
                                     "importance_batch_size": 6}}),
    Case("lottery", "lottery", {"lottery": LOTTERY}, needs_sync=False, skip=REWINDS),
    Case("lottery-rewind-step", "lottery", {"lottery": {**LOTTERY, "rewind_step": 2}},
         needs_sync=False, skip=REWINDS),
    Case("lottery-no-round", "lottery", {"lottery": {"round_steps": 10_000}}, needs_sync=False),
    Case("migu", "migu"),
    Case("migu-unmasked-first", "migu", {"migu": {"mask_first_task": False, "threshold": 0.5}}),
    Case("migu-free-head", "migu", {"migu": {"mask_head": False}}),
    # --- plasticity ---
    Case("cbp", "cbp", {"cbp": FAST_CBP}),
    Case("cbp-defaults", "cbp", skip={  # no unit matures in these short runs
        "ddp": "no replacement in 18 steps: nothing can make the weights diverge"}),
    Case("cbp-adaptable-cnn", "cbp", {"cbp": {**FAST_CBP, "utility": "adaptable"}}, model="cnn"),
    Case("cbp-kaiming", "cbp", {"cbp": {**FAST_CBP, "init": "kaiming", "decay_rate": 0.5}}),
    Case("upgd-first", "upgd", {"upgd": {"sigma": 0.01}}, needs_sync=False),
    Case("upgd-second", "upgd", {"upgd": {"utility": "second", "sigma": 0.01}}),
    Case("upgd-seeded-by-rank", "upgd", {"upgd": {"sigma": 0.01}}, rank_seeds=True,
         skip=DDP_ONLY),
    Case("upgd-feature-local", "upgd",
         {"upgd": {"level": "feature", "scaling": "local", "sigma": 0.01}}, needs_sync=False),
    Case("upgd-second-feature", "upgd",
         {"upgd": {"utility": "second", "level": "feature", "sigma": 0.01}}),
    Case("upgd-non-protecting", "upgd",
         {"upgd": {"protect": False, "sigma": 0.01, "weight_decay": 0.01}}, needs_sync=False),
    Case("shrink-perturb", "shrink-perturb", {"shrink-perturb": {"noise_std": 0.01}},
         needs_sync=False),
    Case("shrink-perturb-seeded-by-rank", "shrink-perturb",
         {"shrink-perturb": {"noise_std": 0.01}}, rank_seeds=True,
         skip=DDP_ONLY),
    Case("shrink-perturb-task", "shrink-perturb",
         {"shrink-perturb": {"mode": "task", "shrink": 0.8, "perturb": 0.2}}, rank_seeds=True),
    # --- adapters (LoRA on the MLP's Linear layers) ---
    Case("lora", "lora", {"lora": {"r": 2}}, wraps_each_task=True, needs_sync=False),
    Case("lora-frozen-head", "lora", {"lora": {"r": 2, "head": "freeze", "lr": 0.1}},
         wraps_each_task=True, needs_sync=False),
    # α/r = 4 as with the defaults (32/8): a step moves the weights about (α/r)² lr, and at α/r = 16
    # the second task's fresh adapter diverges under lr 0.05 with momentum
    Case("inc-lora", "inc-lora", {"inc-lora": {"r": 2, "alpha": 8.0}}, wraps_each_task=True,
         needs_sync=False),
    Case("o-lora", "o-lora", {"o-lora": {"r": 2}}, wraps_each_task=True, needs_sync=False),
    Case("o-lora-reference", "o-lora",
         {"o-lora": {"r": 2, "norms": "reference", "lambda_2": 0.01}}, wraps_each_task=True,
         needs_sync=False),
    # --- transformers ---
    Case("das", "das", {"das": {"general": "none"}}, model="bert"),
    Case("das-contrastive", "das", {"das": {"general": "none", "contrastive": 1.0}},
         model="bert"),
    Case("das-proxy-kl", "das", {"das": {"contrastive": 1.0}}, model="bert", skip=PROXY_KL),
    # --- compositions ---
    Case("agem+cbp", "agem+cbp", {"agem": AGEM, "cbp": FAST_CBP}),
    Case("replay+ewc", "replay+ewc", {"replay": {"memory_size": 24}, "ewc": {"lambda": 10.0}}),
]
