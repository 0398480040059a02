"""The worker of tests/test_distributed.py: one data-parallel replica (a process of a gloo group).

Every case trains a small model through `DistributedDataParallel` on a two-task toy scenario,
each replica on its own half of every batch, with the method attached to the inner module
(`ddp.module`), as a user's DDP loop would. After each task the replica's parameters and every
tensor of `method.state_dict()` are hashed, and rank 0 compares the hashes of all replicas (an
all-gather written here, independent of `lifelong.integrations.distributed`). The memories of
replay-like methods are left out of the comparison: each replica stores samples of its own shard.

Each case runs twice: as shipped, and with `lifelong.integrations.distributed.is_distributed`
patched to return False in every module that uses it, which turns every reduction and broadcast the
methods make into a no-op while DDP itself still averages the gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from helpers import tiny_mlp, toy_scenario
from method_cases import Case, cases_for, small_cnn
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import lifelong.integrations.distributed
from lifelong.core import build_method
from lifelong.core.batch import Batch, iter_batches
from lifelong.functional import diagonal_fisher
from lifelong.functional.kfac import kfac_fisher
from lifelong.scenarios import Scenario, split_by_classes
from lifelong.training.lifecycle import begin_task, end_task
from lifelong.training.loop import train_task

EPOCHS, BATCH_SIZE = 3, 8  # per replica: 24 samples per task, 9 steps per task
MEMORY_KEYS = ("memory", "memories")  # per-replica samples: legitimately different


# The rows of tests/method_cases.py that run here (the DDP flags are documented on its Case).
CASES = cases_for("ddp")


def make_model(kind: str, outputs: int) -> nn.Module:
    if kind == "mlp":
        return tiny_mlp(outputs=outputs, seed=0)
    if kind == "cnn":  # the 8 features as a 2x4 image: CBP's Conv2d -> flatten -> Linear path
        return small_cnn(outputs, seed=0)
    torch.manual_seed(0)
    from lifelong.models.hf import build_hf_model

    return build_hf_model("tiny-bert", outputs, vocab_size=VOCAB, dropout=0.1)


VOCAB = 260


def token_scenario() -> Scenario:
    """Two tasks of two classes on token ids (PAD = -1); the first token names the class."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(4, VOCAB, (96, 10), generator=generator)
    x[:, 7:] = -1
    y = torch.arange(4).repeat_interleave(24)
    x[:, 0] = 4 + y
    return split_by_classes(x, y, x[::4], y[::4], classes_per_task=2, scenario="task",
                            name="tokens")


def tensors_of(value: Any, prefix: str) -> list[tuple[str, Tensor]]:
    """Every tensor in a (nested) state, with a path for messages."""
    if isinstance(value, Tensor):
        return [(prefix, value)]
    if isinstance(value, dict):
        return [pair for key, item in value.items() if key not in MEMORY_KEYS
                for pair in tensors_of(item, f"{prefix}.{key}")]
    if isinstance(value, (list, tuple)):
        return [pair for i, item in enumerate(value) for pair in tensors_of(item, f"{prefix}[{i}]")]
    return []


def digests(model: nn.Module, method) -> dict[str, str]:
    named = [(f"param {n}", p) for n, p in model.named_parameters()]
    named += tensors_of(method.state_dict(), "state")
    return {name: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            + str(tuple(t.shape)) for name, t in named}


def mismatches(model: nn.Module, method) -> list[str]:
    """Names of the tensors that differ between the replicas (on rank 0; [] elsewhere)."""
    mine = digests(model, method)
    gathered: list[dict[str, str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    first = gathered[0]
    return sorted({name for other in gathered[1:] for name in set(first) | set(other)
                   if first.get(name) != other.get(name)})


def run_case(case: Case, rank: int, world: int) -> dict[str, list[str]]:
    scenario = token_scenario() if case.model == "bert" else toy_scenario("task")
    model = make_model(case.model, scenario.num_outputs)
    torch.manual_seed(1000 + rank)  # replicas differ in everything DDP does not make equal
    with torch.no_grad():  # even the initial weights: DDP broadcasts rank 0's
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01 * rank)
    # the LoRA family at 0.01: at 0.05 its adapters (scaled by alpha/r) reach NaN, and the
    # replicas then "agreed" on NaN weights (found by the divergence check, issue 15)
    lr = 0.01 if case.wraps_each_task else 0.05
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    method = build_method(case.spec, case.settings)
    seed = 7 + (rank if case.rank_seeds else 0)
    # the BERT body's pooler is not part of the classifier's output
    wrap = functools.partial(DistributedDataParallel, find_unused_parameters=case.model == "bert")
    if case.wraps_each_task:
        method.attach(model, optimizer, scenario.readout, seed=seed)
    else:
        ddp = wrap(model)
        method.attach(model, optimizer, scenario.readout, seed=seed)
    found = {}
    for t in (0, 1):
        data = scenario.tasks[t].train_data()
        shard = data.select(torch.arange(rank, len(data), world))  # this replica's half
        if case.model == "bert":  # token ids (the scenario stores features as floats)
            shard = dataclasses.replace(shard, x=shard.x.long())
        train_data = begin_task(method, t, shard, readout=scenario.readout)
        if case.wraps_each_task:  # after the task began: LoRA's new adapters are DDP's too
            ddp = wrap(model)
        train_task(ddp, optimizer, method, scenario.readout, train_data, batch_size=BATCH_SIZE,
                   epochs=EPOCHS, generator=torch.Generator().manual_seed(100 + t))
        end_task(method, t, shard)
        found[f"after task {t}"] = mismatches(model, method)
    return found


@contextlib.contextmanager
def synchronisation_off() -> Iterator[None]:
    """`is_distributed()` answers False in every module holding it: no reduction, no broadcast
    (DDP itself still averages the gradients)."""
    original = lifelong.integrations.distributed.is_distributed
    holders = [m for m in list(sys.modules.values())
               if getattr(m, "is_distributed", None) is original]
    for module in holders:
        module.is_distributed = lambda: False
    try:
        yield
    finally:
        for module in holders:
            module.is_distributed = original


def relative_error(found: list[Tensor], expected: list[Tensor]) -> float:
    return max(float((f - e).abs().max() / e.abs().max()) for f, e in zip(found, expected))


def global_statistics(rank: int, world: int) -> dict[str, float]:
    """Statistics over samples split unevenly (30 and 18) between the replicas, against those of
    one process on all 48: the relative error of the Fisher, the KFAC factors and A-GEM's
    reference gradient, and NCL's data size N."""
    scenario = toy_scenario("task")
    scenario.readout.begin_task(0)
    model = tiny_mlp(outputs=scenario.num_outputs, seed=0)  # the same on every replica
    data = scenario.tasks[0].train_data()
    shard = data.select(slice(0, 30) if rank == 0 else slice(30, None))
    select = scenario.readout.select
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]

    def fisher(d: Batch) -> list[Tensor]:
        return list(diagonal_fisher(model, iter_batches(d, 8), select, kind="true").values())

    def kfac(d: Batch) -> list[Tensor]:
        return [t for f in kfac_fisher(model, layers, list(iter_batches(d, 8)), select)
                for t in (f.A, f.G)]

    agem = build_method("agem", {"agem": {"ref_batch_size": 64}})
    agem.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), scenario.readout, seed=0)
    agem.after_task(0, shard)  # the memory holds this replica's samples, all of them sampled
    params = list(model.parameters())
    found = {"fisher": fisher(shard), "kfac": kfac(shard),
             "agem": agem.reference_gradient(params)}
    ncl = build_method("ncl")
    ncl.training_data(0, shard)
    with synchronisation_off():
        expected = {"fisher": fisher(data), "kfac": kfac(data),
                    "agem": agem.loss_gradients(data, params)}
    errors = {name: relative_error(found[name], expected[name]) for name in found}
    errors["ncl data size"] = ncl.data_size / len(data)
    return errors


