"""Optional experiment tracking: every metric of a run, live in TensorBoard and/or MLflow.

`lifelong run|compare|stream --log tensorboard,mlflow` (the `log` setting) builds one `Tracker`
per name; `RunDir` forwards every record it writes to metrics.jsonl, and the summary, to them
(metrics.jsonl stays the record of truth: its line is written first, and a tracker that fails
is dropped with a warning while the run goes on). Needs `pip install lifelong[tracking]`.

- tensorboard: `torch.utils.tensorboard.SummaryWriter` into RUN_DIR/tensorboard (scalars; the
  flattened config as hyper-parameters and as text).
- mlflow: an MLflow run in the store of MLFLOW_TRACKING_URI (otherwise mlflow's default), in the
  experiment named after the benchmark, named after the run folder (METHOD/seedN in a grid);
  params = the flattened config; ended FINISHED, or FAILED when the run raised.

Metric names and steps (`MetricMapper`), from the records of metrics.jsonl:

    baseline     baseline/task_{j}                          step 0
    eval         accuracy/task_{j}, loss/task_{j}           step after_task
                 accuracy/average: mean over tasks 0..after_task, once all of them are in
    method       method/{key}                               step task
    diagnostics  diagnostics/{key}; per-layer lists as diagnostics/{key}_per_layer/{i}
                                                            step samples (stream) or task
    task_end     task/{key}: seconds, train_seconds, steps, train_loss (last epoch's), or a
                 stream's online accuracy/error of the task step task
    bin          online/{accuracy|error}, online/loss, online/seconds
                                                            step: samples seen at the bin's end
    summary      summary/{key}: every number of summary.json (acc, bwt, fwt, forgetting,
                 seconds, ...; a stream's mean_online_*, us_per_step, ...)
                                                            step: the last step of the run

None and non-finite values are skipped.
"""

from __future__ import annotations

import importlib.util
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError

# name -> the module its extra provides
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
INSTALL_HINT = "pip install lifelong[tracking]"


@runtime_checkable
class Tracker(Protocol):
    """Where a run's metrics go besides metrics.jsonl."""

    name: str

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Once, at the start: the flattened run configuration."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One record's scalars, all at `step`."""

    def close(self, failed: bool = False) -> None:
        """The run ended (`failed`: it raised)."""


# --- configuration -------------------------------------------------------------------------------
def parse_trackers(spec: str | None) -> list[str]:
    """`"tensorboard,mlflow"` -> the names, checked: unknown names and missing extras raise
    `ConfigError` (cheaply: nothing is imported)."""
    names = list(dict.fromkeys(n.strip().lower() for n in (spec or "").split(",") if n.strip()))
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"--log: unknown tracker {', '.join(repr(n) for n in unknown)}; "
                          f"accepted: {', '.join(TRACKERS)} (comma-separated, e.g. "
                          f"--log tensorboard,mlflow)")
    for name in names:
        if not _installed(TRACKERS[name]):
            raise ConfigError(_missing(name))
    return names


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _missing(name: str) -> str:
    return (f"--log {name}: the {TRACKERS[name]} package is not installed; "
            f"run: {INSTALL_HINT}")


def build_trackers(spec: str | None, run_dir: str | Path,
                   config: Mapping[str, Any]) -> list[Tracker]:
    """One started tracker per name in `spec` for the run in `run_dir`, with `config` logged as
    its params. Everything that can fail (names, extras, opening the MLflow store) fails here,
    before training, as `ConfigError`."""
    names = parse_trackers(spec)
    trackers: list[Tracker] = []
    params = flatten_params(config)
    try:
        for name in names:
            tracker: Tracker = (TensorBoardTracker(run_dir) if name == "tensorboard" else
                                MLflowTracker(run_dir, config))
            trackers.append(tracker)
            tracker.log_params(params)
    except BaseException:
        for tracker in trackers:
            try:
                tracker.close(failed=True)
            except Exception:  # noqa: S110 - already failing; the first error is the one to show
                pass
        raise
    return trackers


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: {method_params: {ewc: {lambda: 1}}} -> method_params.ewc.
    lambda; lists and None as text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


