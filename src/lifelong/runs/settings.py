"""The settings of a run as the command line gives them: which flags are run settings, and where
each `--set KEY=VALUE` goes. `lifelong run`, `stream`, `compare` and `sweep` share them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.compose import parse_method_spec
from ..core.registry import get_method_class
from ..errors import ConfigError
from ..scenarios import get_benchmark

# flags of `lifelong run` (and compare, sweep) that are keys of RunConfig; a grid point on one of
# them is a run setting, not a method's
RUN_FLAGS = ("benchmark", "scenario", "seed", "epochs", "iterations", "batch_size", "lr",
             "optimizer", "momentum", "weight_decay", "model", "hidden", "dropout", "width",
             "batch_norm", "head", "eval_batch_size", "device", "data_dir", "diagnostics", "log",
             "keep_checkpoint")
# flags of `lifelong stream` that are keys of StreamConfig
STREAM_FLAGS = ("benchmark", "method", "seed", "tasks", "steps", "batch_size", "lr", "optimizer",
                "momentum", "weight_decay", "hidden", "bin_size", "boundaries", "diagnostics",
                "diagnose_every", "probe_size", "device", "data_dir", "log")


def route_settings(pairs: Sequence[str], method_spec: str, settings: dict[str, Any],
                   benchmark: Any = None, *, strict: bool = True) -> dict[str, Any]:
    """Apply `--set key=value` pairs to the method and benchmark settings of one run.

    `ewc.lambda=100` sets a method's key; `benchmark.num_tasks=5` a benchmark's; a bare key
    (`lambda=100`) goes to the one method in the run that has it. A key of a method that is not
    part of this run is refused (`strict=False`: ignored, so that a grid can set ewc.lambda for
    its ewc runs only, after `check_method_keys` has checked the grid as a whole).
    """
    names = parse_method_spec(method_spec)
    method_params = {k: dict(v) for k, v in settings.get("method_params", {}).items()}
    benchmark_params = dict(settings.get("benchmark_params", {}))
    if benchmark is None:
        benchmark = get_benchmark(settings.get("benchmark", "split-digits"))
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got '{pair}'")
        owner, dot, field = key.rpartition(".")
        if owner == "benchmark":
            benchmark_params[field] = value
            continue
        if dot:
            get_method_class(owner)  # unknown method name -> clear error
            if owner in names:  # the method's config refuses an unknown key, naming the keys
                method_params.setdefault(owner, {})[field] = value
            elif strict:
                check_method_keys([key], [method_spec])  # raises
            continue
        holders = [n for n in names if field in get_method_class(n).Config.keys()]
        if len(holders) == 1:
            method_params.setdefault(holders[0], {})[field] = value
        elif len(holders) > 1:
            raise ConfigError(f"--set {field}: several methods have it ({', '.join(holders)}); "
                              f"write e.g. {holders[0]}.{field}={value}")
        elif field in benchmark.options.keys():
            benchmark_params[field] = value
        else:
            accepted = [f"{n}.{k}" for n in names for k in get_method_class(n).Config.keys()]
            accepted += [f"benchmark.{k}" for k in benchmark.options.keys()]
            raise ConfigError(f"--set {field}: no such setting for method '{method_spec}' or "
                              f"benchmark {benchmark.name}; accepted: {', '.join(accepted)}")
    return {**settings, "method_params": method_params, "benchmark_params": benchmark_params}


def check_method_keys(keys: Sequence[str], method_specs: Sequence[str],
                      flag: str = "--set") -> None:
    """Refuse a `method.key` setting (`keys` as --set or --grid name them) whose method is in
    none of `method_specs`: it would change nothing, silently."""
    names = [n for spec in method_specs for n in parse_method_spec(spec)]
    for key in keys:
        owner, dot, _ = key.rpartition(".")
        if dot and owner != "benchmark" and owner not in names:
            get_method_class(owner)  # unknown method name -> clear error
            raise ConfigError(f"{flag} {key}: method {owner} is not in this run (methods: "
                              f"{', '.join(dict.fromkeys(names))}); set keys of those "
                              f"methods, or add {owner} to the run")