def helper_checks(rank: int, world: int) -> dict[str, bool]:
    """`lifelong.integrations.distributed`'s collectives on tensors of several dtypes and layouts
    (tiny buckets force several collectives), the generator broadcast and
    `same_on_every_replica`."""
    def matrix(r: int) -> Tensor:
        return torch.arange(12.0).reshape(3, 4) + 10 * r

    def values() -> list[Tensor]:  # float32, float64, a non-contiguous view, int64
        return [matrix(rank), matrix(rank).double(), matrix(rank).T, torch.tensor([3 + rank])]

    expected = sum(matrix(r) for r in range(world))
    summed, averaged, largest = values(), values(), values()
    original = lifelong.integrations.distributed._BUCKET_BYTES
    lifelong.integrations.distributed._BUCKET_BYTES = 40  # about one tensor per bucket
    try:
        lifelong.integrations.distributed.all_reduce_sum_(summed)
        lifelong.integrations.distributed.all_reduce_mean_(averaged[:3])
        lifelong.integrations.distributed.all_reduce_max_(largest)
    finally:
        lifelong.integrations.distributed._BUCKET_BYTES = original
    total = lifelong.integrations.distributed.all_reduce_sum_and_count_([torch.zeros(2)], 5 + rank)
    generator = torch.Generator().manual_seed(rank)
    lifelong.integrations.distributed.broadcast_generator_(generator)
    draws = torch.rand(4, generator=generator)
    return {
        "sum": torch.equal(summed[0], expected) and torch.equal(summed[1], expected.double())
        and torch.equal(summed[2], expected.T) and int(summed[3]) == sum(3 + r for r in
                                                                        range(world)),
        "mean": torch.equal(averaged[0], expected / world)
        and torch.equal(averaged[2], (expected / world).T),
        "max": torch.equal(largest[0], matrix(world - 1)) and int(largest[3]) == 2 + world,
        "count": float(total) == sum(5 + r for r in range(world)),
        "generator": torch.equal(draws, torch.rand(4, generator=torch.Generator().manual_seed(0))),
        "same detects a difference": not lifelong.integrations.distributed.same_on_every_replica(
            torch.tensor([float(rank)])),
        "same accepts equal tensors":
            lifelong.integrations.distributed.same_on_every_replica(torch.ones(3)),
    }


def worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=180))
    try:
        results: dict[str, dict[str, Any]] = {"helpers": helper_checks(rank, world)}
        for synchronised in (True, False):
            key = "synchronised" if synchronised else "unsynchronised"
            with contextlib.nullcontext() if synchronised else synchronisation_off():
                results.setdefault("global statistics", {})[key] = global_statistics(rank, world)
            for case in CASES:
                try:
                    with contextlib.nullcontext() if synchronised else synchronisation_off():
                        found = run_case(case, rank, world)
                except Exception as error:
                    raise RuntimeError(f"case {case.label} ({key}) failed") from error
                results.setdefault(case.label, {"needs_sync": case.needs_sync})[key] = found
        if rank == 0:
            with open(out_file, "w") as stream:
                json.dump(results, stream, indent=1)
    finally:
        dist.destroy_process_group()
    # About one run in five, a replica aborted after this point ("terminate called without an
    # active exception" while the interpreter tore down threads of the C++ runtime, seen with
    # and without this project's kernels): the results were complete, but mp.spawn reported a
    # SIGABRT. A replica that got here has done its work; leave without the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
