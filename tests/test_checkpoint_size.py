"""A checkpoint is the size of the tensors it holds: every tensor a method keeps owns exactly its
data. A slice of a larger tensor (the rows of a class cut to the memory's quota, a reservoir not
yet full) would be written whole by `torch.save`: 20x the data with a class-balanced memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from method_cases import CASES

from lifelong.core import get_method_class
from lifelong.core.batch import Batch
from lifelong.runs.config import RunConfig
from lifelong.runs.experiment import run_experiment
from lifelong.training.checkpoint import CHECKPOINT

# 2 class-incremental tasks of 5 digits (about 145 training samples per class), 5 steps each
RUN = {"benchmark": "split-digits", "scenario": "class", "iterations": 5,
       "benchmark_params": {"classes_per_task": 5}, "device": "cpu", "keep_checkpoint": True}

# each method of the issue with the benchmark's settings (the memories of split-digits: replay
# and agem 200 samples, der and derpp 500 samples, of which 320 are filled here), and replay's
# class-balanced memory
DEFAULTS = [("replay", {}), ("replay-class-balanced", {"replay": {"buffer": "class-balanced"}}),
            ("agem", {}), ("der", {}), ("derpp", {}), ("gem", {}), ("joint", {})]
# every row of the shared method table whose method keeps data (with their small memories, a
# wider model, so the fixed part of the file, such as Python's random state, stays small)
STORING = [c for c in CASES if c.model == "mlp"
           and any(get_method_class(name).stores_data for name in c.names)]


def tensor_bytes(state: Any) -> int:
    """numel x element size of every tensor in a loaded state (dicts, lists, tuples)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(value) for value in state)
    return 0


def checkpoint_ratio(directory: Path, method: str, params: dict, hidden: list[int]) -> float:
    run_experiment(RunConfig.from_dict({**RUN, "method": method, "method_params": params,
                                        "hidden": hidden}), directory, progress=False)
    path = directory / CHECKPOINT
    held = tensor_bytes(torch.load(path, map_location="cpu", weights_only=True))
    return path.stat().st_size / held


@pytest.mark.parametrize("label, params", DEFAULTS, ids=[label for label, _ in DEFAULTS])
def test_the_checkpoint_of_each_data_keeping_method_is_the_size_of_its_tensors(
        tmp_path: Path, label: str, params: dict) -> None:
    ratio = checkpoint_ratio(tmp_path, label.split("-")[0], params, [100])
    assert ratio <= 1.2, f"{label}: the checkpoint is {ratio:.2f}x the bytes of its tensors"


@pytest.mark.parametrize("case", STORING, ids=[c.label for c in STORING])
def test_the_checkpoint_of_every_data_keeping_case_is_the_size_of_its_tensors(
        tmp_path: Path, case: Any) -> None:
    ratio = checkpoint_ratio(tmp_path, case.spec, dict(case.settings), [400])
    assert ratio <= 1.2, f"{case.label}: the checkpoint is {ratio:.2f}x the bytes of its tensors"


def test_compact_copies_views_only() -> None:
    whole = torch.arange(40.0).view(10, 4)
    batch = Batch(whole, torch.arange(10), None, {"logits": whole[:, :2]})
    kept = batch.compact()
    assert kept.x is whole and kept.y is batch.y  # already their own: not copied
    part = batch.select(slice(2, 5)).compact()
    for tensor, expected in ((part.x, whole[2:5]), (part.extras["logits"], whole[2:5, :2])):
        assert torch.equal(tensor, expected)
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
