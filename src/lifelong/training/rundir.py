"""A run's folder: config.yaml, metrics.jsonl and summary.json, written so a crash loses nothing.

Whole files are written to a temporary file in the same folder and renamed into place
(`os.replace` is atomic), so a reader never sees half a file; metrics.jsonl is appended one flushed
line at a time.

Optional trackers (`lifelong.integrations.tracking`: TensorBoard, MLflow) get every record `log`
writes and the summary; the metrics.jsonl line is always written first, and a tracker that fails is
dropped with a warning, so it can neither lose a line nor stop the run.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..integrations.tracking import MetricMapper, Tracker

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` through a temporary file in its folder, fsync'd, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(value: Any) -> Any:
    """Plain JSON values: NaN/inf become None, tuples lists, numpy scalars floats."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(jsonable(data), indent=2) + "\n")


def write_yaml(path: Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(jsonable(data), sort_keys=False))


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """The mapping of settings in the YAML file `path` (a --config file, a run's config.yaml);
    anything else is a ConfigError of one line that starts with `what` (e.g. "--config file
    'x.yaml'"), with the line and column of a syntax error. Only plain YAML is read: a tag such
    as `!!python/object` is refused, never constructed."""
    if path.is_dir():
        raise ConfigError(f"{what} is a directory; give a YAML file of settings")
    if not path.is_file():
        raise ConfigError(f"{what} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not a text file (UTF-8 YAML)") from None
    except OSError as error:
        raise ConfigError(f"cannot read {what}: {error.strerror}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        tag = re.search(r"for the tag '([^']*)'", error.problem or "")
        if isinstance(error, yaml.constructor.ConstructorError) and tag:
            shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(f"{what} has the tag {shown}{where}; only plain YAML values are "
                              "accepted, nothing was loaded") from None
        raise ConfigError(f"{what} is not valid YAML{where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} is not valid YAML: {str(error).splitlines()[0]}") from None
    if loaded is None:
        raise ConfigError(f"{what} is empty; it must hold a mapping of settings, e.g. 'lr: 0.01'")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} must hold a mapping of settings, not a "
                          f"{type(loaded).__name__}")
    return loaded


def check_out_dir(path: str | os.PathLike) -> Path:
    """Create the output folder `path` if needed and check that a file can be written in it, so
    that a folder that cannot take a run's files fails in one line (a ConfigError naming it and
    the reason) before any training."""
    path = Path(path)
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())  # "." or "/" at last
        if not existing.is_dir():
            raise NotADirectoryError(0, f"{'it' if existing == path else existing} is a file, "
                                        "not a folder")
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        culprit = f" ({error.filename})" if error.filename and error.filename != str(path) else ""
        raise ConfigError(f"cannot write the output folder {path}: {error.strerror}{culprit}; "
                          f"choose a folder you can write to") from None
    return path


class RunDir:
    """The output folder of one run."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False,
                 truncate_at: int | None = None, trackers: Sequence[Tracker] = ()) -> None:
        """`append=True` continues metrics.jsonl; `truncate_at` first cuts it to that many bytes
        (a resumed run drops the lines of the task it repeats). `trackers` (started, see
        `lifelong.integrations.tracking.build_trackers`) get every record and the summary;
        `write_summary` ends them; `close` while an exception propagates, or the exit of the process
        before the summary, ends them as failed."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        metrics = self.path / "metrics.jsonl"
        if append and truncate_at is not None and metrics.is_file():
            os.truncate(metrics, min(truncate_at, metrics.stat().st_size))
        self._metrics = open(  # noqa: SIM115
            metrics, "a" if append else "w", encoding="utf-8")
        self.trackers = list(trackers)
        self._mapper = MetricMapper()
        self._outer_error = sys.exc_info()[1]  # an exception already being handled by the caller
        if self.trackers:
            atexit.register(self._end_trackers, True)  # exit before the summary: failed

    def metrics_bytes(self) -> int:
        """The length of metrics.jsonl so far (every line is flushed)."""
        return self._metrics.tell()

    def log(self, **record: Any) -> None:
        plain = jsonable(record)
        self._metrics.write(json.dumps(plain) + "\n")
        self._metrics.flush()
        if self.trackers:
            for step, metrics in self._mapper.record(plain):
                self._track(lambda tracker, m=metrics, s=step: tracker.log_metrics(m, s))

    def write_config(self, config: dict[str, Any]) -> None:
        write_yaml(self.path / "config.yaml", config)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / "summary.json", summary)
        if self.trackers:
            step, metrics = self._mapper.summary(jsonable(summary))
            if metrics:
                self._track(lambda tracker: tracker.log_metrics(metrics, step))
            self._end_trackers()

    def close(self) -> None:
        self._metrics.close()
        error = sys.exc_info()[1]
        if error is not None and error is not self._outer_error:
            self._end_trackers(failed=True)

    def _track(self, call: Any) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as error:
                self.trackers.remove(tracker)
                _warn(tracker, error)
                try:
                    tracker.close(failed=True)
                except Exception:  # noqa: S110 - it failed already; that was reported
                    pass

    def _end_trackers(self, failed: bool = False) -> None:
        atexit.unregister(self._end_trackers)
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close(failed=failed)
            except Exception as error:
                _warn(tracker, error)


def _warn(tracker: Tracker, error: Exception) -> None:
    warnings.warn(f"{tracker.name} tracker failed ({type(error).__name__}: {error}); it gets "
                  f"nothing more from this run, metrics.jsonl has every record", RuntimeWarning,
                  stacklevel=4)
