"""A run's folder: config.yaml, metrics.jsonl and summary.json, written so a crash loses nothing.

Whole files are written to a temporary file in the same folder and renamed into place
(`os.replace` is atomic), so a reader never sees half a file; metrics.jsonl is appended one flushed
line at a time.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


class RunDir:
    """The output folder of one run."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False,
                 truncate_at: int | None = None) -> None:
        """`append=True` continues metrics.jsonl; `truncate_at` first cuts it to that many bytes
        (a resumed run drops the lines of the task it repeats)."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        metrics = self.path / "metrics.jsonl"
        if append and truncate_at is not None and metrics.is_file():
            os.truncate(metrics, min(truncate_at, metrics.stat().st_size))
        self._metrics = open(  # noqa: SIM115
            metrics, "a" if append else "w", encoding="utf-8")

    def metrics_bytes(self) -> int:
        """The length of metrics.jsonl so far (every line is flushed)."""
        return self._metrics.tell()

    def log(self, **record: Any) -> None:
        self._metrics.write(json.dumps(jsonable(record)) + "\n")
        self._metrics.flush()

    def write_config(self, config: dict[str, Any]) -> None:
        write_yaml(self.path / "config.yaml", config)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / "summary.json", summary)

    def close(self) -> None:
        self._metrics.close()
