"""Grids of runs (methods x hyper-parameter points x seeds) in processes or on Ray, their summary,
and the demo."""

from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import itertools
import json
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..core.compose import parse_method_spec
from ..core.registry import get_method_class, list_methods
from ..errors import ConfigError, DivergedError
from ..metrics import seed_stats
from ..training.checkpoint import CHECKPOINT
from ..training.lock import claim_folder
from ..training.progress import GridProgress
from ..training.rundir import write_json
from ..training.watchdog import watch_parent
from .config import RunConfig, config_differences
from .experiment import run_experiment
from .folders import prepare_grid_folder
from .settings import RUN_FLAGS, check_method_keys, route_settings
from .setup import WARNINGS, prepare

SUMMARY_KEYS = ("acc", "bwt", "fwt", "forgetting", "seconds")


def _run_one(config: dict[str, Any], out_dir: str, threads: int | None,
             progress: bool, label: str, resume: bool = False) -> dict[str, Any]:
    """One run (in a worker process when jobs > 1); returns its summary. `resume`: continue
    from the checkpoint in `out_dir`."""
    if threads:  # a worker process (jobs > 1): the parent said the warnings
        torch.set_num_threads(threads)
        WARNINGS.silent = True
    try:
        result = run_experiment(RunConfig.from_dict(config), out_dir, progress=progress,
                                label=label, resume=resume)
    except DivergedError as error:  # the grid goes on; its summary says "status": "diverged"
        return error.summary or {"status": "diverged"}
    return result.summary()


@dataclasses.dataclass(frozen=True)
class Variant:
    """A method with one point of the hyper-parameter grid (empty: the method as configured)."""

    method: str
    point: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """`ewc` or `ewc[lambda=100, lr=0.01]`: the key of comparison.json's methods."""
        if not self.point:
            return self.method
        return f"{self.method}[{', '.join(f'{k}={v}' for k, v in self.point)}]"

    @property
    def folder(self) -> Path:
        """`ewc` or `ewc/lambda=100,lr=0.01` under the output folder."""
        if not self.point:
            return Path(self.method)
        name = ",".join(f"{k}={v}" for k, v in self.point)
        return Path(self.method, "".join(c if c.isalnum() or c in "=,.-_+" else "_"
                                         for c in name))


def parse_grid(entries: Sequence[str]) -> dict[str, list[str]]:
    """`--grid KEY=V1,V2` entries as {KEY: [V1, V2]}; values that hold commas themselves (layer
    widths) are separated by ';' instead: `hidden=100,100;400,400`."""
    grid: dict[str, list[str]] = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ConfigError(f"--grid takes KEY=V1,V2,..., got '{entry}'")
        if key in grid:
            raise ConfigError(f"--grid names {key} twice")
        split = [v.strip() for v in values.split(";" if ";" in values else ",")]
        if any(not v for v in split):
            raise ConfigError(f"--grid {key}: an empty value in '{values}'")
        grid[key] = split
    return grid


def _variants(method: str, grid: dict[str, list[str]]) -> list[Variant]:
    """The grid points that concern `method`: run settings (lr, epochs, ...) and benchmark
    settings concern every method, `ewc.lambda` only methods with ewc, a bare `lambda` the
    methods that have such a setting."""
    names = parse_method_spec(method)
    method_keys = {k for n in list_methods() for k in get_method_class(n).Config.keys()}

    def concerns(key: str) -> bool:
        owner, dot, field = key.rpartition(".")
        if dot:
            return owner == "benchmark" or owner in names
        if key in RUN_FLAGS or key not in method_keys:  # a run or benchmark setting
            return True
        return any(key in get_method_class(n).Config.keys() for n in names)

    keys = [key for key in grid if concerns(key)]
    points = itertools.product(*(grid[k] for k in keys))
    return [Variant(method, tuple(zip(keys, values))) for values in points]


