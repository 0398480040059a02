"""One experiment end to end: benchmark → scenario → model + method → train and evaluate → metrics.

`run_experiment(RunConfig(...))` is what `lifelong run` calls. Everything that can be wrong with
the configuration (names, values, combinations, missing data files) is checked before the first
training step. Each task goes through the one task lifecycle (`lifelong.training.lifecycle`),
then every task's test set is evaluated; the results so far are checkpointed after each task.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import ConfigError, DivergedError
from ..metrics import summarize
from ..metrics.diagnostics import diagnose
from ..scenarios import Scenario, Task
from ..training.checkpoint import CHECKPOINT, RunProgress, load_checkpoint, save_checkpoint
from ..training.evaluate import TaskAccuracies, evaluate, evaluate_tasks
from ..training.lifecycle import fit_task
from ..training.lock import claim_folder
from ..training.progress import Progress
from ..training.rundir import RunDir, read_yaml
from .config import RunConfig, config_differences
from .setup import Setup, open_run_dir, peak_memory_mb, prepare, set_up

METRIC_KEYS = ("acc", "bwt", "fwt", "forgetting")  # what `summarize` gives


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
    status: str = "finished"  # or "diverged"
    divergence: dict[str, Any] | None = None  # DivergedError.record() when it diverged

    def summary(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "benchmark": cfg["benchmark"], "scenario": cfg["scenario"], "method": cfg["method"],
            "seed": cfg["seed"], "status": self.status,
            **({"divergence": self.divergence} if self.divergence else {}), **self.metrics,
            "accuracy_matrix": self.accuracy_matrix, "loss_matrix": self.loss_matrix,
            "baseline_accuracy": self.baseline_accuracy,
            "task_seconds": self.task_seconds, "method_reports": self.method_reports,
            "diagnostics": self.diagnostics,
            "seconds": self.seconds,
            "peak_memory_mb": self.peak_memory_mb, "device": self.device,
            "lifelong_version": __version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(),
        }


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
    (`checkpoint=False`: none) to `out_dir` when given, which this process holds meanwhile
    (`lifelong.training.lock`: another process using it is refused).

    `resume=True` continues the run in `out_dir` from its last checkpoint (from the start when a
    kill came before the first one): the result equals an uninterrupted run's
    (`lifelong.training.checkpoint`)."""
    with claim_folder(out_dir):
        return _run_experiment(config, out_dir, progress=progress, label=label, resume=resume,
                               checkpoint=checkpoint)


def _run_experiment(config: RunConfig, out_dir: str | Path | None, *, progress: bool,
                    label: str, resume: bool, checkpoint: bool) -> RunResult:
    cfg, method = prepare(config)
    if resume and out_dir is None:
        raise ConfigError("resuming needs the run's folder")
    setup = set_up(cfg, method, out_dir)
    run = _TaskRun(setup, out_dir, resume=resume, checkpoint=checkpoint)
    scenario = setup.data
    diverged: DivergedError | None = None
    try:
        run.measure_baseline()
        with Progress(progress, label=label, num_tasks=scenario.num_tasks) as bar:
            for task in scenario.tasks[run.done.next_task:]:
                run.train_and_evaluate(task, bar)
    except DivergedError as error:
        diverged = error
        run.log(event="diverged", **error.record())
    finally:
        method.detach()
        if run.run_dir:
            run.run_dir.close()
    done = run.done
    result = RunResult(
        config=setup.config, accuracy_matrix=done.accuracy_matrix, loss_matrix=done.loss_matrix,
        baseline_accuracy=done.baseline,
        # never numbers from a run that did not finish: a reader would take them for results
        metrics=dict.fromkeys(METRIC_KEYS) if diverged else summarize(
            done.accuracy_matrix, _fwt_baseline(done.baseline)),
        task_seconds=done.task_seconds, method_reports=done.method_reports,
        diagnostics=done.diagnostics, seconds=time.perf_counter() - run.started,
        peak_memory_mb=peak_memory_mb(setup.device), device=str(setup.device))
    if diverged is not None:
        diverged.note = run.divergence_note()
        result.status, result.divergence = "diverged", {**diverged.record(),
                                                        "message": str(diverged)}
        diverged.summary = result.summary()
    if run.run_dir:
        run.run_dir.write_summary(result.summary())
        if diverged is None and not cfg.keep_checkpoint:  # finished, results written
            (run.run_dir.path / CHECKPOINT).unlink(missing_ok=True)
    if diverged is not None:
        raise diverged  # its last good checkpoint stays
    return result


