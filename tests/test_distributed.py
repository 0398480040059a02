"""Data-parallel training keeps every replica identical (2 processes, gloo, CPU).

Under DDP each replica trains on its own shard of every batch and DDP averages the gradients; any
statistic a method computes from its own samples (a Fisher, an importance, a reference gradient,
CBP's utilities, UPGD's curvature) must be reduced too, and random draws that change the weights
must agree. One spawn runs every row of tests/method_cases.py that this suite can run
(`distributed_worker.CASES`) twice:

- as shipped: after each task, every parameter and every tensor of `method.state_dict()` (the
  per-replica memories of replay-like methods aside) is bit-identical on both replicas;
- with the reductions and broadcasts of `lifelong.integrations.distributed` turned off: the methods
  that need them end with different weights on the two replicas (so each reduction is needed and the
  check above can fail), and the others stay identical (so they indeed need none);
- statistics over unevenly split samples (Fisher, KFAC, A-GEM's reference gradient, NCL's N) equal
  those of one process on all the samples.

Bit-identical, not close: with two replicas a sum over replicas is a + b on both (addition is
commutative), and gloo's all-reduce hands every rank the same result.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.multiprocessing as mp
from distributed_worker import CASES, worker

import lifelong.integrations.distributed
from lifelong.core import list_methods

WORLD = 2


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("ddp")
    out_file = folder / "results.json"
    mp.spawn(worker, args=(WORLD, str(folder / "init"), str(out_file)), nprocs=WORLD, join=True)
    with open(out_file) as stream:
        return json.load(stream)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_replicas_stay_identical(results: dict, case) -> None:
    found = results[case.label]["synchronised"]
    assert found == {"after task 0": [], "after task 1": []}, (
        f"{case.label}: tensors that differ between the replicas: {found}")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_without_reductions_the_replicas_diverge_exactly_where_needed(results: dict,
                                                                      case) -> None:
    found = results[case.label]["unsynchronised"]["after task 1"]
    diverged = [name for name in found if name.startswith("param ")]
    if case.needs_sync:
        assert diverged, f"{case.label}: the weights stayed equal without the reductions"
    else:
        assert not found, f"{case.label} differs between replicas with nothing to reduce: {found}"


@pytest.mark.slow
def test_reduced_statistics_are_those_of_all_the_samples(results: dict) -> None:
    """Shards of 30 and 18 samples: the Fisher, KFAC factors and A-GEM's reference gradient equal
    one process's on all 48 (float32 summation order aside), and NCL's N counts all 48; without
    the reductions each replica has its own (and a mean of the two shards' means, instead of
    sums and counts, is off by about 20% here)."""
    synchronised = results["global statistics"]["synchronised"]
    unsynchronised = results["global statistics"]["unsynchronised"]
    for name in ("fisher", "kfac", "agem"):
        assert synchronised[name] < 1e-5, (name, synchronised[name])
        assert unsynchronised[name] > 1e-3, (name, unsynchronised[name])
    assert synchronised["ncl data size"] == 1.0
    assert unsynchronised["ncl data size"] == 30 / 48


def test_every_method_that_reduces_is_covered() -> None:
    """Every registered method appears in a case (a new method must add one)."""
    covered = {name for case in CASES for name in case.spec.split("+")}
    missing = set(list_methods()) - covered - {"joint"}  # per-replica state: see its row's skip
    assert not missing, f"add a case to tests/method_cases.py for: {sorted(missing)}"


@pytest.mark.slow
def test_collective_helpers_across_replicas(results: dict) -> None:
    """Sum, mean and max over several buckets, dtypes and a non-contiguous tensor; the count;
    the generator broadcast; and `same_on_every_replica` both ways."""
    failed = [name for name, ok in results["helpers"].items() if not ok]
    assert not failed, failed


def test_helpers_are_no_ops_in_one_process() -> None:
    x = torch.arange(3.0)
    lifelong.integrations.distributed.all_reduce_mean_([x])
    lifelong.integrations.distributed.all_reduce_sum_([x])
    assert torch.equal(x, torch.arange(3.0))
    assert float(lifelong.integrations.distributed.all_reduce_sum_and_count_([x], 5)) == 5.0
    assert lifelong.integrations.distributed.all_reduce_count(7) == 7
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    lifelong.integrations.distributed.broadcast_generator_(generator)
    assert torch.equal(generator.get_state(), state)