def plan_grid(settings: dict[str, Any], methods: Sequence[str], seeds: Sequence[int],
              set_pairs: Sequence[str], grid: dict[str, list[str]] | None = None,
              ) -> list[tuple[Variant, int, dict[str, Any]]]:
    """Every (variant, seed, resolved config) of the grid, all validated before anything runs."""
    if len(set(methods)) != len(methods):
        raise ConfigError("--methods names a method twice")
    check_method_keys([p.partition("=")[0].strip() for p in set_pairs], methods)
    check_method_keys(list(grid or {}), methods, "--grid")
    plan = []
    for method in methods:
        for variant in _variants(method, grid or {}):
            flags = {k: v for k, v in variant.point if k in RUN_FLAGS}
            pairs = [*set_pairs, *(f"{k}={v}" for k, v in variant.point if k not in RUN_FLAGS)]
            routed = route_settings(pairs, method, {**settings, **flags, "method": method},
                                    strict=False)
            for seed in seeds:
                resolved, _ = prepare(RunConfig.from_dict({**routed, "seed": seed}))
                plan.append((variant, seed, resolved.to_dict()))
    RunConfig.from_dict(plan[0][2]).build_data()  # a missing file or a bad option fails now
    return plan


def _same_config(directory: Path, config: dict[str, Any]) -> bool:
    """Whether `directory` was run with `config` by this version (up to settings that change no
    result)."""
    return config_differences(directory, {"lifelong_version": __version__, **config}) == []


