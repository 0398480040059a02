"""End-to-end runs: determinism, outputs on disk, errors before training, device selection."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from lifelong.errors import ConfigError
from lifelong.runs.config import RunConfig
from lifelong.runs.experiment import run_experiment
from lifelong.runs.setup import resolve_device

FAST = {"benchmark": "split-digits", "epochs": 2, "hidden": [32]}


def test_same_seed_same_matrix_other_seed_differs() -> None:
    a = run_experiment(RunConfig.from_dict({**FAST, "method": "replay", "seed": 3}),
                       progress=False)
    b = run_experiment(RunConfig.from_dict({**FAST, "method": "replay", "seed": 3}),
                       progress=False)
    c = run_experiment(RunConfig.from_dict({**FAST, "method": "replay", "seed": 4}),
                       progress=False)
    assert a.accuracy_matrix == b.accuracy_matrix
    assert a.accuracy_matrix != c.accuracy_matrix


def test_run_writes_summary_config_and_metrics(tmp_path) -> None:
    config = RunConfig.from_dict({**FAST, "method": "ewc", "scenario": "domain",
                                  "method_params": {"ewc": {"lambda": 50}}})
    result = run_experiment(config, tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("benchmark", "scenario", "method", "seed", "accuracy_matrix", "acc", "bwt", "fwt",
                "forgetting", "seconds", "task_seconds", "peak_memory_mb", "lifelong_version"):
        assert key in summary
    assert summary["accuracy_matrix"] == result.accuracy_matrix
    assert len(summary["accuracy_matrix"]) == 5 and summary["scenario"] == "domain"
    assert summary["acc"] == pytest.approx(sum(result.accuracy_matrix[-1]) / 5)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["event"] for line in lines].count("eval") == 25
    assert lines[0]["event"] == "baseline" and len(lines[0]["accuracy"]) == 5
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["method_params"]["ewc"]["lambda"] == 50.0
    assert saved["method_params"]["ewc"]["mode"] == "separate"  # defaults written out in full
    saved.pop("lifelong_version")
    again = run_experiment(RunConfig.from_dict(saved), progress=False)  # re-run from config.yaml
    assert again.accuracy_matrix == result.accuracy_matrix


def test_joint_is_the_upper_bound_and_naive_forgets_class_incrementally() -> None:
    runs = {m: run_experiment(RunConfig.from_dict({**FAST, "epochs": 5, "scenario": "class",
                                                   "method": m}), progress=False)
            for m in ("naive", "joint", "replay")}
    assert runs["naive"].metrics["acc"] < 0.3  # only the last task's classes are recognised
    assert runs["naive"].metrics["forgetting"] > 0.8
    assert runs["joint"].metrics["acc"] > 0.85
    assert runs["naive"].metrics["acc"] < runs["replay"].metrics["acc"] < runs["joint"].metrics[
        "acc"] + 0.05


@pytest.mark.parametrize("settings,message", [
    ({"benchmark": "split-cifar"}, "unknown benchmark 'split-cifar'"),
    ({"method": "replay+agemm"}, "unknown method 'agemm' .did you mean 'agem'"),
    ({"method": "ewc", "method_params": {"ewc": {"lambda": -1}}}, "ewc.lambda: -1.0 is out of"),
    ({"method": "ewc", "method_params": {"lwf": {"alpha": 1}}}, "settings given for lwf"),
    ({"epochs": 2, "iterations": 5}, "not both"),
    ({"lr": 0}, "run.lr: 0.0 is out of range"),
    ({"scenario": "online"}, "run.scenario: 'online' is not accepted"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
])
def test_bad_configurations_fail_before_training(settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        run_experiment(RunConfig.from_dict(settings), progress=False)


def test_device_auto_picks_cuda_only_when_present() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_iterations_mode_runs_exactly_that_many_steps(tmp_path) -> None:
    run_experiment(RunConfig.from_dict({**FAST, "epochs": None, "iterations": 7}), tmp_path,
                   progress=False)
    ends = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if '"task_end"' in x]
    assert [e["steps"] for e in ends] == [7] * 5


def test_protocol_defaults_depend_on_the_scenario_and_yield_to_the_user() -> None:
    from lifelong.runs.setup import prepare

    for scenario, expected in (("task", 1e5), ("domain", 1e10), ("class", 1e9)):
        cfg, _ = prepare(RunConfig(benchmark="split-mnist", scenario=scenario, method="ewc"))
        assert cfg.method_params["ewc"]["lambda"] == expected
        assert cfg.iterations == 2000 and tuple(cfg.hidden) == (400, 400)
    cfg, method = prepare(RunConfig(benchmark="split-mnist", scenario="class", method="ewc",
                                    method_params={"ewc": {"lambda": 3}}))
    assert cfg.method_params["ewc"]["lambda"] == 3.0 and method.config.lambda_ == 3.0


def test_method_reports_reach_metrics_and_summary(tmp_path) -> None:
    config = RunConfig.from_dict({**FAST, "method": "l1", "scenario": "task",
                                  "benchmark_params": {"classes_per_task": 5}})
    result = run_experiment(config, tmp_path, progress=False)
    assert len(result.method_reports) == 2
    for report in result.method_reports:
        assert 0 < report["ticket_sparsity"] < 1
        assert 0 <= report["ticket_accuracy"] <= 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["method_reports"] == result.method_reports
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if line["event"] == "method"]
    assert [line["task"] for line in logged] == [0, 1]
    assert logged[1]["ticket_accuracy"] == result.method_reports[1]["ticket_accuracy"]
    # the task's full model is what the accuracy matrix measured
    assert result.method_reports[1]["full_accuracy"] == result.accuracy_matrix[1][1]


def test_protocol_momentum_and_weight_decay_are_defaults_that_flags_override() -> None:
    dohare = RunConfig(benchmark="cifar100-incremental").resolved()
    assert (dohare.momentum, dohare.weight_decay, dohare.model) == (0.9, 5e-4, "resnet18")
    mine = RunConfig(benchmark="cifar100-incremental", momentum=0.0, weight_decay=0.0).resolved()
    assert (mine.momentum, mine.weight_decay) == (0.0, 0.0)
    assert RunConfig(benchmark="split-digits").resolved().momentum == 0.0


def test_width_and_batch_norm_reach_the_model(monkeypatch, tmp_path) -> None:
    import lifelong.runs.config as config

    seen = {}

    class Built(Exception):
        pass

    def build_model(*args, **kwargs):
        seen.update(kwargs)
        raise Built

    monkeypatch.setattr(config, "build_model", build_model)
    with pytest.raises(Built):
        run_experiment(RunConfig(benchmark="split-digits", width=8, batch_norm=True,
                                 device="cpu"), progress=False)
    assert seen == {"width": 8, "batch_norm": True, "text": None}  # text: text scenarios only


def test_default_run_folder_of_user_data_is_a_plain_name(tmp_path, monkeypatch) -> None:
    import numpy as np

    from lifelong.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", x_train=rng.random((40, 6)).astype(np.float32),
             y_train=np.repeat(np.arange(4), 10), x_test=rng.random((8, 6)).astype(np.float32),
             y_test=np.repeat(np.arange(4), 2))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "-b", f"arrays:{tmp_path / 'mine.npz'}", "--iterations", "2",
                 "--quiet", "--no-report", "--device", "cpu"]) == 0
    # the folder also names the settings not left to defaults (iterations)
    assert (tmp_path / "runs" / "arrays-mine.npz-task-naive-iterations=2-s0" / "summary.json"
            ).is_file()


def test_report_evaluator_equals_evaluate_tasks_and_evaluates_only_what_is_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluator a method's report gets gives evaluate_tasks' accuracies, in task order, but
    evaluates a task only when it is read (L1's report reads one task of five)."""
    from helpers import toy_scenario

    from lifelong.training import evaluate as evaluation

    scenario = toy_scenario("task", num_classes=6, classes_per_task=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(
        int(torch.tensor(scenario.input_shape).prod()), scenario.num_outputs))
    device = torch.device("cpu")
    expected = [a for a, _ in evaluation.evaluate_tasks(model, scenario.readout, scenario, device)]
    calls = []
    original = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    lazy = evaluation.TaskAccuracies(model, scenario.readout, scenario, device)
    assert len(lazy) == len(expected) == 3
    assert lazy[1] == expected[1] and len(calls) == 1
    assert lazy[1] == expected[1] and len(calls) == 1  # read once
    assert list(lazy) == expected and lazy[-1] == expected[-1] and len(calls) == 3
    assert lazy[0:2] == expected[0:2]
    with pytest.raises(IndexError):
        lazy[3]