# --- records -> scalars --------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class MetricMapper:
    """Turns metrics.jsonl records into (step, {name: value}) groups; see the module docstring.
    Keeps the little state the average accuracy and the summary's step need."""

    def __init__(self) -> None:
        self.last_step = 0
        self._accuracy: dict[int, dict[int, float | None]] = {}  # after_task -> task -> acc

    def record(self, record: Mapping[str, Any]) -> list[tuple[int, dict[str, float]]]:
        event = record.get("event")
        groups = list(self._groups(event, record))
        result = []
        for step, values in groups:
            metrics = {_clean(k): v for k, v in ((k, _number(v)) for k, v in values.items())
                       if v is not None}
            if metrics:
                step = int(step)
                self.last_step = max(self.last_step, step)
                result.append((step, metrics))
        return result

    def _groups(self, event: Any, record: Mapping[str, Any]
                ) -> Iterator[tuple[int, dict[str, Any]]]:
        task = record.get("task")
        if event == "baseline":
            yield 0, {f"baseline/task_{j}": v for j, v in enumerate(record.get("accuracy", []))}
        elif event == "eval":
            after, accuracy = record["after_task"], record.get("accuracy")
            values = {f"accuracy/task_{task}": accuracy, f"loss/task_{task}": record.get("loss")}
            seen = self._accuracy.setdefault(after, {})
            seen[task] = _number(accuracy)
            if task == after:  # evaluated on every task seen so far: 0..after
                present = [seen.get(j) for j in range(after + 1)]
                if all(v is not None for v in present):
                    values["accuracy/average"] = sum(present) / len(present)
                self._accuracy.pop(after)  # this row is done
            yield after, values
        elif event == "bin":
            skip = ("bin", "start", "end", "task")
            yield record["end"], {f"online/{k}": v for k, v in record.items()
                                  if k != "event" and k not in skip}
        elif event == "diagnostics":
            step = record.get("samples", task)
            yield step or 0, dict(_flat_values("diagnostics", record, ("samples", "task")))
        elif event == "task_end":
            values = dict(_flat_values("task", record, ("task", "epoch_losses")))
            losses = record.get("epoch_losses") or []
            if losses:
                values["task/train_loss"] = losses[-1]
            yield task or 0, values
        else:  # method, and whatever event comes later: every number under the event's name
            yield task or 0, dict(_flat_values(str(event or "record"), record, ("task",)))

    def summary(self, summary: Mapping[str, Any]) -> tuple[int, dict[str, float]]:
        """summary/{key} for every number of summary.json, at the run's last step."""
        step = max(self.last_step, len(summary.get("accuracy_matrix") or []) - 1,
                   int(_number(summary.get("samples")) or 0))
        metrics = {_clean(f"summary/{k}"): v for k, v in
                   ((k, _number(v)) for k, v in summary.items() if k != "seed")
                   if v is not None}
        return step, metrics


def _flat_values(prefix: str, record: Mapping[str, Any],
                 skip: Sequence[str]) -> Iterator[tuple[str, Any]]:
    for key, value in record.items():
        if key == "event" or key in skip:
            continue
        if isinstance(value, (list, tuple)):  # no name may also be a prefix (MLflow's files)
            for i, item in enumerate(value):
                yield f"{prefix}/{key}/{i}", item
        elif isinstance(value, Mapping):
            for sub, item in value.items():
                yield f"{prefix}/{key}/{sub}", item
        else:
            yield f"{prefix}/{key}", value


def _clean(name: str) -> str:
    """What MLflow accepts in a metric name: letters, digits, _ - . space : /"""
    return re.sub(r"[^\w\-. :/]", "_", name)


# --- the trackers --------------------------------------------------------------------------------
class TensorBoardTracker:
    """Scalars into RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR`)."""

    name = "tensorboard"

    def __init__(self, run_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(_missing(self.name)) from None
        self.path = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.path))

    def log_params(self, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self.writer._get_file_writer()
        for summary in hparams(dict(params), {}):  # the HPARAMS tab, no metric of its own
            writer.add_summary(summary)
        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", "| setting | value |\n|---|---|\n" + table)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run (experiment: the benchmark; run name: the run folder)."""

    name = "mlflow"

    def __init__(self, run_dir: str | Path, config: Mapping[str, Any]) -> None:
        try:
            import mlflow
            from mlflow import MlflowClient
        except ImportError:
            raise ConfigError(_missing(self.name)) from None
        path = Path(run_dir).resolve()
        # a grid's folders are METHOD/seedN: "seed0" alone would not say which run it is
        run_name = (f"{path.parent.name}/{path.name}" if re.fullmatch(r"seed\d+", path.name)
                    else path.name)
        uri = mlflow.get_tracking_uri()
        try:
            self.client = MlflowClient()
            experiment = str(config.get("benchmark") or "lifelong")
            self.run_id = self.client.create_run(
                self._experiment_id(experiment), run_name=run_name,
                tags={"lifelong.run_dir": str(path), "lifelong.method": str(config.get("method")),
                      "lifelong.seed": str(config.get("seed"))}).info.run_id
        except Exception as error:
            text = str(getattr(error, "message", None) or error or repr(error)).strip()
            text = text.splitlines()[0] if text else repr(error)
            if "MLFLOW_ALLOW_FILE_STORE" in text:  # mlflow 3 refuses ./mlruns unless told
                text = ("mlflow refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true is set; "
                        + text)
            raise ConfigError(
                f"--log mlflow: cannot open the MLflow tracking store {uri} "
                f"({type(error).__name__}: {text[:300]}); set MLFLOW_TRACKING_URI to one that "
                f"works here, e.g. an MLflow server http://HOST:5000 (a sqlite:/// store needs "
                f"the full mlflow package, not mlflow-skinny)") from None

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another process of the grid created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