def resume_experiment(out_dir: str | Path, *, progress: bool = True,
                      label: str = "") -> RunResult:
    """Continue the run in `out_dir` (its config.yaml) from its last checkpoint."""
    out = Path(out_dir)
    config_file = out / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{out} holds no config.yaml: it is not a run folder of `lifelong run`")
    saved = read_yaml(config_file, f"the run's {config_file}")
    saved.pop("lifelong_version", None)
    return run_experiment(RunConfig.from_dict(saved), out, progress=progress, label=label,
                          resume=True)


EXPLODED = 1e4  # a pass's mean loss this many times the run's first step's: it may diverge


class _TaskRun:
    """The steps of one task-by-task run; they share its set-up, its folder and `done`, the
    results so far (restored from the checkpoint when resuming)."""

    def __init__(self, setup: Setup, out_dir: str | Path | None, *, resume: bool,
                 checkpoint: bool) -> None:
        self.setup, self.cfg = setup, setup.cfg
        self.checkpoint = checkpoint
        self.shuffle = torch.Generator().manual_seed(self.cfg.seed)  # mini-batch order
        self.done = RunProgress()
        self.warned = False  # the exploding-loss warning was given
        if resume:
            self._restore(Path(out_dir))
        else:
            self.run_dir = open_run_dir(setup, out_dir)
        self.started = time.perf_counter() - self.done.seconds

    def _restore(self, out: Path) -> None:
        """A resumed run must have the configuration its folder was started with (any version);
        without a checkpoint it starts again (a kill before the first one), unless it has
        finished (summary.json; the checkpoint is dropped then): nothing is left to resume."""
        changed = config_differences(out, self.setup.config, ignore=("lifelong_version",))
        if changed is None:
            raise ConfigError(f"cannot resume {out}: it holds no config.yaml")
        if changed:
            raise ConfigError(f"cannot resume {out}: its config.yaml differs from this run's in "
                              f"{', '.join(changed)}; start a new folder instead")
        if not (out / CHECKPOINT).is_file():
            if (out / "summary.json").is_file():
                raise ConfigError(f"cannot resume {out}: the run has finished (summary.json); "
                                  "there is nothing to resume")
            self.run_dir = open_run_dir(self.setup, out)
            return
        s = self.setup
        self.done = load_checkpoint(out, model=s.model, optimizer=s.optimizer, method=s.method,
                                    readout=s.readout, shuffle=self.shuffle)
        self.run_dir = open_run_dir(s, out, resume_at=self.done.metrics_bytes)

    def log(self, **record: Any) -> None:
        if self.run_dir:
            self.run_dir.log(**record)

    def measure_baseline(self) -> None:
        if self.done.next_task == 0:
            s = self.setup
            self.done.baseline = baseline_accuracies(s.model, s.data, s.device,
                                                     self.cfg.eval_batch_size)
            self.log(event="baseline", accuracy=self.done.baseline)

    def train_and_evaluate(self, task: Task, bar: Progress) -> None:
        """Task `task` through the lifecycle, then every task's test set, the method's report,
        the diagnostics, the log line of the task's end and the checkpoint."""
        s, cfg, done = self.setup, self.cfg, self.done
        task_started = time.perf_counter()
        data = task.train_data(s.device)
        stats = fit_task(s.model, s.optimizer, s.method, s.readout, task.id, data,
                         batch_size=cfg.batch_size, epochs=cfg.epochs,
                         iterations=cfg.iterations, generator=self.shuffle, progress=bar)
        self._warn_if_exploding(task.id, stats.first_loss, stats.epoch_losses)
        scores = evaluate_tasks(s.model, s.readout, s.data, s.device, cfg.eval_batch_size,
                                method=s.method)
        for other, (accuracy, loss) in zip(s.data.tasks, scores):
            self.log(event="eval", after_task=task.id, task=other.id, accuracy=accuracy,
                     loss=loss)
        done.accuracy_matrix.append([accuracy for accuracy, _ in scores])
        done.loss_matrix.append([loss for _, loss in scores])
        if s.method.uses("report"):
            done.method_reports.append(s.method.report(task.id, self._accuracies))
            self.log(event="method", task=task.id, **done.method_reports[-1])
        if cfg.diagnostics:
            probe = data.select(slice(0, cfg.probe_size))
            done.diagnostics.append({"task": task.id, **diagnose(
                s.model, probe, lr=cfg.lr, readout=s.readout)})
            self.log(event="diagnostics", **done.diagnostics[-1])
        done.task_seconds.append(time.perf_counter() - task_started)
        seen = done.accuracy_matrix[-1][:task.id + 1]
        bar.end_task(*(f"loss {loss:.4f}" for loss in stats.epoch_losses[-1:]),
                     f"ACC so far {sum(seen) / len(seen):.3f}")
        self.log(event="task_end", task=task.id, steps=stats.steps, train_seconds=stats.seconds,
                 seconds=done.task_seconds[-1], epoch_losses=stats.epoch_losses)
        # after the last task the run is finished but for its summary: a checkpoint that would
        # be deleted a moment later is not written (a kill in between repeats the last task)
        last = task.id == s.data.tasks[-1].id
        if self.run_dir and self.checkpoint and (cfg.keep_checkpoint or not last):
            self._save(self.run_dir, task.id)

    def _warn_if_exploding(self, task: int, first_step_loss: float | None,
                           epoch_losses: list[float]) -> None:
        """A finite loss can still have exploded (Adam at lr 1e6 reaches 7e21): one warning line
        (and a metrics.jsonl record) when a pass's mean loss is EXPLODED times the loss of the
        run's first step, taken before any update."""
        done = self.done
        if done.first_loss is None:
            done.first_loss = first_step_loss
        first = done.first_loss
        if first is None or first <= 0 or not epoch_losses:
            return
        worst = max(epoch_losses)
        if worst > EXPLODED * first and not self.warned:
            self.warned = True  # once per run: the later tasks' lines would say nothing new
            lr = f" (lr {self.cfg.lr:g})" if self.cfg.lr is not None else ""
            line = (f"the training loss rose from {first:.4g} (the run's first step) to "
                    f"{worst:.4g} in task {task}{lr}: the run may be diverging")
            print(f"warning: {line}", file=sys.stderr, flush=True)
            self.log(event="warning", task=task, message=line)

    def divergence_note(self) -> str:
        """The end of a divergence's message: the learning rate, what was kept, where."""
        lr = f" (lr {self.cfg.lr:g})" if self.cfg.lr is not None else ""
        if self.run_dir is None:
            return lr
        folder, finished = self.run_dir.path, len(self.done.accuracy_matrix)
        if finished and (folder / CHECKPOINT).is_file():
            kept = f"the last good checkpoint (after task {finished - 1}) is kept in {folder}"
        elif finished:
            kept = f"{folder} holds no checkpoint (none was asked for)"
        else:
            kept = f"no task finished before it, so {folder} holds no checkpoint"
        return f"{lr}; {kept}; summary.json marks the run diverged"

    def _accuracies(self, candidate: torch.nn.Module) -> Sequence[float]:
        """The evaluator a method's report gets: `candidate`'s accuracy on every task (each
        evaluated when the report reads it; the trained model's is the row just measured)."""
        s = self.setup
        if candidate is s.model and not s.method.uses("evaluation_task"):
            return self.done.accuracy_matrix[-1]
        return TaskAccuracies(candidate, s.readout, s.data, s.device, self.cfg.eval_batch_size)

    def _save(self, run_dir: RunDir, task: int) -> None:
        s, done = self.setup, self.done
        done.next_task = task + 1
        done.seconds = time.perf_counter() - self.started
        done.metrics_bytes = run_dir.metrics_bytes()
        save_checkpoint(run_dir.path, model=s.model, optimizer=s.optimizer, method=s.method,
                        readout=s.readout, shuffle=self.shuffle, progress=done)


def _fwt_baseline(baseline: list[float | None]) -> list[float]:
    return [0.0 if b is None else b for b in baseline]  # b_0 is never used by FWT
