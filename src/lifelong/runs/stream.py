"""One streaming run end to end: `lifelong stream` calls `run_stream(StreamConfig(...))`.

Writes config.yaml, metrics.jsonl (one line per bin, per task, per diagnosis) and summary.json to
the output folder; every configuration error surfaces before the first step. A stream that
diverges (non-finite loss or weights) stops at that step: summary.json says `"status":
"diverged"`, keeps the bins before it and has null online metrics; `DivergedError` is raised.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import ConfigError, DivergedError
from ..metrics.diagnostics import diagnose
from ..training.lock import claim_folder
from ..training.online import StreamBin, StreamStats, stream_schedule, train_stream
from ..training.progress import Progress
from .config import StreamConfig
from .setup import open_run_dir, peak_memory_mb, prepare, set_up


@dataclasses.dataclass
class StreamResult:
    config: dict[str, Any]
    bins: list[dict[str, Any]]
    task_values: list[float]
    diagnostics: list[dict[str, Any]]
    metric: str  # "accuracy" or "error"
    samples: int
    steps: int
    seconds: float
    train_seconds: float
    peak_memory_mb: float
    device: str
    status: str = "finished"  # or "diverged" (then task_values is empty)
    divergence: dict[str, Any] | None = None  # DivergedError.record() when it diverged

    def summary(self) -> dict[str, Any]:
        values = self.task_values
        tail = values[-max(1, len(values) // 10):]
        return {
            "benchmark": self.config["benchmark"], "method": self.config["method"],
            "seed": self.config["seed"], "status": self.status,
            **({"divergence": self.divergence} if self.divergence else {}),
            "metric": self.metric,
            f"mean_online_{self.metric}": sum(values) / len(values) if values else None,
            f"first_task_{self.metric}": values[0] if values else None,
            f"last_10pct_tasks_{self.metric}": sum(tail) / len(tail) if tail else None,
            "task_values": values, "bins": self.bins, "diagnostics": self.diagnostics,
            "samples": self.samples, "steps": self.steps,
            "us_per_step": 1e6 * self.train_seconds / max(self.steps, 1),
            "seconds": self.seconds, "peak_memory_mb": self.peak_memory_mb,
            "device": self.device, "lifelong_version": __version__,
            "torch_version": torch.__version__,
        }


def _no_test_sets(model: torch.nn.Module) -> list[float]:
    """The evaluator a stream gives `Method.report`: a stream has no per-task test sets."""
    raise ConfigError("this method's report evaluates on each task's test set, which a stream "
                      "does not have; run it with `lifelong run` on a task benchmark")


def run_stream(config: StreamConfig, out_dir: str | Path | None = None, *,
               progress: bool = True, label: str = "") -> StreamResult:
    """Train `config.method` online on the benchmark's stream; see the module docstring.
    `out_dir` is held by this process meanwhile (`lifelong.training.lock`)."""
    with claim_folder(out_dir):
        return _run_stream(config, out_dir, progress=progress, label=label)


def _run_stream(config: StreamConfig, out_dir: str | Path | None, *, progress: bool,
                label: str) -> StreamResult:
    cfg, method = prepare(config)
    setup = set_up(cfg, method, out_dir)
    stream, model, device = setup.data, setup.model, setup.device
    metric = "error" if stream.regression else "accuracy"
    run_dir = open_run_dir(setup, out_dir)
    bins: list[dict[str, Any]] = []
    diagnoses: list[dict[str, Any]] = []
    probe: list[Any] = [None, None]  # [task, its probe batch]: one task's probe at a time
    diagnosis_seconds = 0.0  # kept out of the per-step time

    def log_bin(b: StreamBin) -> None:
        record = {"bin": b.index, "start": b.start, "end": b.end, "task": b.task,
                  metric: b.value, "loss": b.loss, "seconds": b.seconds}
        bins.append(record)
        if run_dir:
            run_dir.log(event="bin", **record)

    def log_task(task: int, value: float) -> None:
        if run_dir:
            run_dir.log(event="task_end", task=task, **{metric: value})

    def log_diagnosis(task: int, seen: int) -> None:
        nonlocal diagnosis_seconds
        clock = time.perf_counter()
        if probe[0] != task:
            probe[:] = [task, stream.probe(task, cfg.probe_size).to(device)]
        record = {"samples": seen, "task": task, **diagnose(model, probe[1], lr=cfg.lr)}
        if method.uses("report"):
            record.update(method.report(task, _no_test_sets))
        diagnoses.append(record)
        if run_dir:
            run_dir.log(event="diagnostics", **record)
        diagnosis_seconds += time.perf_counter() - clock

    started = time.perf_counter()
    diverged: DivergedError | None = None
    try:
        tasks, steps = stream_schedule(stream, cfg.batch_size, cfg.steps)
        with Progress(progress, label=label, num_tasks=tasks, total_steps=steps) as bar:
            stats = train_stream(
                model, setup.optimizer, method, stream, batch_size=cfg.batch_size,
                bin_size=cfg.bin_size, max_samples=cfg.steps, boundaries=cfg.boundaries,
                device=device, on_bin=log_bin, on_task_end=log_task,
                diagnose_every=cfg.diagnose_every,
                on_diagnose=log_diagnosis if cfg.diagnostics else None, progress=bar)
    except DivergedError as error:
        diverged = error
        if run_dir:
            run_dir.log(event="diverged", **error.record())
        # no online metric from a stream that stopped: the bins before it are kept
        stats = StreamStats(bins, [], bins[-1]["end"] if bins else 0, error.step or 0,
                            time.perf_counter() - started)
    finally:
        method.detach()
        if run_dir:
            run_dir.close()
    result = StreamResult(
        config=setup.config, bins=bins, task_values=stats.task_values, diagnostics=diagnoses,
        metric=metric, samples=stats.samples, steps=stats.steps,
        seconds=time.perf_counter() - started, train_seconds=stats.seconds - diagnosis_seconds,
        peak_memory_mb=peak_memory_mb(device), device=str(device))
    if diverged is not None:
        lr = f" (lr {cfg.lr:g})" if cfg.lr is not None else ""
        diverged.note = lr + ("; summary.json marks the run diverged" if run_dir else "")
        result.status = "diverged"
        result.divergence = {**diverged.record(), "message": str(diverged)}
        diverged.summary = result.summary()
    if run_dir:
        run_dir.write_summary(result.summary())
    if diverged is not None:
        raise diverged
    return result
