"""Grids of runs (methods x seeds) in parallel processes, their summary, and the demo."""

from __future__ import annotations

import concurrent.futures as futures
import json
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ._version import __version__
from .checkpoint import CHECKPOINT
from .errors import ConfigError
from .rundir import write_json

SUMMARY_KEYS = ("acc", "bwt", "fwt", "forgetting", "seconds")


def _run_one(config: dict[str, Any], out_dir: str, threads: int | None,
             progress: bool, label: str, resume: bool = False) -> dict[str, Any]:
    """One run (in a worker process when jobs > 1); returns its summary. `resume`: continue
    from the checkpoint in `out_dir`."""
    import torch

    from .experiment import RunConfig, run_experiment

    if threads:
        torch.set_num_threads(threads)
    result = run_experiment(RunConfig.from_dict(config), out_dir, progress=progress, label=label,
                            resume=resume)
    return result.summary()


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "count": 0, "values": list(values)}
    std = float(np.std(present, ddof=1)) if len(present) > 1 else 0.0
    return {"mean": float(np.mean(present)), "std": std, "count": len(present),
            "values": list(values)}


def plan_grid(settings: dict[str, Any], methods: Sequence[str], seeds: Sequence[int],
              set_pairs: Sequence[str]) -> list[tuple[str, int, dict[str, Any]]]:
    """Every (method, seed, resolved config) of the grid, all validated before anything runs."""
    from .cli import route_settings
    from .experiment import RunConfig, prepare
    from .scenarios import get_benchmark

    if len(set(methods)) != len(methods):
        raise ConfigError("--methods names a method twice")
    plan = []
    for method in methods:
        routed = route_settings(set_pairs, method, {**settings, "method": method})
        for seed in seeds:
            resolved, _ = prepare(RunConfig.from_dict({**routed, "seed": seed}))
            plan.append((method, seed, resolved.to_dict()))
    first = plan[0][2]  # a missing file or an impossible benchmark option fails now
    get_benchmark(first["benchmark"]).build(
        first["scenario"], data_dir=first["data_dir"], head=first["head"],
        mask_unseen=first["mask_unseen"], options=first["benchmark_params"])
    return plan


def _same_config(directory: Path, config: dict[str, Any]) -> bool:
    if not (directory / "config.yaml").is_file():
        return False
    wanted = yaml.safe_load(yaml.safe_dump({"lifelong_version": __version__, **config}))
    return yaml.safe_load((directory / "config.yaml").read_text()) == wanted


def finished_summary(directory: str | Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a run already in `directory` with exactly this configuration, or None."""
    directory = Path(directory)
    if not (directory / "summary.json").is_file() or not _same_config(directory, config):
        return None
    return json.loads((directory / "summary.json").read_text())


def resumable(directory: str | Path, config: dict[str, Any]) -> bool:
    """Whether `directory` holds an unfinished run of this configuration with a checkpoint."""
    directory = Path(directory)
    return (directory / CHECKPOINT).is_file() and _same_config(directory, config)


def run_grid(settings: dict[str, Any], methods: Sequence[str], seeds: Sequence[int],
             set_pairs: Sequence[str], out: Path, *, jobs: int = 1,
             progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run every method with every seed into `out/METHOD/seedN/`, then write
    `out/comparison.json` with each metric's mean ± std (sample std over seeds) per method.

    `resume=True` keeps the finished runs whose folder holds the same configuration and
    continues the unfinished ones from their checkpoints."""
    plan = plan_grid(settings, methods, seeds, set_pairs)
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    directories = {(m, s): str(out / m / f"seed{s}") for m, s, _ in plan}
    if resume:
        for method, seed, config in plan:
            done = finished_summary(directories[(method, seed)], config)
            if done is not None:
                summaries[(method, seed)] = done
        plan_to_run = [item for item in plan if (item[0], item[1]) not in summaries]
    else:
        plan_to_run = plan
    continued = {(m, s): resume and resumable(directories[(m, s)], config)
                 for m, s, config in plan_to_run}
    if jobs == 1:
        for index, (method, seed, config) in enumerate(plan_to_run):
            label = f"[{index + 1}/{len(plan_to_run)}] {method} seed {seed} · "
            summaries[(method, seed)] = _run_one(config, directories[(method, seed)], None,
                                                 progress, label, continued[(method, seed)])
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
        with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            pending = {pool.submit(_run_one, config, directories[(m, s)], threads, False, "",
                                   continued[(m, s)]): (m, s) for m, s, config in plan_to_run}
            with _GridProgress(progress, len(pending)) as bar:
                for done in futures.as_completed(pending):
                    summaries[pending[done]] = done.result()
                    bar.advance(*pending[done])
    comparison = summarize_grid(plan, summaries, directories, list(seeds))
    write_json(out / "comparison.json", comparison)
    return comparison


def summarize_grid(plan: Sequence[tuple[str, int, dict[str, Any]]],
                   summaries: dict[tuple[str, int], dict[str, Any]],
                   directories: dict[tuple[str, int], str], seeds: list[int]) -> dict[str, Any]:
    first = plan[0][2]
    methods: dict[str, Any] = {}
    for method in dict.fromkeys(m for m, _, _ in plan):
        runs = [summaries[(method, s)] for s in seeds]
        methods[method] = {key: _stats([r[key] for r in runs]) for key in SUMMARY_KEYS}
    return {
        "benchmark": first["benchmark"], "scenario": first["scenario"], "seeds": seeds,
        "methods": methods,
        "runs": [{"method": m, "seed": s, "dir": directories[(m, s)],
                  **{k: summaries[(m, s)][k] for k in SUMMARY_KEYS},
                  "accuracy_matrix": summaries[(m, s)]["accuracy_matrix"]}
                 for m, s, _ in plan],
        "lifelong_version": __version__,
    }


class _GridProgress:
    def __init__(self, enabled: bool, total: int) -> None:
        import sys

        self.enabled = enabled and sys.stderr.isatty()
        self.total = total
        self._bar = None

    def __enter__(self) -> _GridProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._bar = Progress("runs", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 "{task.description}", console=Console(stderr=True),
                                 transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self, method: str, seed: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"done: {method} seed {seed}")


# --- the demo ------------------------------------------------------------------------------
DEMO_METHODS = ("naive", "ewc", "lwf", "replay", "agem")


def run_demo(out: Path, seeds: Sequence[int], jobs: int | None = None) -> dict[str, Any]:
    """naive, ewc, lwf, replay and agem on split-digits in the three scenarios."""
    from rich.console import Console

    from .report.tables import demo_table

    jobs = jobs or os.cpu_count() or 1
    console = Console(highlight=False)
    console.print(f"[bold]lifelong demo[/]: {', '.join(DEMO_METHODS)} on split-digits "
                  f"(5 tasks of 2 digits), seeds {','.join(map(str, seeds))}, {jobs} processes")
    comparisons = {}
    for scenario in ("task", "domain", "class"):
        settings = {"benchmark": "split-digits", "scenario": scenario}
        comparisons[scenario] = run_grid(settings, DEMO_METHODS, seeds, [], out / scenario,
                                         jobs=jobs)
    console.print(demo_table(comparisons))
    console.print(f"runs, accuracy matrices and comparison.json under {out}/")
    return comparisons
