"""The Ray backend of `lifelong compare` / `lifelong sweep` (`--backend ray`, `pip install
lifelong[ray]`).

Each run is one Ray task (1 CPU, or 1 GPU when the run's device asks for CUDA). A task trains in
a temporary folder on whatever node it lands on and returns the run's files (config.yaml,
metrics.jsonl, summary.json); the driver writes them into the usual layout
`OUT/METHOD[/POINT]/seedN/`, atomically, so the results look exactly as a local sweep's, and a
re-run skips the finished runs the same way. Checkpoints stay on the worker: an unfinished run
starts over on Ray (the local backend resumes it).

`address=None` connects to the cluster that `RAY_ADDRESS` names, or else starts a local Ray
instance for the sweep (and stops it afterwards); `--address ray://HOST:10001` or `auto` names a
running cluster. lifelong must be installed on the cluster's nodes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DivergedError
from ..training.progress import GridProgress
from ..training.rundir import atomic_write_bytes

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")


def _train_remotely(config: dict[str, Any]) -> dict[str, Any]:
    """Runs on a Ray worker: the run in a temporary folder; its files and summary back."""
    import torch

    from ..runs.config import RunConfig
    from ..runs.experiment import run_experiment

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="lifelong-ray-") as folder:
        try:
            summary = run_experiment(RunConfig.from_dict(config), folder, progress=False,
                                     checkpoint=False).summary()
        except DivergedError as error:  # its summary.json marks it; the sweep goes on
            summary = error.summary or {"status": "diverged"}
        files = {name: (Path(folder) / name).read_bytes() for name in RUN_FILES}
    return {"summary": summary, "files": files}


def run_on_ray(to_run: list[tuple[tuple[str, int], dict[str, Any]]],
               directories: dict[tuple[str, int], str], address: str | None,
               progress: bool) -> dict[tuple[str, int], dict[str, Any]]:
    """Run every (key, config) as a Ray task; write each run's files into `directories[key]`
    as it finishes; return the summaries by key."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'lifelong[ray]'") from None
    if not to_run:
        return {}
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot connect to Ray at {address or 'a local instance'}: "
                              f"{e}") from None
    try:
        remote = ray.remote(_train_remotely)
        pending = {}
        for key, config in to_run:
            gpus = 1 if str(config.get("device", "")).startswith("cuda") else 0
            pending[remote.options(num_cpus=1, num_gpus=gpus).remote(config)] = key
        summaries: dict[tuple[str, int], dict[str, Any]] = {}
        waiting = list(pending)
        with GridProgress(progress, len(pending)) as bar:
            while waiting:
                finished, waiting = ray.wait(waiting, num_returns=1)
                key = pending[finished[0]]
                outcome = ray.get(finished[0])
                folder = Path(directories[key])
                for name, content in outcome["files"].items():
                    atomic_write_bytes(folder / name, content)
                summaries[key] = outcome["summary"]
                bar.advance(*key)
        return summaries
    finally:
        if started_here:
            ray.shutdown()
