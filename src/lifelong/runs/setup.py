"""The set-up every run shares, task runs and streams alike, written once.

    prepare(config)          resolve the protocol defaults, build the method and check that it
                             fits the schedule: every configuration error surfaces here
    set_up(cfg, method)      device, the data (a scenario or a stream), seeds, denormal flushing,
                             model, optimizer, the method attached
    open_run_dir(setup, out) the run's folder (config.yaml, metrics.jsonl) and its trackers
    peak_memory_mb(device)   what the summary reports

The order is part of the result: the model's initial weights are drawn right after seeding, so a
seed gives the same run whichever schedule and whatever data loading came before.
"""

from __future__ import annotations

import dataclasses
import random
import resource
import sys
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..core.compose import build_method, method_settings
from ..core.method import Method
from ..core.readout import Readout
from ..errors import ConfigError
from ..integrations.tracking import build_trackers
from ..scenarios import Scenario, Stream
from ..training.checkpoint import CHECKPOINT
from ..training.rundir import RunDir
from .config import RunSettings

S = TypeVar("S", bound=RunSettings)
METHOD_SEED_OFFSET = 1_000_003  # the method's generator: apart from the model's and the data's


@dataclasses.dataclass
class Setup:
    """A run ready to train: its resolved configuration and what was built from it."""

    cfg: RunSettings
    config: dict[str, Any]  # as config.yaml holds it
    device: torch.device
    data: Scenario | Stream
    readout: Readout
    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: Method


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


def peak_memory_mb(device: torch.device) -> float:
    """The peak memory of the run: CUDA's allocations, else the process's resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB else


class Warnings:
    """One line `warning: ...` on stderr, each said once per process (a grid prepares every
    run of its plan, `lifelong run` its one run twice); `silent` in a grid's worker processes,
    whose parent has said them."""

    def __init__(self) -> None:
        self.said: set[str] = set()
        self.silent = False

    def say(self, line: str) -> None:
        if line not in self.said and not self.silent:
            self.said.add(line)
            print(f"warning: {line}", file=sys.stderr, flush=True)


WARNINGS = Warnings()


def prepare(config: S) -> tuple[S, Method]:
    """Resolve defaults and build the method: every configuration error surfaces here, and the
    warnings (a method known not to protect the scenario) are said."""
    cfg = config.resolved()
    method = build_method(cfg.method, cfg.method_params)
    warnings = cfg.check_method(method)
    resolve_device(cfg.device)
    for line in warnings:
        WARNINGS.say(line)
    return cfg.replace(method_params=method_settings(method)), method


def set_up(cfg: RunSettings, method: Method, out_dir: str | Path | None = None) -> Setup:
    """Build what the prepared run `cfg` trains, in the order of the module docstring, and
    attach `method`; `out_dir` is only checked here (trackers need a folder). The caller holds
    the folder (`lifelong.training.lock.claim_folder`, which also checks it can be written)."""
    if cfg.log and out_dir is None:
        raise ConfigError(f"log={cfg.log} needs the run's folder")
    device = resolve_device(cfg.device)
    data = cfg.build_data()
    seed_everything(cfg.seed)
    if device.type == "cpu" and cfg.flush_denormal:
        torch.set_flush_denormal(True)  # process-wide; a no-op where the CPU lacks it
    readout = data.readout.to(device)
    model = cfg.build_model(data).to(device)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.momentum,
                               cfg.weight_decay)
    method.attach(model, optimizer, readout, seed=cfg.seed + METHOD_SEED_OFFSET)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    config = {"lifelong_version": __version__, **cfg.to_dict()}
    return Setup(cfg, config, device, data, readout, model, optimizer, method)


def open_run_dir(setup: Setup, out_dir: str | Path | None, *,
                 resume_at: int | None = None) -> RunDir | None:
    """The run's folder with its trackers (None without `out_dir`). A new run writes
    config.yaml and drops a stale checkpoint, which must not be resumed; `resume_at` continues
    metrics.jsonl from that many bytes (a resumed run)."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    trackers = build_trackers(setup.cfg.log, out, setup.config)
    if resume_at is not None:
        return RunDir(out, append=True, truncate_at=resume_at, trackers=trackers)
    (out / CHECKPOINT).unlink(missing_ok=True)
    run_dir = RunDir(out, trackers=trackers)
    run_dir.write_config(setup.config)
    return run_dir
