"""One experiment end to end: benchmark → scenario → model + method → train and evaluate → metrics.

`run_experiment(RunConfig(...))` is what `lifelong run` calls. Everything that can be wrong with
the configuration (names, values, combinations, missing data files) is checked before the first
training step.
"""

from __future__ import annotations

import dataclasses
import platform
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from ._version import __version__
from .core.compose import build_method, check_compatible, method_settings, parse_method_spec
from .core.config import Config, option
from .core.method import Method
from .errors import ConfigError
from .integrations.tracking import build_trackers, parse_trackers
from .metrics import summarize
from .metrics.diagnostics import diagnose
from .models import build_model
from .scenarios import Scenario, get_benchmark
from .training.checkpoint import CHECKPOINT, RunProgress, load_checkpoint, save_checkpoint
from .training.evaluate import evaluate
from .training.lifecycle import fit_task
from .training.progress import Progress
from .training.rundir import RunDir, jsonable


@dataclasses.dataclass
class RunConfig(Config):
    """Everything that defines a run; `None` means the benchmark's protocol default."""

    _owner = "run"
    benchmark: str = option("split-digits", "benchmark name (lifelong list)")
    scenario: Literal["task", "domain", "class"] | None = option(
        None, "task-, domain- or class-incremental (default: the benchmark's)")
    method: str = option("naive", "method, or methods joined by '+' (replay+ewc)")
    seed: int = option(0, "random seed of model, data order and methods", low=0)
    epochs: int | None = option(None, "passes over each task's data", low=1)
    iterations: int | None = option(None, "mini-batches per task (instead of epochs)", low=1)
    batch_size: int | None = option(None, "mini-batch size", low=1)
    lr: float | None = option(None, "learning rate", low=0, low_open=True)
    optimizer: Literal["sgd", "adam", "adamw"] | None = option(None, "optimizer")
    momentum: float | None = option(None, "SGD momentum (default: the benchmark's, mostly 0)",
                                    low=0, high=1)
    weight_decay: float | None = option(
        None, "the optimizer's weight decay (default: the benchmark's, mostly 0)", low=0)
    model: str | None = option(None, "model architecture (default: the benchmark's)")
    hidden: tuple[int, ...] | None = option(None, "hidden layer widths, e.g. 400,400", low=1)
    dropout: float = option(0.0, "dropout after each hidden layer", low=0, high=1)
    width: int | None = option(None, "channels of the first convolution (cnn: 32, resnet18: 20)",
                               low=1)
    batch_norm: bool | None = option(None, "BatchNorm in the model (default: resnet18 only)")
    head: Literal["multi", "shared"] = option(
        "multi", "task-incremental output: one head per task, or one shared head masked per task")
    mask_unseen: bool = option(
        True, "class-incremental: mask classes not seen yet (van de Ven et al. 2022)")
    eval_batch_size: int | None = option(None, "batch size for evaluation (default: the "
                                         "benchmark's, 1000; text 64)", low=1)
    diagnostics: bool = option(False, "after each task: dead units, effective/stable rank, "
                               "weight and gradient magnitude, plasticity on a probe set")
    probe_size: int = option(2000, "probe samples of the task for the diagnostics", low=1)
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:N or mps")
    flush_denormal: bool = option(
        True, "CPU: flush denormal floats to zero (Adam's moments of parameters that stop "
        "getting gradients decay into denormals, which made naive Split MNIST 1.7x slower)")
    data_dir: str | None = option(None, "folder with dataset files (default: $LIFELONG_DATA, "
                                  "then the download cache)")
    log: str = option("", "also log every metric to trackers: tensorboard, mlflow or both "
                      "(tensorboard,mlflow); needs pip install lifelong[tracking]")
    method_params: dict = option({}, "per-method settings, e.g. {ewc: {lambda: 100}}")
    benchmark_params: dict = option({}, "benchmark settings, e.g. {num_tasks: 5}")

    def validate(self) -> None:
        if self.epochs is not None and self.iterations is not None:
            raise ConfigError("give --epochs or --iterations, not both")
        parse_trackers(self.log)

    def resolved(self) -> RunConfig:
        """A copy with every default filled in from the benchmark's protocol."""
        benchmark = get_benchmark(self.benchmark)
        protocol = benchmark.protocol
        names = parse_method_spec(self.method)
        scenario = self.scenario or benchmark.default_scenario
        params = {name: {**protocol.params_for(scenario, name),
                         **self.method_params.get(name, {})} for name in names}
        unknown = sorted(set(self.method_params) - set(names))
        if unknown:
            raise ConfigError(f"settings given for {', '.join(unknown)}, which is not part of "
                              f"method '{self.method}'")
        epochs, iterations = self.epochs, self.iterations
        if epochs is None and iterations is None:
            epochs, iterations = protocol.epochs, protocol.iterations
        return self.replace(
            scenario=scenario,
            epochs=epochs, iterations=iterations,
            batch_size=self.batch_size or protocol.batch_size,
            lr=self.lr or protocol.lr,
            optimizer=self.optimizer or protocol.optimizer,
            model=self.model or protocol.model,
            eval_batch_size=self.eval_batch_size or protocol.eval_batch_size,
            momentum=protocol.momentum if self.momentum is None else self.momentum,
            weight_decay=(protocol.weight_decay if self.weight_decay is None
                          else self.weight_decay),
            hidden=list(self.hidden or protocol.hidden),
            method_params={n: p for n, p in params.items() if p},
            benchmark_params=benchmark.options.from_dict(self.benchmark_params).to_dict(),
        )


