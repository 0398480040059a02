"""One streaming run end to end: `lifelong stream` calls `run_stream(StreamConfig(...))`.

Writes config.yaml, metrics.jsonl (one line per bin, per task, per diagnosis) and summary.json to
the output folder; every configuration error surfaces before the first step.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import torch

from .._version import __version__
from ..core.compose import build_method, check_compatible, method_settings, parse_method_spec
from ..core.config import Config, option
from ..core.method import Method
from ..errors import ConfigError
from ..experiment import _peak_memory_mb, make_optimizer, resolve_device, seed_everything
from ..integrations.tracking import build_trackers, parse_trackers
from ..metrics.diagnostics import diagnose
from ..models import build_model
from ..training.lifecycle import check_trains_on_given_data
from ..training.progress import Progress
from ..training.rundir import RunDir
from .benchmarks import get_stream_benchmark
from .trainer import StreamBin, train_stream


@dataclasses.dataclass
class StreamConfig(Config):
    """Everything that defines a streaming run; `None` means the benchmark's protocol default."""

    _owner = "stream"
    benchmark: str = option("slowly-changing-regression", "streaming benchmark "
                            "(lifelong list)")
    method: str = option("naive", "method, or methods joined by '+'")
    seed: int = option(0, "random seed of the stream, model and method", low=0)
    tasks: int | None = option(None, "number of tasks (default: the benchmark's)", low=1)
    steps: int | None = option(None, "stop after this many samples", low=1)
    batch_size: int | None = option(None, "samples per update (default 1)", low=1)
    lr: float | None = option(None, "learning rate", low=0, low_open=True)
    optimizer: Literal["sgd", "adam"] | None = option(None, "optimizer (default sgd)")
    momentum: float = option(0.0, "SGD momentum", low=0, high=1)
    weight_decay: float = option(0.0, "the optimizer's weight decay", low=0)
    model: str = option("mlp", "model architecture")
    hidden: tuple[int, ...] | None = option(None, "hidden layer widths", low=1)
    bin_size: int | None = option(None, "samples per bin of the online metric "
                                  "(default: one task; 20k for the regression)", low=1)
    boundaries: bool = option(False, "announce task boundaries to the method "
                              "(default: task-free)")
    diagnostics: bool = option(False, "measure dead units, ranks, weight and gradient "
                               "magnitude and plasticity on a probe set")
    diagnose_every: int | None = option(None, "samples between diagnoses (default: each bin)",
                                        low=1)
    probe_size: int = option(2000, "probe samples of the current task for the diagnostics",
                             low=1)
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:N or mps")
    flush_denormal: bool = option(True, "CPU: flush denormal floats to zero")
    data_dir: str | None = option(None, "folder with dataset files")
    log: str = option("", "also log every metric to trackers: tensorboard, mlflow or both "
                      "(tensorboard,mlflow); needs pip install lifelong[tracking]")
    method_params: dict = option({}, "per-method settings, e.g. {cbp: {replacement_rate: 1e-4}}")
    benchmark_params: dict = option({}, "benchmark settings, e.g. {samples_per_task: 5000}")

    def validate(self) -> None:
        parse_trackers(self.log)

    def resolved(self) -> StreamConfig:
        benchmark = get_stream_benchmark(self.benchmark)
        protocol = benchmark.protocol
        names = parse_method_spec(self.method)
        unknown = sorted(set(self.method_params) - set(names))
        if unknown:
            raise ConfigError(f"settings given for {', '.join(unknown)}, which is not part of "
                              f"method '{self.method}'")
        options = benchmark.options.from_dict(self.benchmark_params)
        return self.replace(
            tasks=self.tasks or protocol.num_tasks,
            batch_size=self.batch_size or protocol.batch_size,
            lr=self.lr or protocol.lr,
            optimizer=self.optimizer or protocol.optimizer,
            hidden=list(self.hidden or protocol.hidden),
            bin_size=self.bin_size or protocol.bin_size or options.to_dict()["samples_per_task"],
            benchmark_params=options.to_dict(),
        )


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

    def summary(self) -> dict[str, Any]:
        values = self.task_values
        tail = values[-max(1, len(values) // 10):]
        return {
            "benchmark": self.config["benchmark"], "method": self.config["method"],
            "seed": self.config["seed"], "metric": self.metric,
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


def prepare_stream(config: StreamConfig) -> tuple[StreamConfig, Method]:
    """Resolve defaults and build the method; every configuration error surfaces here."""
    cfg = config.resolved()
    method = build_method(cfg.method, cfg.method_params)
    # a stream reads one shared output without task ids: domain-incremental
    check_compatible(method, "domain", task_boundaries=cfg.boundaries)
    check_trains_on_given_data(method, "a stream", "run it with `lifelong run` on a task "
                               "benchmark")
    resolve_device(cfg.device)
    return cfg.replace(method_params=method_settings(method)), method


def _no_test_sets(model: torch.nn.Module) -> list[float]:
    """The evaluator a stream gives `Method.report`: a stream has no per-task test sets."""
    raise ConfigError("this method's report evaluates on each task's test set, which a stream "
                      "does not have; run it with `lifelong run` on a task benchmark")


def run_stream(config: StreamConfig, out_dir: str | Path | None = None, *,
               progress: bool = True, label: str = "") -> StreamResult:
    """Train `config.method` online on the benchmark's stream; see the module docstring."""
    cfg, method = prepare_stream(config)
    if cfg.log and out_dir is None:
        raise ConfigError(f"log={cfg.log} needs the run's folder")
    device = resolve_device(cfg.device)
    benchmark = get_stream_benchmark(cfg.benchmark)
    stream = benchmark.build(num_tasks=cfg.tasks, seed=cfg.seed, data_dir=cfg.data_dir,
                             options=cfg.benchmark_params)
    seed_everything(cfg.seed)
    if device.type == "cpu" and cfg.flush_denormal:
        torch.set_flush_denormal(True)
    model = build_model(cfg.model, stream.input_shape, stream.num_outputs, cfg.hidden).to(device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.momentum,
                               cfg.weight_decay)
    method.attach(model, optimizer, seed=cfg.seed + 1_000_003)
    metric = "error" if stream.regression else "accuracy"

    config_dict = {"lifelong_version": __version__, **cfg.to_dict()}
    run_dir = (RunDir(out_dir, trackers=build_trackers(cfg.log, out_dir, config_dict))
               if out_dir is not None else None)
    if run_dir:
        run_dir.write_config(config_dict)
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
    try:
        with Progress(progress, label=label, num_tasks=stream.num_tasks) as bar:
            stats = train_stream(
                model, optimizer, method, stream, batch_size=cfg.batch_size,
                bin_size=cfg.bin_size, max_samples=cfg.steps, boundaries=cfg.boundaries,
                device=device, on_bin=log_bin, on_task_end=log_task,
                diagnose_every=cfg.diagnose_every,
                on_diagnose=log_diagnosis if cfg.diagnostics else None, progress=bar)
    finally:
        method.detach()
        if run_dir:
            run_dir.close()
    result = StreamResult(
        config=config_dict, bins=bins, task_values=stats.task_values, diagnostics=diagnoses,
        metric=metric, samples=stats.samples, steps=stats.steps,
        seconds=time.perf_counter() - started, train_seconds=stats.seconds - diagnosis_seconds,
        peak_memory_mb=_peak_memory_mb(device), device=str(device))
    if run_dir:
        run_dir.write_summary(result.summary())
    return result
