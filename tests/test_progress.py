"""Progress on stderr: the ETA arithmetic, plain lines when stderr is not a terminal (every tenth
of the run or 30 s, and at each task's end), one line per finished run of a grid, and silence
with --quiet."""

from __future__ import annotations

import re

import pytest
import torch

from lifelong.cli import main
from lifelong.training import progress as progress_mod
from lifelong.training.progress import GridProgress, Progress, eta_seconds, format_duration

FAST = ["-b", "split-digits", "--epochs", "1", "--hidden", "16", "--no-report"]
LOSS = torch.tensor(2.0)


class Clock:
    """A perf_counter that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", fake)
    return fake


def test_eta_extrapolates_the_rate_so_far() -> None:
    assert eta_seconds(10.0, 2, 5) == pytest.approx(15.0)  # 5 s a unit, 3 units left
    assert eta_seconds(10.0, 5, 5) == 0.0
    assert eta_seconds(10.0, 6, 5) == 0.0  # an estimate exceeded: never negative
    assert eta_seconds(3.0, 0, 5) is None  # no rate yet
    assert [format_duration(s) for s in (None, 0.4, 42, 725, 3723)] == [
        "?", "0:00", "0:42", "12:05", "1:02:03"]


def test_task_and_run_eta_from_the_steps_done(clock: Clock) -> None:
    with Progress(True, num_tasks=4) as bar:
        bar.start_task(0, 100)
        clock.now += 10.0
        bar.update(50, 1, 1, LOSS, 1)
        task, run = bar.etas(clock.now)
        assert task == pytest.approx(10.0)  # half the task in 10 s
        assert run == pytest.approx(70.0)  # 50 of 4 x 100 steps in 10 s
        clock.now += 10.0
        bar.end_task()
        bar.start_task(1, 300)  # a longer task: the tasks to come are estimated at the mean
        assert bar.run_total() == pytest.approx(100 + 300 + 2 * 200)
        clock.now += 20.0
        bar.update(150, 1, 1, LOSS, 1)
        task, run = bar.etas(clock.now)
        assert task == pytest.approx(20.0)
        assert run == pytest.approx(40.0 * (800 - 250) / 250)


def test_plain_lines_every_tenth_of_the_run_and_at_each_task_end(clock: Clock, capsys) -> None:
    with Progress(True, label="[1/2] ewc seed 0 · ", num_tasks=2) as bar:
        for task in range(2):
            bar.start_task(task, 100)
            for step in range(1, 101):
                clock.now += 0.01
                bar.update(step, 1, 1, LOSS, 1)
            bar.end_task("loss 0.5000", "ACC so far 0.900")
    lines = capsys.readouterr().err.splitlines()
    steps = [int(m.group(1)) for line in lines if (m := re.search(r"step (\d+)/100", line))]
    assert steps == [20, 40, 60, 80, 20, 40, 60, 80]  # a tenth of 200 steps; the ends: below
    assert lines[4] == ("[1/2] ewc seed 0 · task 1/2 done in 1.0 s · loss 0.5000 · ACC so far "
                        "0.900 · run 50% · elapsed 0:01 · ETA 0:01")
    assert len(lines) == 10 and "task 2/2 done" in lines[-1] and "run 100%" in lines[-1]
    assert all("ETA" in line for line in lines)


def test_a_plain_line_at_least_every_30_seconds(clock: Clock, capsys) -> None:
    with Progress(True, num_tasks=1) as bar:
        bar.start_task(0, 10_000)
        for step in range(1, 10):
            clock.now += 12.0
            bar.update(step, 1, None, LOSS, 1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" · ")[1] for line in lines] == ["step 3/10000", "step 6/10000",
                                                        "step 9/10000"]


def test_disabled_progress_prints_nothing(clock: Clock, capsys) -> None:
    with Progress(False, num_tasks=1) as bar:
        bar.start_task(0, 10)
        for step in range(1, 11):
            clock.now += 40.0
            bar.update(step, 1, 1, LOSS, 1)
        bar.end_task("loss 1.0")
    with GridProgress(False, 2) as grid:
        grid.advance("naive", 0)
    assert capsys.readouterr().err == ""


def test_grid_prints_one_line_per_finished_run_with_the_eta(clock: Clock, capsys) -> None:
    with GridProgress(True, 4) as grid:
        clock.now += 30.0
        grid.advance("ewc[lambda=10]", 1)
        clock.now += 10.0
        grid.advance("naive", 0)
    assert capsys.readouterr().err.splitlines() == [
        "run 1/4 done: ewc[lambda=10] seed 1 · elapsed 0:30 · ETA 1:30",
        "run 2/4 done: naive seed 0 · elapsed 0:40 · ETA 0:40"]


def test_run_on_a_log_prints_plain_progress_lines_and_quiet_none(tmp_path, capsys) -> None:
    assert main(["run", *FAST, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err.splitlines()
    for task in range(1, 6):
        assert any(line.startswith(f"task {task}/5 done in ") and "ACC so far" in line
                   and "ETA" in line for line in err)
    assert any(line.startswith("task 1/5 · step ") and "ETA" in line for line in err)
    assert main(["run", *FAST, "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert "task" not in capsys.readouterr().err


def test_stream_on_a_log_prints_plain_progress_lines_and_quiet_none(tmp_path, capsys) -> None:
    args = ["stream", "--steps", "3000", "--set", "benchmark.samples_per_task=1000",
            "--no-report"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("task 1/3 · step ") and "ETA" in line for line in err)
    done = [line for line in err if " done in " in line]
    assert [line.split(" done")[0] for line in done] == ["task 1/3", "task 2/3", "task 3/3"]
    assert "online error" in done[0] and "run 100%" in done[-1]
    assert main([*args, "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert "task" not in capsys.readouterr().err


@pytest.mark.slow
def test_compare_in_worker_processes_prints_one_line_per_finished_run(tmp_path, capsys) -> None:
    args = ["compare", *FAST, "--methods", "naive,ewc", "--seeds", "0", "--jobs", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" done:")[0] for line in err] == ["run 1/2", "run 2/2"]
    assert all("seed 0 · elapsed " in line and " · ETA " in line for line in err)
    assert main([*args, "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""
