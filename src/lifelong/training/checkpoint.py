"""Checkpoints of a task-by-task run, so that `lifelong run --resume DIR` ends a killed run with
exactly the accuracy matrix an uninterrupted run with the same seed gives.

After every task the run writes `DIR/checkpoint.pt` (a temporary file renamed into place: a kill
at any moment leaves the previous checkpoint or the new one, never half of one) holding everything
the rest of the run depends on:

- the model, the optimizer and the method (`Method.state_dict()`: its buffers, memories, teacher,
  generator);
- the random states: torch's CPU and CUDA generators (dropout), NumPy's and Python's global ones,
  the generator that shuffles the mini-batches;
- the readout's set of active output units (class-incremental masking);
- the position in the scenario (the next task) and the results so far: accuracy and loss rows,
  baseline accuracies, per-task seconds, method reports, diagnostics, and the length of
  metrics.jsonl at that moment, so a resumed run cuts the lines of the task that was interrupted.

The file holds tensors, numbers, strings and containers only, and is read with
`torch.load(weights_only=True)`: loading a checkpoint executes no pickled code.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, LifelongError
from .rundir import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


@dataclasses.dataclass
class RunProgress:
    """What a run has produced up to the end of task `next_task − 1`."""

    next_task: int = 0
    baseline: list[float | None] = dataclasses.field(default_factory=list)
    accuracy_matrix: list[list[float]] = dataclasses.field(default_factory=list)
    loss_matrix: list[list[float]] = dataclasses.field(default_factory=list)
    task_seconds: list[float] = dataclasses.field(default_factory=list)
    method_reports: list[dict[str, float]] = dataclasses.field(default_factory=list)
    diagnostics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0  # wall time of the run's earlier processes, up to the checkpoint
    metrics_bytes: int = 0  # length of metrics.jsonl at the checkpoint
    first_loss: float | None = None  # the loss of the run's first step (before any update)


def random_states() -> dict[str, Any]:
    """The global generators' states (torch CPU and CUDA, NumPy, Python)."""
    version, mt, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": {"version": version, "state": list(mt), "gauss": gauss},
    }


def set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"],
                         n["has_gauss"], n["cached"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(directory: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    method: Any, readout: Any, shuffle: torch.Generator,
                    progress: RunProgress) -> Path:
    """Write `directory/checkpoint.pt` atomically (temporary file, fsync, rename)."""
    state = {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "method": method.state_dict(),
        "readout_active": readout.active.cpu().clone(),
        "shuffle": shuffle.get_state(),
        "random": random_states(),
        "progress": dataclasses.asdict(progress),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = directory / CHECKPOINT
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(directory: Path, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, method: Any, readout: Any,
                    shuffle: torch.Generator) -> RunProgress:
    """Restore everything `save_checkpoint` wrote into freshly built objects (the method
    attached); returns the run's progress. Call it after seeding, since it replaces the seeds'
    states."""
    path = directory / CHECKPOINT
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's weights-only refusal: objects other than tensors
        raise _not_a_checkpoint(path, "it is not a file of tensors and plain values") from None
    except EOFError:
        raise _not_a_checkpoint(path, "the file is empty or cut short") from None
    except Exception as error:  # truncated or foreign file: say which and why
        raise _not_a_checkpoint(path, _first_sentence(error)) from None
    if not isinstance(state, dict):
        raise _not_a_checkpoint(path, f"it holds a {type(state).__name__}")
    if state.get("format") != FORMAT:
        raise ConfigError(f"{path} has checkpoint format {state.get('format')!r}; this version "
                          f"of lifelong reads format {FORMAT}")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        readout.set_active(state["readout_active"])
        shuffle.set_state(state["shuffle"])
        set_random_states(state["random"])
        return RunProgress(**state["progress"])
    except LifelongError:  # a method's own refusal, already one line
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise _not_a_checkpoint(path, "it does not fit this run: " + (
            f"no {error}" if isinstance(error, KeyError) else _first_sentence(error))) from None


def _not_a_checkpoint(path: Path, reason: str) -> ConfigError:
    """One line for a file that load_checkpoint refuses (torch's own message spans many)."""
    return ConfigError(f"cannot read the checkpoint {path}: it is not a lifelong checkpoint "
                       f"({reason}) and was not loaded")


def _first_sentence(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0].rstrip(".:")
