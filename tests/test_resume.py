"""Checkpoints and resume: a run interrupted at any point and resumed ends with exactly the
accuracy matrix of an uninterrupted run (lifelong.training.checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lifelong.training.lifecycle as lifecycle
from lifelong.errors import ConfigError
from lifelong.runs.config import RunConfig
from lifelong.runs.experiment import resume_experiment, run_experiment
from lifelong.training.checkpoint import CHECKPOINT

FAST = {"benchmark": "split-digits", "iterations": 30, "batch_size": 32, "device": "cpu"}


class Interrupt(Exception):
    """Stands in for a kill in the middle of a task."""


def interrupt_in_task(monkeypatch: pytest.MonkeyPatch, task: int) -> None:
    """Make the training of `task` (0-based) stop half-way."""
    real = lifecycle.train_task
    calls = {"n": 0}

    def train_task(*args, **kwargs):
        if calls["n"] == task:
            kwargs["iterations"] = 7  # train part of the task, then die
            real(*args, **kwargs)
            raise Interrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "train_task", train_task)


def metric_lines(directory: Path) -> list[dict]:
    """metrics.jsonl without the timing fields, which differ between any two runs."""
    timing = {"seconds", "train_seconds"}
    lines = (directory / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


@pytest.mark.parametrize("method, extra", [
    ("ewc", {}),
    ("replay", {"scenario": "class"}),
    ("lwf", {"dropout": 0.3}),  # dropout draws from torch's global generator
    ("si+replay", {"scenario": "domain", "optimizer": "sgd", "momentum": 0.9}),
    ("upgd", {"optimizer": "sgd"}),  # generator, noise table, utility trace
])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, extra: dict) -> None:
    config = RunConfig.from_dict({**FAST, "method": method, **extra})
    whole = run_experiment(config, tmp_path / "whole", progress=False)

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        interrupt_in_task(patch, task=2)
        with pytest.raises(Interrupt):
            run_experiment(config, interrupted, progress=False)
    assert (interrupted / CHECKPOINT).is_file() and not (interrupted / "summary.json").exists()
    resumed = resume_experiment(interrupted, progress=False)

    assert resumed.accuracy_matrix == whole.accuracy_matrix  # exactly, not approximately
    assert resumed.loss_matrix == whole.loss_matrix
    assert resumed.baseline_accuracy == whole.baseline_accuracy
    assert resumed.method_reports == whole.method_reports
    # the half-trained task's lines were cut: the log reads as one uninterrupted run
    assert metric_lines(interrupted) == metric_lines(tmp_path / "whole")
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["accuracy_matrix"] == whole.accuracy_matrix


def test_a_kill_before_the_first_checkpoint_restarts_from_scratch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunConfig.from_dict({**FAST, "method": "naive"})
    whole = run_experiment(config, tmp_path / "whole", progress=False)
    with monkeypatch.context() as patch:
        interrupt_in_task(patch, task=0)
        with pytest.raises(Interrupt):
            run_experiment(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / CHECKPOINT).exists()
    resumed = resume_experiment(tmp_path / "run", progress=False)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert metric_lines(tmp_path / "run") == metric_lines(tmp_path / "whole")


def test_the_checkpoint_loads_without_pickled_code(tmp_path: Path) -> None:
    run_experiment(RunConfig.from_dict({**FAST, "method": "replay", "iterations": 5,
                                        "keep_checkpoint": True}), tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)  # raises on any object
    assert state["progress"]["next_task"] == 5
    assert len(state["progress"]["accuracy_matrix"]) == 5
    assert not list(tmp_path.glob(f".{CHECKPOINT}.*"))  # no temporary file left behind


def test_resume_refuses_a_changed_configuration_and_a_folder_without_one(
        tmp_path: Path) -> None:
    run_experiment(RunConfig.from_dict({**FAST, "method": "naive", "iterations": 5}), tmp_path,
                   progress=False)
    with pytest.raises(ConfigError, match="differs from this run's in lr"):
        run_experiment(RunConfig.from_dict({**FAST, "method": "naive", "iterations": 5,
                                            "lr": 0.5}), tmp_path, resume=True)
    with pytest.raises(ConfigError, match="holds no config.yaml"):
        resume_experiment(tmp_path / "elsewhere")


def test_a_corrupt_checkpoint_is_reported_by_name(tmp_path: Path) -> None:
    run_experiment(RunConfig.from_dict({**FAST, "method": "naive", "iterations": 5}), tmp_path,
                   progress=False)
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read the checkpoint .*checkpoint.pt"):
        resume_experiment(tmp_path)


@pytest.mark.slow
def test_sigkill_mid_task_then_resume_gives_the_identical_matrix(tmp_path: Path) -> None:
    """A real `lifelong run` process, killed with SIGKILL while it trains its third task."""
    args = ["--benchmark", "split-digits", "--method", "ewc", "--iterations", "400",
            "--batch-size", "32", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "lifelong.cli"]
    subprocess.run([*cli, "run", *args, "--out", str(tmp_path / "whole")], env=env, check=True,
                   capture_output=True)

    run = tmp_path / "killed"
    process = subprocess.Popen([*cli, "run", *args, "--out", str(run)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until task 1 is done, then kill in task 2
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and '"task_end", "task": 1' in metrics.read_text():
            break
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.01)
    time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()
    assert '"task_end", "task": 2' not in (run / "metrics.jsonl").read_text()  # killed in task 2
    assert (run / CHECKPOINT).is_file()

    done = subprocess.run([*cli, "run", "--resume", str(run), "--quiet"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["accuracy_matrix"] == whole["accuracy_matrix"]
    assert metric_lines(run) == metric_lines(tmp_path / "whole")


def test_compare_resume_continues_an_interrupted_run_from_its_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lifelong.runs import grid

    settings = {**FAST, "iterations": 10}
    whole = grid.run_grid(settings, ["naive", "ewc"], [0], [], tmp_path / "whole",
                             progress=False)
    with monkeypatch.context() as patch:
        real_run_one = grid._run_one
        # ewc is the second run: interrupt it in task 3 (naive finishes untouched)
        patch.setattr(grid, "_run_one", lambda config, *a: (
            interrupt_in_task(patch, 3) if config["method"] == "ewc" else None,
            real_run_one(config, *a))[1])
        with pytest.raises(Interrupt):
            grid.run_grid(settings, ["naive", "ewc"], [0], [], tmp_path / "grid",
                             progress=False)
    assert (tmp_path / "grid" / "ewc" / "seed0" / CHECKPOINT).is_file()
    calls = []
    real = grid._run_one
    monkeypatch.setattr(grid, "_run_one", lambda *a: calls.append(a) or real(*a))
    resumed = grid.run_grid(settings, ["naive", "ewc"], [0], [], tmp_path / "grid",
                               progress=False, resume=True)
    assert [(c[0]["method"], c[-1]) for c in calls] == [("ewc", True)]  # naive was kept
    assert [r["accuracy_matrix"] for r in resumed["runs"]] == [
        r["accuracy_matrix"] for r in whole["runs"]]