def finished_summary(directory: str | Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of a run already in `directory` with exactly this configuration, or None."""
    path = Path(directory) / "summary.json"
    if not path.is_file() or not _same_config(path.parent, config):
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # bad JSON or not UTF-8: written by someone else than a run
        raise ConfigError(f"cannot read {path}: {error}; remove it to run again") from None
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise ConfigError(f"{path} is not a lifelong run's summary: it has no "
                          f"{', '.join(missing)}; remove it to run again")
    return summary


def resumable(directory: str | Path, config: dict[str, Any]) -> bool:
    """Whether `directory` holds an unfinished run of this configuration with a checkpoint."""
    directory = Path(directory)
    return (directory / CHECKPOINT).is_file() and _same_config(directory, config)


def run_grid(settings: dict[str, Any], methods: Sequence[str], seeds: Sequence[int],
             set_pairs: Sequence[str], out: Path, *, jobs: int = 1,
             progress: bool = True, resume: bool = False, overwrite: bool = False,
             grid: dict[str, list[str]] | None = None, backend: str = "local",
             address: str | None = None) -> dict[str, Any]:
    """Run every method (with every point of `grid`, {setting: values}) with every seed into
    `out/METHOD[/POINT]/seedN/`, then write `out/comparison.json` with each metric's mean ± std
    (sample std over seeds) per method and point.

    `backend`: `local` (processes on this machine, `jobs` at once) or `ray` (tasks on the Ray
    cluster at `address`, or a local Ray instance; `lifelong.integrations.sweep_ray`).
    `resume=True` keeps the finished runs whose folder holds the same configuration and continues
    the unfinished ones from their checkpoints (local backend); a run folder of other settings is
    refused then. Without `resume`, a folder that holds runs is refused; `overwrite=True` removes
    the old runs first. `out` is held by this process (`lifelong.training.lock`) throughout."""
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend must be local or ray, got '{backend}'")
    plan = plan_grid(settings, methods, seeds, set_pairs, grid)
    directories = {(v.label, s): str(out / v.folder / f"seed{s}") for v, s, _ in plan}
    with claim_folder(out):  # checks `out` here, not in each worker: one line for any jobs
        prepare_grid_folder(out, [(directories[(v.label, s)], c) for v, s, c in plan],
                            resume=resume, overwrite=overwrite)
        return _run_plan(plan, directories, out, seeds, jobs=jobs, progress=progress,
                         resume=resume, backend=backend, address=address)


def _run_plan(plan: list[tuple[Variant, int, dict[str, Any]]],
              directories: dict[tuple[str, int], str], out: Path, seeds: Sequence[int], *,
              jobs: int, progress: bool, resume: bool, backend: str,
              address: str | None) -> dict[str, Any]:
    """The runs of `plan` not finished yet, then comparison.json (see `run_grid`)."""
    summaries: dict[tuple[str, int], dict[str, Any]] = {}
    if resume:
        for variant, seed, config in plan:
            done = finished_summary(directories[(variant.label, seed)], config)
            if done is not None:
                summaries[(variant.label, seed)] = done
    to_run = [((v.label, s), config) for v, s, config in plan if (v.label, s) not in summaries]
    continued = {key: resume and resumable(directories[key], config) for key, config in to_run}
    if backend == "ray":
        from ..integrations.sweep_ray import run_on_ray

        summaries.update(run_on_ray(to_run, directories, address, progress))
    elif jobs == 1:
        for index, (key, config) in enumerate(to_run):
            label = f"[{index + 1}/{len(to_run)}] {key[0]} seed {key[1]} · "
            summaries[key] = _run_one(config, directories[key], None, progress, label,
                                      continued[key])
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
        with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context,  # die with us
                                         initializer=watch_parent, initargs=(os.getpid(),)
                                         ) as pool:
            pending = {pool.submit(_run_one, config, directories[key], threads, False, "",
                                   continued[key]): key for key, config in to_run}
            with GridProgress(progress, len(pending)) as bar:
                for done in futures.as_completed(pending):
                    summaries[pending[done]] = done.result()
                    bar.advance(*pending[done])
    comparison = summarize_grid(plan, summaries, directories, list(seeds))
    write_json(out / "comparison.json", comparison)
    return comparison


def summarize_grid(plan: Sequence[tuple[Variant, int, dict[str, Any]]],
                   summaries: dict[tuple[str, int], dict[str, Any]],
                   directories: dict[tuple[str, int], str], seeds: list[int]) -> dict[str, Any]:
    """comparison.json: per method (and grid point) each metric's mean ± std over seeds, and
    every run. `methods` is keyed by the label (`ewc`, or `ewc[lambda=100]` in a sweep)."""
    first = plan[0][2]
    variants = list(dict.fromkeys(v for v, _, _ in plan))
    methods: dict[str, Any] = {}
    for variant in variants:
        runs = [summaries[(variant.label, s)] for s in seeds]
        methods[variant.label] = _method_row(runs)
    return {
        "benchmark": first["benchmark"], "scenario": first["scenario"], "seeds": seeds,
        "methods": methods,
        "grid": {v.label: {"method": v.method, "settings": dict(v.point)} for v in variants
                 if v.point},
        # folder: relative to comparison.json's folder; dir: as given when the grid ran
        "runs": [{"method": v.label, "seed": s, "folder": str(v.folder / f"seed{s}"),
                  "dir": directories[(v.label, s)],
                  "status": summaries[(v.label, s)].get("status", "finished"),
                  **{k: summaries[(v.label, s)].get(k) for k in SUMMARY_KEYS},
                  "accuracy_matrix": summaries[(v.label, s)]["accuracy_matrix"]}
                 for v, s, _ in plan],
        "lifelong_version": __version__,
    }


def diverged_runs(comparison: dict[str, Any], out: str | Path) -> str | None:
    """`diverged: 1 of 4 runs (...)`, naming them and where to read why; None when none did."""
    diverged = [r for r in comparison["runs"] if r.get("status") == "diverged"]
    if not diverged:
        return None
    names = ", ".join(f"{r['method']} seed {r['seed']}" for r in diverged)
    where = Path(out, diverged[0]["folder"], "summary.json")
    return (f"diverged: {len(diverged)} of {len(comparison['runs'])} runs ({names}); the others "
            f"finished; {where} says where and why")


def _method_row(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each metric's seed statistics, and `diverged`: how many of the runs diverged. A metric's
    mean and std are null when one did: a mean over the survivors alone would flatter the
    method (each survivor's value stays in `values`; seconds are counted for every run)."""
    diverged = sum(r.get("status") == "diverged" for r in runs)
    row: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        row[key] = seed_stats([r.get(key) for r in runs])
        if diverged and key != "seconds":
            row[key].update(mean=None, std=None)
    return {**row, "diverged": diverged}

# --- the demo ------------------------------------------------------------------------------
DEMO_METHODS = ("naive", "ewc", "lwf", "replay", "agem")


def run_demo(out: Path, seeds: Sequence[int], jobs: int | None = None) -> dict[str, Any]:
    """naive, ewc, lwf, replay and agem on split-digits in the three scenarios."""
    from rich.console import Console

    from ..report.tables import demo_table

    jobs = jobs or os.cpu_count() or 1
    console = Console(highlight=False)
    console.print(f"[bold]lifelong demo[/]: {', '.join(DEMO_METHODS)} on split-digits "
                  f"(5 tasks of 2 digits), seeds {','.join(map(str, seeds))}, {jobs} processes")
    comparisons = {}
    for scenario in ("task", "domain", "class"):
        settings = {"benchmark": "split-digits", "scenario": scenario}
        comparisons[scenario] = run_grid(settings, DEMO_METHODS, seeds, [], out / scenario,
                                         jobs=jobs, overwrite=True)  # the demo is re-run as is
    console.print(demo_table(comparisons))
    console.print(f"runs, accuracy matrices and comparison.json under {out}/")
    return comparisons