@dataclasses.dataclass
class RunResult:
    config: dict[str, Any]
    accuracy_matrix: list[list[float]]
    loss_matrix: list[list[float]]
    baseline_accuracy: list[float | None]
    metrics: dict[str, float | None]
    task_seconds: list[float]
    method_reports: list[dict[str, float]]  # per task: what the method measured (report hook)
    diagnostics: list[dict[str, Any]]  # per task, with --diagnostics (lifelong.metrics.diagnostics)
    seconds: float
    peak_memory_mb: float
    device: str

    def summary(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "benchmark": cfg["benchmark"], "scenario": cfg["scenario"], "method": cfg["method"],
            "seed": cfg["seed"], **self.metrics,
            "accuracy_matrix": self.accuracy_matrix, "loss_matrix": self.loss_matrix,
            "baseline_accuracy": self.baseline_accuracy,
            "task_seconds": self.task_seconds, "method_reports": self.method_reports,
            "diagnostics": self.diagnostics,
            "seconds": self.seconds,
            "peak_memory_mb": self.peak_memory_mb, "device": self.device,
            "lifelong_version": __version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(),
        }


# settings that change no result: a run may be resumed, or a finished one kept, with others
RESULT_NEUTRAL = ("log",)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; accepted: auto, cpu, cuda, cuda:N, mps"
                          ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available here; "
                          "use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' asked for, but MPS is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(name: str, params: Any, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def prepare(config: RunConfig) -> tuple[RunConfig, Method]:
    """Resolve defaults and build the method: every configuration error surfaces here."""
    cfg = config.resolved()
    method = build_method(cfg.method, cfg.method_params)
    check_compatible(method, cfg.scenario)
    resolve_device(cfg.device)
    return cfg.replace(method_params=method_settings(method)), method


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB else


def baseline_accuracies(model: torch.nn.Module, scenario: Scenario, device: torch.device,
                        batch_size: int) -> list[float | None]:
    """b_j: accuracy of the untrained model on task j, read out as R[j-1][j] will be (for FWT).

    In class-incremental learning with unseen classes masked, R[j-1][j] only sees the classes of
    tasks before j, so b_j does too; b_0 is not used by FWT and is None there.
    """
    readout = scenario.readout
    saved = readout.active.clone()
    baseline: list[float | None] = []
    try:
        for j, task in enumerate(scenario.tasks):
            if readout.mask_unseen:
                if j == 0:
                    baseline.append(None)
                    continue
                active = torch.zeros_like(saved)
                active[readout.units(list(range(j)))] = True
                readout.set_active(active)
            baseline.append(evaluate(model, readout, task.test_data(device), batch_size,
                                     per_token=scenario.per_token)[0])
    finally:
        readout.set_active(saved)
    return baseline


