"""--log tensorboard,mlflow: every metric of a run, read back from TensorBoard's event file and
from MLflow's store (a local file store in tmp_path, no network), equals summary.json."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from lifelong.cli import main
from lifelong.errors import ConfigError
from lifelong.integrations.tracking import MetricMapper, build_trackers, parse_trackers
from lifelong.training.rundir import RunDir

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

FAST = ["-b", "split-digits", "--iterations", "2", "--hidden", "16", "--quiet", "--device", "cpu"]


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """An offline MLflow file store in tmp_path (mlflow 3 wants MLFLOW_ALLOW_FILE_STORE for it;
    its sqlite store needs sqlalchemy, which mlflow-skinny lacks)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    from mlflow import MlflowClient

    return MlflowClient()


def _mlflow_run(client, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    (run,) = client.search_runs([found.experiment_id])
    return run


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _tensorboard(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run_dir / "tensorboard").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    return tags, lambda tag: {e.step: e.value for e in accumulator.Scalars(tag)}


def _f32(value: float) -> float:
    return float(np.float32(value))


def test_run_logs_every_metric_to_tensorboard_and_mlflow(tmp_path, mlflow_store) -> None:
    out = tmp_path / "run"
    assert main(["run", *FAST, "--diagnostics",
                 "--log", "tensorboard,mlflow", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    matrix, losses = summary["accuracy_matrix"], summary["loss_matrix"]
    tasks = len(matrix)
    run = _mlflow_run(mlflow_store, "split-digits")
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["method"] == "naive" and params["log"] == "tensorboard,mlflow"
    assert params["benchmark"] == "split-digits" and params["hidden"] == "[16]"
    tags, scalars = _tensorboard(out)

    for j in range(tasks):
        mlflow_accuracy = _history(mlflow_store, run.info.run_id, f"accuracy/task_{j}")
        mlflow_loss = _history(mlflow_store, run.info.run_id, f"loss/task_{j}")
        assert mlflow_accuracy == {i: matrix[i][j] for i in range(tasks)}  # exactly
        assert mlflow_loss == {i: losses[i][j] for i in range(tasks)}
        assert scalars(f"accuracy/task_{j}") == {i: _f32(matrix[i][j]) for i in range(tasks)}
        assert scalars(f"loss/task_{j}") == {i: _f32(losses[i][j]) for i in range(tasks)}
        baseline = summary["baseline_accuracy"][j]
        if baseline is not None:
            assert _history(mlflow_store, run.info.run_id, f"baseline/task_{j}") == {0: baseline}
    average = _history(mlflow_store, run.info.run_id, "accuracy/average")
    assert sorted(average) == list(range(tasks))
    for i in range(tasks):
        assert average[i] == pytest.approx(np.mean(matrix[i][:i + 1]), abs=1e-12)
    assert average[tasks - 1] == pytest.approx(summary["acc"], abs=1e-12)

    last = tasks - 1
    for key in ("acc", "bwt", "fwt", "forgetting", "seconds"):
        assert summary[key] is not None
        assert _history(mlflow_store, run.info.run_id, f"summary/{key}") == {last: summary[key]}
        assert scalars(f"summary/{key}") == {last: _f32(summary[key])}
    seconds = _history(mlflow_store, run.info.run_id, "task/seconds")
    assert seconds == dict(enumerate(summary["task_seconds"]))
    diagnostics = summary["diagnostics"]
    assert _history(mlflow_store, run.info.run_id, "diagnostics/dead_units") == {
        d["task"]: d["dead_units"] for d in diagnostics}
    assert "diagnostics/effective_rank_per_layer/0" in tags
    assert set(run.data.metrics) == tags  # the two trackers get the same metrics


def test_compare_logs_every_run_of_the_grid(tmp_path, mlflow_store) -> None:
    out = tmp_path / "grid"
    assert main(["compare", *FAST, "--methods", "naive,ewc", "--seeds", "0",
                 "--log", "mlflow", "--out", str(out)]) == 0
    found = mlflow_store.get_experiment_by_name("split-digits")
    runs = mlflow_store.search_runs([found.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["ewc/seed0", "naive/seed0"]
    for run in runs:
        summary = json.loads((out / run.info.run_name / "summary.json").read_text())
        assert run.data.params["method"] == summary["method"]
        assert run.data.metrics["summary/acc"] == summary["acc"]
        assert run.info.status == "FINISHED"
    assert not (out / "naive" / "seed0" / "tensorboard").exists()


def test_stream_logs_its_bins(tmp_path, mlflow_store) -> None:
    out = tmp_path / "stream"
    assert main(["stream", "--tasks", "3", "--set", "benchmark.samples_per_task=40",
                 "--bin-size", "20", "--out", str(out), "-q", "--device", "cpu",
                 "--log", "tensorboard,mlflow"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    bins = {b["end"]: b["error"] for b in summary["bins"]}
    assert sorted(bins) == [20, 40, 60, 80, 100, 120]
    run = _mlflow_run(mlflow_store, "slowly-changing-regression")
    assert _history(mlflow_store, run.info.run_id, "online/error") == bins
    _, scalars = _tensorboard(out)
    assert scalars("online/error") == {step: _f32(v) for step, v in bins.items()}
    assert scalars("task/error") == {t: _f32(v) for t, v in enumerate(summary["task_values"])}
    assert _history(mlflow_store, run.info.run_id, "summary/mean_online_error") == {
        120: summary["mean_online_error"]}


def test_a_run_that_raises_is_marked_failed_and_keeps_what_it_logged(
        tmp_path, mlflow_store, monkeypatch) -> None:
    import lifelong.training.lifecycle as lifecycle
    from lifelong.runs.config import RunConfig
    from lifelong.runs.experiment import run_experiment

    real, calls = lifecycle.train_task, []

    def train_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("crash in task 1")
        return real(*args, **kwargs)

    monkeypatch.setattr(lifecycle, "train_task", train_then_crash)
    config = RunConfig(benchmark="split-digits", iterations=2, hidden=[16],
                                  device="cpu", log="mlflow")
    with pytest.raises(RuntimeError, match="crash"):
        run_experiment(config, tmp_path / "crashed", progress=False)
    run = _mlflow_run(mlflow_store, "split-digits")
    assert run.info.status == "FAILED"
    assert sorted(_history(mlflow_store, run.info.run_id, "accuracy/task_0")) == [0]


@pytest.mark.parametrize("command", [["run", *FAST], ["compare", *FAST, "--methods", "naive"],
                                     ["stream", "-q"]])
def test_an_unknown_tracker_fails_before_training(tmp_path, capsys, command) -> None:
    out = tmp_path / "out"
    assert main([*command, "--log", "tensorboard,wandb", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "unknown tracker 'wandb'" in error and "accepted: tensorboard, mlflow" in error
    assert len(error.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("name, module", [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_a_missing_extra_is_reported(tmp_path, capsys, monkeypatch, name, module) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    out = tmp_path / "out"
    assert main(["run", *FAST, "--log", name, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"--log {name}" in error and "pip install lifelong[tracking]" in error
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"lifelong\[tracking\]"):
        build_trackers(name, tmp_path / "direct", {"benchmark": "split-digits"})


def test_parse_trackers_accepts_either_or_both() -> None:
    assert parse_trackers("") == [] and parse_trackers(None) == []
    assert parse_trackers("mlflow") == ["mlflow"]
    assert parse_trackers(" TensorBoard , mlflow,mlflow") == ["tensorboard", "mlflow"]


class _Recorder:
    name = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.metrics, self.closed = fail, [], []

    def log_params(self, params) -> None:
        pass

    def log_metrics(self, metrics, step) -> None:
        if self.fail:
            raise OSError("tracking server down")
        self.metrics.append((step, dict(metrics)))

    def close(self, failed: bool = False) -> None:
        self.closed.append(failed)


def test_a_failing_tracker_loses_no_metrics_line(tmp_path) -> None:
    broken, working = _Recorder(fail=True), _Recorder()
    run_dir = RunDir(tmp_path, trackers=[broken, working])
    with pytest.warns(RuntimeWarning, match="recorder tracker failed.*tracking server down"):
        run_dir.log(event="eval", after_task=0, task=0, accuracy=0.5, loss=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, then left out
        run_dir.log(event="eval", after_task=0, task=1, accuracy=float("nan"), loss=None)
    run_dir.close()
    run_dir.write_summary({"acc": 0.5, "bwt": None, "seed": 3})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert [line["task"] for line in lines] == [0, 1]
    assert broken.closed == [True] and working.closed == [False]
    assert working.metrics == [
        (0, {"accuracy/task_0": 0.5, "loss/task_0": 1.0, "accuracy/average": 0.5}),
        (0, {"summary/acc": 0.5})]  # NaN, None and the seed left out


def test_close_during_an_exception_ends_trackers_as_failed(tmp_path) -> None:
    tracker = _Recorder()
    with pytest.raises(KeyError):
        run_dir = RunDir(tmp_path, trackers=[tracker])
        try:
            raise KeyError("boom")
        finally:
            run_dir.close()
    assert tracker.closed == [True]
    try:  # an exception the caller is handling is not the run's
        raise ValueError
    except ValueError:
        tracker = _Recorder()
        run_dir = RunDir(tmp_path / "inner", trackers=[tracker])
        run_dir.close()
        assert tracker.closed == []
        run_dir.write_summary({"acc": 1.0})
    assert tracker.closed == [False]


def test_metric_names_and_steps() -> None:
    mapper = MetricMapper()
    assert mapper.record({"event": "baseline", "accuracy": [None, 0.5]}) == [
        (0, {"baseline/task_1": 0.5})]
    assert mapper.record({"event": "task_end", "task": 2, "steps": 7, "train_seconds": 1.5,
                          "seconds": 2.0, "epoch_losses": [0.9, 0.4]}) == [
        (2, {"task/steps": 7.0, "task/train_seconds": 1.5, "task/seconds": 2.0,
             "task/train_loss": 0.4})]
    assert mapper.record({"event": "diagnostics", "task": 1, "dead_units": 0.25,
                          "dead_units_per_layer": [0.5, 0.0]}) == [
        (1, {"diagnostics/dead_units": 0.25, "diagnostics/dead_units_per_layer/0": 0.5,
             "diagnostics/dead_units_per_layer/1": 0.0})]
    assert mapper.record({"event": "bin", "bin": 3, "start": 30, "end": 40, "task": 1,
                          "accuracy": 0.75, "loss": 0.6, "seconds": 0.1}) == [
        (40, {"online/accuracy": 0.75, "online/loss": 0.6, "online/seconds": 0.1})]
    assert mapper.record({"event": "method", "task": 0, "replaced_units": 3.0}) == [
        (0, {"method/replaced_units": 3.0})]
    assert mapper.summary({"acc": 0.5, "seed": 1, "fwt": None, "method": "naive",
                           "accuracy_matrix": [[1.0]]}) == (40, {"summary/acc": 0.5})
