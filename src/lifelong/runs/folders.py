"""Output folders that never lose results silently: which folders hold a run, the refusal to write
into one without `--resume` or `--overwrite`, what `--overwrite` removes, and the default folder
name of a run, which carries the settings that differ from the defaults.

The refusals happen before any file is written, while the caller holds the folder
(`lifelong.training.lock.claim_folder`), so no other process can start a run there in between.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError, LifelongError
from ..training.checkpoint import CHECKPOINT
from ..training.lock import claim_folder
from .config import RunConfig, RunSettings, StreamConfig, config_differences

# a folder holding any of these holds a run, finished (summary.json) or not
RUN_FILES = ("config.yaml", "summary.json", CHECKPOINT, "metrics.jsonl")
# what a run writes besides them: removed with it by --overwrite
RUN_EXTRAS = ("report.html", "report", "tensorboard")
GRID_FILES = ("comparison.json", "report.html", "report")
NAME_LIMIT = 100  # longer default folder names end in a hash of the settings instead
# settings that never appear in a default folder name: they are in it already, or change where
# and how a run goes, not what it computes
UNNAMED = ("benchmark", "scenario", "method", "seed", "device", "data_dir", "log", "diagnostics",
           "probe_size", "flush_denormal", "eval_batch_size", "diagnose_every", "bin_size")


def run_files(folder: str | Path) -> list[str]:
    """The files of a run that `folder` holds (none: it holds no run)."""
    return [name for name in RUN_FILES if (Path(folder) / name).exists()]


def remove_run(folder: str | Path, names: Sequence[str] = RUN_FILES + RUN_EXTRAS) -> None:
    """Remove a run's files (and only those: other files in the folder are the user's)."""
    for name in names:
        path = Path(folder) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def check_new_run(folder: str | Path, *, overwrite: bool, resumable: bool = True) -> None:
    """Refuse `folder` when it holds a run, unless `overwrite` (then remove that run's files).
    `resumable`: the command has `--resume DIR` to offer (`run`; `stream` has none)."""
    found = run_files(folder)
    if not found:
        return
    if overwrite:
        remove_run(folder)
        return
    finished = "summary.json" in found
    resume = f"continue it with --resume {folder}, " if resumable and not finished else ""
    raise ConfigError(f"{folder} holds {'a finished' if finished else 'an unfinished'} run "
                      f"({', '.join(found)}); {resume}replace it with --overwrite, or choose "
                      f"another --out")


@contextlib.contextmanager
def claim_new_run(folder: str | Path, *, overwrite: bool, resumable: bool = True
                  ) -> Iterator[None]:
    """Hold `folder` for a new run (`claim_folder`) after `check_new_run` let it be used."""
    with claim_folder(folder):
        check_new_run(folder, overwrite=overwrite, resumable=resumable)
        yield


def prepare_grid_folder(out: Path, runs: Sequence[tuple[str, dict[str, Any]]], *, resume: bool,
                        overwrite: bool) -> None:
    """Check (and with `overwrite` clear) a grid's folder before any run starts; `runs`: each
    run's folder and configuration. Without `resume` a folder holding comparison.json or one of
    the runs is refused; with it, a run folder of other settings is (it would be replaced)."""
    held = [(folder, config) for folder, config in runs if run_files(folder)]
    if overwrite:
        remove_run(out, GRID_FILES)
        for folder, _ in held:
            remove_run(folder)
        return
    if not resume:
        found = (["comparison.json"] if (out / "comparison.json").exists() else []) + [
            str(Path(folder).relative_to(out)) for folder, _ in held]
        if found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise ConfigError(f"{out} holds runs ({shown}); keep the finished ones and continue "
                              f"the others with --resume, replace them with --overwrite, or "
                              f"choose another --out")
        return
    for folder, config in held:
        changed = config_differences(folder, {"lifelong_version": __version__, **config})
        if changed != []:
            what = ", ".join(changed) if changed else "no config.yaml"
            raise ConfigError(f"{folder} holds a run with other settings ({what}); replace it "
                              f"with --overwrite, or choose another --out")


def default_folder(prefix: str, resolved: RunSettings, defaults: RunSettings) -> str:
    """`runs/PREFIX-KEY=VALUE-...-sSEED`: the settings of `resolved` that differ from `defaults`
    (the same run with every setting left to the benchmark's protocol), method settings first;
    filesystem-safe, and past NAME_LIMIT characters cut and ended with a hash of the whole."""
    mine, base = resolved.to_dict(), defaults.to_dict()
    names = list(mine["method_params"])
    parts = []
    for owner, params in mine["method_params"].items():
        for key, value in params.items():
            if base["method_params"].get(owner, {}).get(key) != value:
                parts.append((key if len(names) == 1 else f"{owner}.{key}", value))
    parts += [(k, v) for k, v in mine["benchmark_params"].items()
              if base["benchmark_params"].get(k) != v]
    parts += [(k, v) for k, v in mine.items() if k not in UNNAMED
              and k not in ("method_params", "benchmark_params") and base.get(k) != v]
    body = "-".join([prefix, *(f"{k}={_text(v)}" for k, v in parts if v is not None)])
    body = "".join(c if c.isalnum() or c in "-_.=,+" else "_" for c in body)
    seed = f"-s{resolved.seed}"
    if len(body) + len(seed) > NAME_LIMIT:
        digest = hashlib.sha1(body.encode("utf-8")).hexdigest()[:8]
        body = f"{body[:NAME_LIMIT - len(seed) - 9]}-{digest}"
    return f"runs/{body}{seed}"


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # lambda=10, not lambda=10.0
    return str(value)


def default_run_folder(resolved: RunConfig) -> str:
    """`runs/BENCHMARK-SCENARIO-METHOD[-KEY=VALUE...]-sSEED` for a resolved `lifelong run`."""
    kind, colon, path = resolved.benchmark.partition(":")  # folder:/data/photos -> folder-photos
    name = f"{kind}-{Path(path.rstrip('/')).name}" if colon else kind
    return default_folder(f"{name}-{resolved.scenario}-{resolved.method}", resolved,
                          _defaults(resolved, scenario=resolved.scenario))


def default_stream_folder(resolved: StreamConfig) -> str:
    """`runs/stream-BENCHMARK-METHOD[-KEY=VALUE...]-sSEED` for a resolved `lifelong stream`."""
    return default_folder(f"stream-{resolved.benchmark}-{resolved.method}", resolved,
                          _defaults(resolved))


def _defaults(resolved: RunSettings, **fixed: Any) -> RunSettings:
    """The run `resolved` would be with every other setting left to the protocol."""
    from .setup import prepare

    base = type(resolved).from_dict({"benchmark": resolved.benchmark, "method": resolved.method,
                                     "seed": resolved.seed, **fixed})
    try:
        return prepare(base)[0]
    except LifelongError:  # the defaults alone do not make a run: name no settings
        return resolved