def run_experiment(config: RunConfig, out_dir: str | Path | None = None, *,
                   progress: bool = True, label: str = "", resume: bool = False,
                   checkpoint: bool = True) -> RunResult:
    """Train `config.method` on every task of the benchmark in turn, evaluating all tasks after
    each; write config.yaml, metrics.jsonl, summary.json and, after every task, checkpoint.pt
    (`checkpoint=False`: none) to `out_dir` when given.

    `resume=True` continues the run in `out_dir` from its last checkpoint (from the start when a
    kill came before the first one): the result equals an uninterrupted run's
    (`lifelong.training.checkpoint`)."""
    cfg, method = prepare(config)
    if resume and out_dir is None:
        raise ConfigError("resuming needs the run's folder")
    if cfg.log and out_dir is None:
        raise ConfigError(f"log={cfg.log} needs the run's folder")
    device = resolve_device(cfg.device)
    benchmark = get_benchmark(cfg.benchmark)
    scenario = benchmark.build(cfg.scenario, data_dir=cfg.data_dir, head=cfg.head,
                               mask_unseen=cfg.mask_unseen, options=cfg.benchmark_params,
                               model=cfg.model)
    seed_everything(cfg.seed)
    if device.type == "cpu" and cfg.flush_denormal:
        torch.set_flush_denormal(True)  # process-wide; a no-op where the CPU lacks it
    readout = scenario.readout.to(device)
    model = build_model(cfg.model, scenario.input_shape, scenario.num_outputs, cfg.hidden,
                        cfg.dropout, width=cfg.width, batch_norm=cfg.batch_norm,
                        text=scenario.text).to(device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.momentum,
                               cfg.weight_decay)
    method.attach(model, optimizer, readout, seed=cfg.seed + 1_000_003)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    config_dict = {"lifelong_version": __version__, **cfg.to_dict()}
    done = RunProgress()
    run_dir = None
    if out_dir is not None:
        out = Path(out_dir)
        if resume:
            _check_same_config(out, config_dict)
        if resume and (out / CHECKPOINT).is_file():
            done = load_checkpoint(out, model=model, optimizer=optimizer, method=method,
                                   readout=readout, shuffle=shuffle)
            run_dir = RunDir(out, append=True, truncate_at=done.metrics_bytes,
                             trackers=build_trackers(cfg.log, out, config_dict))
        else:
            (out / CHECKPOINT).unlink(missing_ok=True)  # a stale one must not be resumed
            run_dir = RunDir(out, trackers=build_trackers(cfg.log, out, config_dict))
            run_dir.write_config(config_dict)
    started = time.perf_counter() - done.seconds
    if done.next_task == 0:
        done.baseline = baseline_accuracies(model, scenario, device, cfg.eval_batch_size)
        if run_dir:
            run_dir.log(event="baseline", accuracy=done.baseline)

    def evaluate_all(candidate: torch.nn.Module) -> list[float]:
        return [evaluate(candidate, readout, other.test_data(device), cfg.eval_batch_size,
                         per_token=scenario.per_token)[0]
                for other in scenario.tasks]

    try:
        with Progress(progress, label=label, num_tasks=scenario.num_tasks) as bar:
            for task in scenario.tasks[done.next_task:]:
                task_started = time.perf_counter()
                data = task.train_data(device)
                stats = fit_task(model, optimizer, method, readout, task.id, data,
                                 batch_size=cfg.batch_size, epochs=cfg.epochs,
                                 iterations=cfg.iterations, generator=shuffle, progress=bar)
                row, losses = [], []
                for other in scenario.tasks:
                    method.evaluation_task(other.id)
                    accuracy, loss = evaluate(model, readout, other.test_data(device),
                                              cfg.eval_batch_size, per_token=scenario.per_token)
                    method.evaluation_task(None)
                    row.append(accuracy)
                    losses.append(loss)
                    if run_dir:
                        run_dir.log(event="eval", after_task=task.id, task=other.id,
                                    accuracy=accuracy, loss=loss)
                done.accuracy_matrix.append(row)
                done.loss_matrix.append(losses)
                if method.uses("report"):
                    done.method_reports.append(method.report(task.id, evaluate_all))
                    if run_dir:
                        run_dir.log(event="method", task=task.id, **done.method_reports[-1])
                if cfg.diagnostics:
                    probe = data.select(slice(0, cfg.probe_size))
                    done.diagnostics.append({"task": task.id, **diagnose(
                        model, probe, lr=cfg.lr, readout=readout)})
                    if run_dir:
                        run_dir.log(event="diagnostics", **done.diagnostics[-1])
                done.task_seconds.append(time.perf_counter() - task_started)
                if run_dir:
                    run_dir.log(event="task_end", task=task.id, steps=stats.steps,
                                train_seconds=stats.seconds, seconds=done.task_seconds[-1],
                                epoch_losses=stats.epoch_losses)
                    if checkpoint:
                        done.next_task = task.id + 1
                        done.seconds = time.perf_counter() - started
                        done.metrics_bytes = run_dir.metrics_bytes()
                        save_checkpoint(run_dir.path, model=model, optimizer=optimizer,
                                        method=method, readout=readout, shuffle=shuffle,
                                        progress=done)
    finally:
        method.detach()
        if run_dir:
            run_dir.close()
    result = RunResult(
        config=config_dict, accuracy_matrix=done.accuracy_matrix, loss_matrix=done.loss_matrix,
        baseline_accuracy=done.baseline,
        metrics=summarize(done.accuracy_matrix, _fwt_baseline(done.baseline)),
        task_seconds=done.task_seconds, method_reports=done.method_reports,
        diagnostics=done.diagnostics, seconds=time.perf_counter() - started,
        peak_memory_mb=_peak_memory_mb(device), device=str(device))
    if run_dir:
        run_dir.write_summary(result.summary())
    return result


