"""checkpoint.pt after a run: dropped once the run has finished and summary.json is written
(default), kept with `keep_checkpoint` / `--keep-checkpoint`, always kept while unfinished; a
finished run without one is finished, not something to start again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lifelong.cli import main
from lifelong.errors import ConfigError
from lifelong.runs import experiment, grid
from lifelong.runs.config import RunConfig
from lifelong.runs.experiment import resume_experiment, run_experiment
from lifelong.training.checkpoint import CHECKPOINT

FAST = {"benchmark": "split-digits", "iterations": 5, "hidden": [16], "device": "cpu"}
class Killed(Exception):
    """Stands in for a kill."""


FLAGS = ["-b", "split-digits", "--iterations", "5", "--hidden", "16", "--quiet", "--no-report"]


def test_a_finished_run_drops_its_checkpoint_by_default_and_keeps_it_when_asked(
        tmp_path: Path) -> None:
    run_experiment(RunConfig.from_dict({**FAST, "method": "replay"}), tmp_path / "drop",
                   progress=False)
    assert (tmp_path / "drop" / "summary.json").is_file()
    assert not (tmp_path / "drop" / CHECKPOINT).exists()
    assert not list((tmp_path / "drop").glob(f".{CHECKPOINT}*"))  # no temporary file either

    run_experiment(RunConfig.from_dict({**FAST, "method": "replay", "keep_checkpoint": True}),
                   tmp_path / "keep", progress=False)
    assert (tmp_path / "keep" / "summary.json").is_file()
    assert (tmp_path / "keep" / CHECKPOINT).is_file()


@pytest.mark.parametrize("keep, saved", [(False, 4), (True, 5)])
def test_the_checkpoint_after_the_last_task_is_written_only_when_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool, saved: int) -> None:
    calls = []
    real = experiment.save_checkpoint
    monkeypatch.setattr(experiment, "save_checkpoint",
                        lambda *a, **k: calls.append(k["progress"].next_task) or real(*a, **k))
    run_experiment(RunConfig.from_dict({**FAST, "method": "naive", "keep_checkpoint": keep}),
                   tmp_path, progress=False)
    assert calls == list(range(1, saved + 1))  # split-digits: 5 tasks


def test_a_kill_after_the_last_task_but_before_the_summary_resumes_to_the_same_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = RunConfig.from_dict({**FAST, "method": "replay"})
    whole = run_experiment(config, tmp_path / "whole", progress=False)
    with monkeypatch.context() as patch:
        def killed(self, summary):
            raise Killed
        patch.setattr(experiment.RunDir, "write_summary", killed)
        with pytest.raises(Killed):
            run_experiment(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / CHECKPOINT).is_file()  # unfinished: the checkpoint is kept
    resumed = resume_experiment(tmp_path / "run", progress=False)
    assert resumed.accuracy_matrix == whole.accuracy_matrix
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_resuming_a_finished_run_without_checkpoint_is_refused_not_run_again(
        tmp_path: Path) -> None:
    run_experiment(RunConfig.from_dict({**FAST, "method": "naive"}), tmp_path, progress=False)
    before = (tmp_path / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match="has finished .*nothing to resume"):
        resume_experiment(tmp_path, progress=False)
    assert (tmp_path / "summary.json").read_bytes() == before  # untouched


def test_a_kept_checkpoint_still_resumes_a_finished_run_to_the_same_result(
        tmp_path: Path) -> None:
    first = run_experiment(RunConfig.from_dict({**FAST, "method": "ewc", "keep_checkpoint": True}),
                           tmp_path, progress=False)
    again = resume_experiment(tmp_path, progress=False)
    assert again.accuracy_matrix == first.accuracy_matrix
    assert (tmp_path / CHECKPOINT).is_file()  # the config.yaml's choice holds on resume


def test_cli_run_drops_the_checkpoint_and_keeps_it_with_the_flag(tmp_path: Path,
                                                                 capsys) -> None:
    assert main(["run", *FLAGS, "-m", "naive", "--out", str(tmp_path / "drop")]) == 0
    assert not (tmp_path / "drop" / CHECKPOINT).exists()
    assert main(["run", *FLAGS, "-m", "naive", "--keep-checkpoint",
                 "--out", str(tmp_path / "keep")]) == 0
    assert (tmp_path / "keep" / CHECKPOINT).is_file()
    assert yaml.safe_load((tmp_path / "keep" / "config.yaml").read_text())["keep_checkpoint"]
    capsys.readouterr()
    # a finished run without its checkpoint is finished: nothing to resume, nothing re-run
    assert main(["run", "--resume", str(tmp_path / "drop"), "--quiet"]) == 0
    assert "nothing to resume" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_grids_drop_every_checkpoint_by_default_and_keep_them_with_the_flag(
        tmp_path: Path, command: str) -> None:
    args = [command, *FLAGS, "--methods", "naive,replay", "--seeds", "0"]
    assert main([*args, "--out", str(tmp_path / "drop")]) == 0
    finished = list((tmp_path / "drop").glob("*/seed0/summary.json"))
    assert len(finished) == 2
    assert not list((tmp_path / "drop").rglob(CHECKPOINT))
    assert main([*args, "--keep-checkpoint", "--out", str(tmp_path / "keep")]) == 0
    assert len(list((tmp_path / "keep").rglob(CHECKPOINT))) == 2


def test_compare_resume_keeps_finished_runs_without_checkpoints_whatever_the_flag(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = grid.run_grid(FAST, ["naive"], [0], [], tmp_path, progress=False)
    assert not list(tmp_path.rglob(CHECKPOINT))
    calls = []
    real = grid._run_one
    monkeypatch.setattr(grid, "_run_one", lambda *a, **k: calls.append(a) or real(*a, **k))
    # keep_checkpoint changes no result: the finished run is the same run, not re-run
    again = grid.run_grid({**FAST, "keep_checkpoint": True}, ["naive"], [0], [], tmp_path,
                          progress=False, resume=True)
    assert calls == []
    assert again["runs"][0]["acc"] == first["runs"][0]["acc"]
    summary = json.loads((tmp_path / "naive" / "seed0" / "summary.json").read_text())
    assert summary["accuracy_matrix"] == first["runs"][0]["accuracy_matrix"]
