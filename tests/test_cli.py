"""The command line: list, run, compare, demo, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from lifelong.cli import main
from lifelong.core import list_methods
from lifelong.errors import ConfigError
from lifelong.scenarios import list_benchmarks

FAST = ["-b", "split-digits", "--epochs", "1", "--hidden", "16", "--quiet"]


def test_list_shows_every_method_and_benchmark_with_its_description(capsys) -> None:
    assert main(["list", "--verbose"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    for name, description in {**list_methods(), **list_benchmarks()}.items():
        assert name in out
        assert " ".join(description.split()[:3]) in out
    assert "ewc settings" in out and "fisher_samples" in out


def test_run_writes_the_run_folder_and_prints_the_matrix(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["run", *FAST, "-m", "replay+ewc", "--scenario", "domain", "--set",
                 "ewc.lambda=10", "--set", "memory_size=50", "--seed", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy matrix" in printed and "forgetting" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "replay+ewc" and summary["seed"] == 2
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method_params"]["ewc"]["lambda"] == 10.0
    assert config["method_params"]["replay"]["memory_size"] == 50
    # re-running from the written config gives the same matrix
    again = tmp_path / "again"
    assert main(["run", "--config", str(out / "config.yaml"), "--quiet", "--out", str(again)]) == 0
    assert json.loads((again / "summary.json").read_text())["accuracy_matrix"] == summary[
        "accuracy_matrix"]


@pytest.mark.slow
def test_compare_runs_the_grid_in_parallel_and_summarises(tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    code = main(["compare", *FAST, "--scenario", "class", "--methods", "naive,replay",
                 "--seeds", "0,1", "--jobs", "2", "--out", str(out)])
    assert code == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["seeds"] == [0, 1] and set(comparison["methods"]) == {"naive", "replay"}
    acc = comparison["methods"]["replay"]["acc"]
    runs = [json.loads((out / "replay" / f"seed{s}" / "summary.json").read_text())
            for s in (0, 1)]
    assert acc["values"] == [r["acc"] for r in runs]
    assert acc["mean"] == pytest.approx(sum(acc["values"]) / 2)
    assert comparison["methods"]["replay"]["acc"]["mean"] > comparison["methods"]["naive"]["acc"][
        "mean"]
    assert "replay" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_with_one_seed(tmp_path, capsys) -> None:
    assert main(["demo", "--seeds", "0", "--jobs", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for method in ("naive", "ewc", "lwf", "replay", "agem"):
        assert method in out
    for scenario in ("task", "domain", "class"):
        comparison = json.loads((tmp_path / scenario / "comparison.json").read_text())
        assert len(comparison["runs"]) == 5
    class_il = json.loads((tmp_path / "class" / "comparison.json").read_text())["methods"]
    assert class_il["replay"]["acc"]["mean"] > class_il["naive"]["acc"]["mean"] + 0.3


@pytest.mark.parametrize("args,message", [
    (["run", "-b", "split-cifar"], "unknown benchmark 'split-cifar'"),
    (["run", "-m", "ewk"], "unknown method 'ewk' (did you mean 'ewc'?)"),
    (["run", "-m", "ewc", "--set", "ewc.lamda=3"], "unknown key 'lamda' for ewc; accepted keys:"),
    (["run", "-m", "ewc", "--set", "lamda=3"], "--set lamda: no such setting"),
    (["run", "-m", "ewc", "--set", "ewc.lambda=-3"], "ewc.lambda: -3.0 is out of range"),
    (["run", "-m", "replay+agem", "--set", "memory_size=9"], "several methods have it"),
    (["run", "--scenario", "online"], "'online' is not accepted; choose one of task, domain"),
    (["run", "--epochs", "0"], "run.epochs: 0 is out of range; accepted: >= 1"),
    (["run", "--lr", "fast"], "argument --lr: invalid float value"),
    (["run", "-m", "naive+ewc"], "naive is plain fine-tuning and cannot be combined"),
    (["run", "--config", "missing.yaml"], "--config file 'missing.yaml' does not exist"),
    (["compare", "--methods", "naive", "--seeds", "a", "--out", "x"], "--seeds takes"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_errors_are_one_line_with_status_2(args, message, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


@pytest.mark.slow
def test_missing_data_file_fails_before_training_without_traceback(tmp_path) -> None:
    env = {**os.environ, "LIFELONG_NO_DOWNLOAD": "1", "LIFELONG_DATA": str(tmp_path),
           "LIFELONG_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "lifelong.cli", "run", "-b", "split-mnist", "--out",
         str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "MNIST file train-images-idx3-ubyte.gz (or train-images-idx3-ubyte) not found" in (
        result.stderr)
    assert str(tmp_path) in result.stderr  # says where it looked
    assert not (tmp_path / "run" / "summary.json").exists()


def test_compare_refuses_an_impossible_benchmark_option_before_running(tmp_path, capsys) -> None:
    code = main(["compare", *FAST, "--methods", "naive", "--set", "benchmark.classes_per_task=3",
                 "--out", str(tmp_path)])
    assert code == 2
    assert "10 classes do not split into tasks of 3" in capsys.readouterr().err
    assert not (tmp_path / "naive").exists()


def test_compare_resume_keeps_finished_runs_with_the_same_configuration(tmp_path,
                                                                        monkeypatch) -> None:
    from lifelong.runs import grid

    settings = {"benchmark": "split-digits", "epochs": 1, "hidden": [16]}
    first = grid.run_grid(settings, ["naive"], [0], [], tmp_path, progress=False)
    calls = []
    real = grid._run_one
    monkeypatch.setattr(grid, "_run_one", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = grid.run_grid(settings, ["naive"], [0], [], tmp_path, progress=False,
                             resume=True)
    assert calls == [] and again["runs"][0]["acc"] == first["runs"][0]["acc"]
    with pytest.raises(ConfigError, match=r"naive/seed0 holds a run with other settings "
                       r"\(epochs\); replace it with --overwrite"):
        grid.run_grid({**settings, "epochs": 2}, ["naive"], [0], [], tmp_path,
                      progress=False, resume=True)  # never replaced silently
    assert calls == []
    changed = grid.run_grid({**settings, "epochs": 2}, ["naive"], [0], [], tmp_path,
                               progress=False, resume=True, overwrite=True)
    assert len(calls) == 1  # another configuration, --overwrite: run again
    assert changed["runs"][0]["acc"] != first["runs"][0]["acc"]