def resume_experiment(out_dir: str | Path, *, progress: bool = True,
                      label: str = "") -> RunResult:
    """Continue the run in `out_dir` (its config.yaml) from its last checkpoint."""
    out = Path(out_dir)
    config_file = out / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{out} holds no config.yaml: it is not a run folder of `lifelong run`")
    saved = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
    saved.pop("lifelong_version", None)
    return run_experiment(RunConfig.from_dict(saved), out, progress=progress, label=label,
                          resume=True)


def config_differences(out: str | Path, config: dict[str, Any],
                       ignore: tuple[str, ...] = ()) -> list[str] | None:
    """The settings whose value in `out/config.yaml` differs from `config` (as a run writes it),
    apart from `ignore` and settings that change no result; None when there is no config.yaml."""
    path = Path(out) / "config.yaml"
    if not path.is_file():
        return None
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    wanted = yaml.safe_load(yaml.safe_dump(jsonable(config), sort_keys=False))
    skip = (*ignore, *RESULT_NEUTRAL)
    return sorted(k for k in set(saved) | set(wanted)
                  if k not in skip and saved.get(k) != wanted.get(k))


def _check_same_config(out: Path, config: dict[str, Any]) -> None:
    """A resumed run must have the configuration its folder was started with (any version)."""
    changed = config_differences(out, config, ignore=("lifelong_version",))
    if changed is None:
        raise ConfigError(f"cannot resume {out}: it holds no config.yaml")
    if changed:
        raise ConfigError(f"cannot resume {out}: its config.yaml differs from this run's in "
                          f"{', '.join(changed)}; start a new folder instead")


def _fwt_baseline(baseline: list[float | None]) -> list[float]:
    return [0.0 if b is None else b for b in baseline]  # b_0 is never used by FWT
