"""Divergence: non-finite settings refused before training (exit 2); a non-finite loss or
non-finite weights stop a run (exit 3) with one line, summary.json marks it diverged with null
metrics, and the last good checkpoint stays as it was; a grid goes on and marks the run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from lifelong.cli import main
from lifelong.core.batch import Batch
from lifelong.core.config import Config, option
from lifelong.core.method import Method
from lifelong.core.registry import _METHODS, register_method
from lifelong.errors import DivergedError
from lifelong.training.divergence import LossWatch, check_weights, nonfinite_weights

FAST = ["-b", "split-digits", "--hidden", "16", "--quiet"]
METRICS = ("acc", "bwt", "fwt", "forgetting")


@dataclasses.dataclass
class BlowUpConfig(Config):
    _owner = "blow-up"
    from_task: int = option(1, "the first task whose penalty blows the weights up", low=0)


class BlowUp(Method):
    """Test-only: from task `from_task` on, a penalty of 1e30 x the mean squared output, so SGD's
    first step there sends the weights to ~1e28 and the next forward pass overflows: a genuine
    divergence through the optimizer, at a known task."""

    name, description, Config = "blow-up-test", "a test method that diverges", BlowUpConfig

    def before_task(self, task: int) -> None:
        self.task = task

    def penalty(self, batch: Batch, output: Tensor) -> Tensor | None:
        if self.task < self.config.from_task:
            return None
        return 1e30 * output.square().mean()


@pytest.fixture
def blow_up():
    register_method(BlowUp)
    yield BlowUp.name
    _METHODS.pop(BlowUp.name, None)


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --- non-finite settings: refused before any folder exists -------------------------------------
@pytest.mark.parametrize("args,key", [
    (["run", *FAST, "--lr", "nan"], "run.lr"),
    (["run", *FAST, "--lr", "inf"], "run.lr"),
    (["run", *FAST, "--momentum=-inf"], "run.momentum"),
    (["run", *FAST, "-m", "ewc", "--set", "ewc.lambda=inf"], "ewc.lambda"),
    (["run", *FAST, "-m", "ewc", "--set", "ewc.lambda=nan"], "ewc.lambda"),
    (["run", *FAST, "-m", "ewc", "--set", "ewc.lambda=-inf"], "ewc.lambda"),
    (["compare", *FAST, "--methods", "naive,ewc", "--set", "ewc.lambda=nan"], "ewc.lambda"),
    (["stream", "--lr", "nan", "--quiet"], "stream.lr"),
    (["stream", "--lr", "inf", "--quiet"], "stream.lr"),
])
def test_non_finite_settings_are_refused_before_any_folder(args, key, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith(f"error: {key}: ") and "a finite number" in err
    assert not out.exists()


@pytest.mark.parametrize("text", ["lr: .nan\n", "lr: .inf\n", "lr: -.inf\n",
                                  "method: ewc\nmethod_params:\n  ewc:\n    lambda: .nan\n"])
def test_non_finite_yaml_settings_are_refused(text, tmp_path, capsys) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    assert main(["run", *FAST, "--config", str(config), "--out", str(out)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "a finite number" in err and not out.exists()


def test_inf_is_accepted_only_where_an_option_allows_it() -> None:
    @dataclasses.dataclass
    class Bounded(Config):
        limit: float = option(1.0, "a limit", allow_inf=True)
        scale: float = option(1.0, "a scale")

    assert Bounded(limit=math.inf).limit == math.inf
    assert Bounded(limit="-inf").limit == -math.inf
    for bad in ({"limit": math.nan}, {"scale": math.inf}, {"scale": "nan"}):
        with pytest.raises(Exception, match="a finite number"):
            Bounded(**bad)


# --- a run that diverges ----------------------------------------------------------------------
def test_run_at_a_huge_learning_rate_stops_with_exit_3_and_one_line(tmp_path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "lifelong.cli", "run", "-b", "split-digits", "-q", "--optimizer",
         "sgd", "--lr", "1e6",
         "--iterations", "20", "--out", str(out)], capture_output=True, text=True, env=env,
        timeout=300)
    assert result.returncode == 3
    err = _one_line(result.stderr)
    assert err.startswith("error: diverged: non-finite loss at task 0, step ")
    assert "of 20 (lr 1e+06)" in err
    summary = _summary(out)
    assert summary["status"] == "diverged"
    assert all(summary[key] is None for key in METRICS)
    assert summary["accuracy_matrix"] == []
    assert summary["divergence"]["quantity"] == "loss" and summary["divergence"]["task"] == 0
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "diverged"
    assert not (out / "checkpoint.pt").exists()
    assert "diverged" in (out / "report.html").read_text()


def test_divergence_keeps_the_last_good_checkpoint_and_the_rows_before_it(
        tmp_path, capsys, monkeypatch, blow_up) -> None:
    from lifelong.runs import experiment

    saved: list[str] = []  # the checkpoint's digest just after each save

    def save_and_hash(folder: Path, **state) -> None:
        original_save(folder, **state)
        saved.append(hashlib.md5((Path(folder) / "checkpoint.pt").read_bytes()).hexdigest())

    original_save = experiment.save_checkpoint
    monkeypatch.setattr(experiment, "save_checkpoint", save_and_hash)
    out, reference = tmp_path / "run", tmp_path / "reference"
    common = [*FAST, "--optimizer", "sgd", "--iterations", "5", "-m", blow_up, "--no-report"]
    assert main(["run", *common, "--set", "from_task=99", "--out", str(reference)]) == 0
    saved.clear()
    capsys.readouterr()
    assert main(["run", *common, "--out", str(out)]) == 3
    err = _one_line(capsys.readouterr().err)
    assert "non-finite loss at task 1, step 2 of 5" in err
    assert f"the last good checkpoint (after task 0) is kept in {out}" in err
    # task 1 was neither evaluated nor checkpointed: the file is the one written after task 0
    assert len(saved) == 1
    assert hashlib.md5((out / "checkpoint.pt").read_bytes()).hexdigest() == saved[0]
    summary = _summary(out)
    assert summary["status"] == "diverged" and all(summary[k] is None for k in METRICS)
    assert summary["divergence"]["task"] == 1 and summary["divergence"]["step"] == 2
    assert summary["accuracy_matrix"] == _summary(reference)["accuracy_matrix"][:1]
    assert _summary(reference)["status"] == "finished"
    events = [json.loads(line)["event"]
              for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("task_end") == 1 and events[-1] == "diverged"
    # resuming would only repeat the divergence from the same checkpoint: refused, exit 3
    assert main(["run", "--resume", str(out), "--quiet"]) == 3
    err = _one_line(capsys.readouterr().err)
    assert f"error: {out} diverged (see its summary.json); resuming would diverge again" in err
    assert _summary(out)["status"] == "diverged" and len(saved) == 1


# --- grids: a diverged run is marked, the others go on -----------------------------------------
def _check_comparison(out: Path, bad: str, good: str, err: str) -> dict:
    assert "error: diverged: 1 of 2 runs" in _one_line(err) and bad in err
    comparison = json.loads((out / "comparison.json").read_text())
    status = {r["method"]: r["status"] for r in comparison["runs"]}
    assert status == {bad: "diverged", good: "finished"}
    row = comparison["methods"][bad]
    assert row["diverged"] == 1 and row["acc"]["mean"] is None and row["acc"]["std"] is None
    fine = comparison["methods"][good]
    assert fine["diverged"] == 0
    finished = _summary(out / next(r["folder"] for r in comparison["runs"]
                                   if r["method"] == good))
    assert finished["status"] == "finished" and fine["acc"]["mean"] == finished["acc"]
    page = (out / "report.html").read_text()
    assert "1 of 2 runs diverged" in page and "diverged 1/1</td>" in page
    return comparison


def test_compare_goes_on_after_a_diverged_run_and_exits_3(tmp_path, capsys, monkeypatch,
                                                          blow_up) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the printed table on one line per method
    out = tmp_path / "cmp"
    code = main(["compare", *FAST, "--optimizer", "sgd", "--iterations", "5", "--methods",
                 f"naive,{blow_up}", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 3
    _check_comparison(out, blow_up, "naive", captured.err)
    assert "diverged 1/1" in captured.out  # the printed table
    assert "a --resume keeps them" in " ".join(captured.out.split())
    # --resume keeps the diverged run as it is (its summary) rather than running it again
    before = (out / blow_up / "seed0" / "summary.json").read_bytes()
    assert main(["compare", *FAST, "--optimizer", "sgd", "--iterations", "5", "--methods",
                 f"naive,{blow_up}", "--out", str(out), "--resume"]) == 3
    assert (out / blow_up / "seed0" / "summary.json").read_bytes() == before


@pytest.mark.slow
def test_sweep_in_processes_marks_the_diverged_point(tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    code = main(["sweep", "-b", "split-digits", "--quiet", "--optimizer", "sgd", "--iterations",
                 "10", "--methods", "naive", "--grid", "lr=0.01,1e6", "--jobs", "2",
                 "--out", str(out)])
    assert code == 3
    _check_comparison(out, "naive[lr=1e6]", "naive[lr=0.01]", capsys.readouterr().err)


def test_comparison_table_shows_diverged_seeds_instead_of_a_mean() -> None:
    from rich.console import Console

    from lifelong.report.tables import comparison_table
    from lifelong.runs.grid import _method_row

    runs = [{"acc": 0.9, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0, "seconds": 1.0,
             "status": "finished"},
            {"acc": None, "bwt": None, "fwt": None, "forgetting": None, "seconds": 0.5,
             "status": "diverged"}, {"acc": 0.7, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0,
                                     "seconds": 1.0, "status": "finished"}]
    row = _method_row(runs)
    assert row["diverged"] == 1 and row["acc"]["mean"] is None
    assert row["acc"]["values"] == [0.9, None, 0.7]  # the survivors' values stay visible
    assert row["seconds"]["mean"] == pytest.approx(2.5 / 3)
    comparison = {"benchmark": "b", "scenario": "task", "seeds": [0, 1, 2],
                  "methods": {"m[lr=1]": row},
                  "runs": [{"method": "m[lr=1]", "seed": s, **r} for s, r in enumerate(runs)]}
    console = Console(width=200, record=True)
    console.print(comparison_table(comparison))
    text = console.export_text()
    assert "diverged 1/3" in text and "0.800" not in text
    assert "m[lr=1]" in text  # a sweep's label is not taken for markup


# --- streams -----------------------------------------------------------------------------------
def test_stream_at_a_diverging_learning_rate_stops_with_exit_3(tmp_path, capsys) -> None:
    out = tmp_path / "stream"
    assert main(["stream", "--lr", "1e4", "--steps", "3000", "--quiet", "--out", str(out)]) == 3
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("error: diverged: non-finite loss at task 0, step ")
    assert "of 3000 (lr 10000)" in err
    summary = _summary(out)
    assert summary["status"] == "diverged" and summary["mean_online_error"] is None
    assert summary["last_10pct_tasks_error"] is None and summary["task_values"] == []
    assert summary["steps"] == summary["divergence"]["step"] < 3000
    assert "This run diverged" in (out / "report.html").read_text()


def test_a_finished_run_and_stream_say_so(tmp_path, capsys) -> None:
    assert main(["stream", "--steps", "200", "--quiet", "--no-report", "--out",
                 str(tmp_path / "s")]) == 0
    assert _summary(tmp_path / "s")["status"] == "finished"
    assert main(["run", *FAST, "--iterations", "2", "--no-report", "--out",
                 str(tmp_path / "r")]) == 0
    assert _summary(tmp_path / "r")["status"] == "finished"


# --- the checks themselves ---------------------------------------------------------------------
def test_weights_check_names_the_layer_and_ignores_large_finite_values() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2),
                                torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.fill_(1e30)  # huge but finite: its L2 norm would overflow, not its max
    assert nonfinite_weights(model) is None
    model[3].running_var[1] = math.nan  # a buffer counts too
    assert nonfinite_weights(model) == "3.running_var"
    with torch.no_grad():
        model[2].bias[0] = -math.inf
    with pytest.raises(DivergedError, match="non-finite weights of layer 2.bias at the end of "
                                            "task 4"):
        check_weights(model, task=4)


def test_loss_watch_reads_every_cpu_step_and_a_window_elsewhere(monkeypatch) -> None:
    watch = LossWatch(torch.device("cpu"), 10, task=1)
    watch.step(1, torch.tensor(2.0))
    with pytest.raises(DivergedError, match="at task 1, step 2 of 10$"):
        watch.step(2, torch.tensor(math.inf))
    # off the CPU the loss is not read at each step (that would make the host wait on the
    # device), only the running sum, at most once a second, and the error gives the window
    from lifelong.training import divergence

    clock = [0.0]
    monkeypatch.setattr(divergence.time, "perf_counter", lambda: clock[0])
    watch = LossWatch(torch.device("meta"), 100, task=0)
    reads = []

    class Sum:
        def __init__(self, value: float) -> None:
            self.value = value

        def __float__(self) -> float:
            reads.append(self.value)
            return self.value

    for step in range(1, 31):
        clock[0] = step * 0.1
        watch.step(step, None, Sum(1.0))  # type: ignore[arg-type]
    assert len(reads) == 3  # at 1.0 s, 2.0 s and 3.0 s
    assert watch.checked == 30
    clock[0] = 3.5
    watch.step(35, None, Sum(math.nan))  # type: ignore[arg-type]  # not read yet
    with pytest.raises(DivergedError) as info:
        watch.check(40, math.nan)  # a pass's end
    assert str(info.value) == "diverged: non-finite loss at task 0, a step in 31-40 of 100"
    assert info.value.record() == {"quantity": "loss", "task": 0, "step": 40,
                                   "first_step": 31, "total_steps": 100}


def test_a_finite_but_exploded_loss_is_warned_about_once(tmp_path, capfd) -> None:
    """Adam at lr 1e6 keeps the loss finite (up to ~7e21): not a divergence, but one warning line
    naming the rise and a metrics.jsonl record; a sane run gets none."""
    out = tmp_path / "adam"
    assert main(["run", *FAST, "--optimizer", "adam", "--lr", "1e6", "--iterations", "30",
                 "--no-report", "--out", str(out)]) == 0
    warned = [line for line in capfd.readouterr().err.splitlines() if "may be diverging" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: the training loss rose from ")
    assert "(lr 1e+06)" in warned[0]
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("warning") == 1
    assert main(["run", *FAST, "--iterations", "30", "--no-report", "--out",
                 str(tmp_path / "sane")]) == 0
    assert "may be diverging" not in capfd.readouterr().err
