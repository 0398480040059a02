"""What report.html shows, read from a run folder or a compare folder.

A single run is read as a comparison of one method with one seed, so both kinds of folder go
through the same page. Nothing here draws or writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LifelongError
from ..metrics import seed_stats

# a per-task or per-probe record's keys that are coordinates, not measurements
COORDINATES = ("task", "samples", "event")


class ReportError(LifelongError):
    """The folder is not one a report can be made of (what was expected is in the message)."""


@dataclasses.dataclass
class Run:
    """One run of a report: its summary (summary.json, or only comparison.json's entry when the
    run's folder is gone) and what it recorded over time."""

    method: str
    seed: int
    folder: Path | None  # None when the run's folder was not found
    summary: dict[str, Any]
    config_text: str | None
    records: list[dict[str, Any]]  # per task (or per probe of a stream): diagnostics + reports
    task_seconds: list[float]

    @property
    def diverged(self) -> bool:
        """Whether the run stopped on a non-finite loss or weights (its metrics are null)."""
        return self.summary.get("status") == "diverged"

    @property
    def accuracy_matrix(self) -> np.ndarray:
        return as_array(self.summary.get("accuracy_matrix") or [])


@dataclasses.dataclass
class Report:
    kind: str  # "run", "compare" or "stream"
    directory: Path
    benchmark: str
    scenario: str | None
    seeds: list[int]
    methods: dict[str, dict[str, Any]]  # method -> metric -> {mean, std, count, values}
    runs: list[Run]

    def runs_of(self, method: str) -> list[Run]:
        return [r for r in self.runs if r.method == method]


def as_array(rows: Sequence[Any]) -> np.ndarray:
    """Numbers as floats, None as NaN (a list or a list of lists)."""
    def number(value: Any) -> float:
        return math.nan if value is None else float(value)

    if rows and isinstance(rows[0], (list, tuple)):
        return np.array([[number(v) for v in row] for row in rows], dtype=float)
    return np.array([number(v) for v in rows], dtype=float)


def mean_std(stack: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Element-wise mean over seeds, and std (ddof=1) when there are at least two seeds."""
    array = np.stack(stack)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        mean = np.nanmean(array, axis=0)
        std = np.nanstd(array, axis=0, ddof=1) if len(stack) > 1 else None
    return mean, std


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(f"cannot read {path}: {error}") from None


def _metrics_lines(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a crash
    return lines


def _records(summary: dict[str, Any], folder: Path | None) -> list[dict[str, Any]]:
    """Diagnostics (and the method's own per-task reports) over time, from summary.json or, when
    it has none, from metrics.jsonl's `diagnostics` lines."""
    diagnoses = list(summary.get("diagnostics") or [])
    if not diagnoses and folder is not None:
        diagnoses = [{k: v for k, v in line.items() if k != "event"}
                     for line in _metrics_lines(folder) if line.get("event") == "diagnostics"]
    reports = summary.get("method_reports") or []
    if not reports:
        return diagnoses
    by_task = {d.get("task"): d for d in diagnoses}
    merged = [{**by_task.get(task, {"task": task}), **report}
              for task, report in enumerate(reports)]
    return merged + [d for d in diagnoses if d.get("task") not in range(len(reports))]


def _task_seconds(summary: dict[str, Any], folder: Path | None) -> list[float]:
    seconds = summary.get("task_seconds")
    if seconds:
        return [float(s) for s in seconds]
    if folder is None:
        return []
    return [float(line["seconds"]) for line in _metrics_lines(folder)
            if line.get("event") == "task_end" and isinstance(line.get("seconds"), (int, float))]


def _run(method: str, seed: int, folder: Path | None, summary: dict[str, Any]) -> Run:
    config = folder / "config.yaml" if folder is not None else None
    config_text = config.read_text(encoding="utf-8") if config and config.is_file() else None
    return Run(method=method, seed=seed, folder=folder, summary=summary,
               config_text=config_text, records=_records(summary, folder),
               task_seconds=_task_seconds(summary, folder))


def load_report(directory: str | Path) -> Report:
    """Read a compare folder (comparison.json) or a run folder (summary.json)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(f"'{directory}' is not a folder; give a run folder (with summary.json, "
                          "from lifelong run/stream) or a compare folder (with comparison.json, "
                          "from lifelong compare)")
    if (directory / "comparison.json").is_file():
        return _load_compare(directory)
    if (directory / "summary.json").is_file():
        summary = _read_json(directory / "summary.json")
        stream = "bins" in summary
        method, seed = summary.get("method", "?"), summary.get("seed", 0)
        keys = ("seconds",) if stream else ("acc", "bwt", "fwt", "forgetting", "seconds")
        return Report(kind="stream" if stream else "run", directory=directory,
                      benchmark=str(summary.get("benchmark", "?")),
                      scenario=summary.get("scenario"), seeds=[seed],
                      methods={method: {k: seed_stats([summary.get(k)]) for k in keys}},
                      runs=[_run(method, seed, directory, summary)])
    raise ReportError(f"'{directory}' holds neither summary.json (a run folder, from lifelong run "
                      "or lifelong stream) nor comparison.json (a compare folder, from lifelong "
                      "compare); nothing to report")


def _load_compare(directory: Path) -> Report:
    comparison = _read_json(directory / "comparison.json")
    if not isinstance(comparison, dict) or "methods" not in comparison:
        raise ReportError(f"{directory / 'comparison.json'} is not a comparison "
                          "(no 'methods'); was it written by lifelong compare?")
    runs = []
    for entry in comparison.get("runs", []):
        method, seed = entry["method"], entry["seed"]
        # the folder beside comparison.json first: entry["dir"] is relative to where compare ran
        # (comparisons written before "folder" existed held METHOD/seedN)
        inside = entry.get("folder") or Path(method, f"seed{seed}")
        candidates = [directory / inside, Path(entry.get("dir", ""))]
        folder = next((c for c in candidates if (c / "summary.json").is_file()), None)
        summary = _read_json(folder / "summary.json") if folder is not None else {}
        summary = {**summary, **{k: v for k, v in entry.items() if k not in ("dir", "folder")}}
        runs.append(_run(method, seed, folder, summary))
    return Report(kind="compare", directory=directory,
                  benchmark=str(comparison.get("benchmark", "?")),
                  scenario=comparison.get("scenario"), seeds=list(comparison.get("seeds", [])),
                  methods=comparison["methods"], runs=runs)


def numeric_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """Keys whose values are plain numbers in the records (per-layer lists are left out)."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key in COORDINATES or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) or value is None:
                keys.setdefault(key)
    return [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
