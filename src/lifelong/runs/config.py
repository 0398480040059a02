"""What defines a run: the settings every run shares, with a task schedule or a stream schedule.

`RunSettings` holds the settings that `lifelong run` and `lifelong stream` share (benchmark,
method, seed, optimizer, model, device, diagnostics, folders, trackers), defined once; a run
config adds its schedule:

- `RunConfig` (`lifelong run`): tasks one after another, each trained for `epochs` or
  `iterations` and then evaluated on every task's test set (scenario, head, class masking);
- `StreamConfig` (`lifelong stream`): one stream seen once, in order, scored online (tasks,
  steps, bin size, boundaries).

`None` means the benchmark's protocol default; `resolved()` fills them in. Each config also knows
how its data and model are built (`build_data`, `build_model`), the two steps of the set-up that
differ between the schedules (`lifelong.runs.setup`). The keys are those of a run's config.yaml.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml
from torch import nn

from ..core.compose import check_compatible, parse_method_spec, unprotected_warnings
from ..core.config import Config, option
from ..core.method import Method
from ..errors import ConfigError
from ..integrations.tracking import parse_trackers
from ..models import build_model
from ..scenarios import Scenario, Stream, get_benchmark, get_stream_benchmark
from ..training.lifecycle import check_trains_on_given_data
from ..training.rundir import jsonable, read_yaml

# settings that change no result: a run may be resumed, or a finished one kept, with others
RESULT_NEUTRAL = ("log", "keep_checkpoint")


@dataclasses.dataclass
class RunSettings(Config):
    """The settings every run shares; `None` means the benchmark's protocol default."""

    _owner = "run"
    benchmark: str = option("split-digits", "benchmark name (lifelong list)")
    method: str = option("naive", "method, or methods joined by '+' (replay+ewc)")
    seed: int = option(0, "random seed of model, data order and methods", low=0)
    batch_size: int | None = option(None, "mini-batch size (streams: samples per update)", low=1)
    lr: float | None = option(None, "learning rate", low=0, low_open=True)
    optimizer: Literal["sgd", "adam", "adamw"] | None = option(None, "optimizer")
    momentum: float | None = option(None, "SGD momentum (default: the benchmark's, mostly 0)",
                                    low=0, high=1)
    weight_decay: float | None = option(
        None, "the optimizer's weight decay (default: the benchmark's, mostly 0)", low=0)
    model: str | None = option(None, "model architecture (default: the benchmark's)")
    hidden: tuple[int, ...] | None = option(None, "hidden layer widths, e.g. 400,400", low=1)
    diagnostics: bool = option(False, "dead units, effective/stable rank, weight and gradient "
                               "magnitude, plasticity on a probe set (after each task; streams: "
                               "every diagnose_every samples)")
    probe_size: int = option(2000, "probe samples of the task for the diagnostics", low=1)
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:N or mps")
    flush_denormal: bool = option(
        True, "CPU: flush denormal floats to zero (Adam's moments of parameters that stop "
        "getting gradients decay into denormals, which made naive Split MNIST 1.7x slower)")
    data_dir: str | None = option(None, "folder with dataset files (default: $LIFELONG_DATA, "
                                  "then the download cache)")
    log: str = option("", "also log every metric to trackers: tensorboard, mlflow or both "
                      "(tensorboard,mlflow); needs pip install lifelong[tracking]")
    method_params: dict[str, dict] = option({}, "per-method settings, e.g. {ewc: {lambda: 100}}")
    benchmark_params: dict = option({}, "benchmark settings, e.g. {num_tasks: 5}")

    def validate(self) -> None:
        parse_trackers(self.log)

    def resolved(self) -> RunSettings:
        """A copy with every default filled in from the benchmark's protocol."""
        raise NotImplementedError

    def check_method(self, method: Method) -> list[str]:
        """Refuse, with the reason, a method that cannot run on this schedule; return the
        warnings for one that runs but is known not to protect it."""
        raise NotImplementedError

    def build_data(self) -> Scenario | Stream:
        """The tasks to train on, as this schedule reads them."""
        raise NotImplementedError

    def build_model(self, data: Scenario | Stream) -> nn.Module:
        """The model for `data` (on the CPU)."""
        raise NotImplementedError

    def _method_names(self) -> list[str]:
        """The methods of `method`, after checking that `method_params` names only them."""
        names = parse_method_spec(self.method)
        unknown = sorted(set(self.method_params) - set(names))
        if unknown:
            raise ConfigError(f"settings given for {', '.join(unknown)}, which is not part of "
                              f"method '{self.method}'")
        return names

    def _shared_defaults(self, protocol: Any, options: Config) -> dict[str, Any]:
        """The shared settings left to the protocol (a `Protocol` or a `StreamProtocol`)."""
        return {
            "batch_size": self.batch_size or protocol.batch_size,
            "lr": self.lr or protocol.lr,
            "optimizer": self.optimizer or protocol.optimizer,
            "momentum": protocol.momentum if self.momentum is None else self.momentum,
            "weight_decay": (protocol.weight_decay if self.weight_decay is None
                             else self.weight_decay),
            "model": self.model or protocol.model,
            "hidden": list(self.hidden or protocol.hidden),
            "benchmark_params": options.to_dict(),
        }


@dataclasses.dataclass
class RunConfig(RunSettings):
    """A run of tasks one after another (`lifelong run`), each evaluated on every test set."""

    scenario: Literal["task", "domain", "class"] | None = option(
        None, "task-, domain- or class-incremental (default: the benchmark's)")
    epochs: int | None = option(None, "passes over each task's data", low=1)
    iterations: int | None = option(None, "mini-batches per task (instead of epochs)", low=1)
    dropout: float = option(0.0, "dropout after each hidden layer", low=0, high=1)
    width: int | None = option(None, "channels of the first convolution (cnn: 32, resnet18: 20)",
                               low=1)
    batch_norm: bool | None = option(None, "BatchNorm in the model (default: resnet18 only)")
    head: Literal["multi", "shared"] = option(
        "multi", "task-incremental output: one head per task, or one shared head masked per task")
    mask_unseen: bool = option(
        True, "class-incremental: mask classes not seen yet (van de Ven et al. 2022)")
    eval_batch_size: int | None = option(None, "batch size for evaluation (default: the "
                                         "benchmark's, 1000; text 64)", low=1)
    keep_checkpoint: bool = option(
        False, "keep checkpoint.pt once the run has finished (default: deleted once summary.json "
        "is written; an unfinished run always keeps its last one)")

    def validate(self) -> None:
        if self.epochs is not None and self.iterations is not None:
            raise ConfigError("give --epochs or --iterations, not both")
        super().validate()

    def resolved(self) -> RunConfig:
        benchmark = get_benchmark(self.benchmark)
        protocol = benchmark.protocol
        scenario = self.scenario or benchmark.default_scenario
        names = self._method_names()
        params = {name: {**protocol.params_for(scenario, name),
                         **self.method_params.get(name, {})} for name in names}
        epochs, iterations = self.epochs, self.iterations
        if epochs is None and iterations is None:
            epochs, iterations = protocol.epochs, protocol.iterations
        return self.replace(
            **self._shared_defaults(protocol, benchmark.options.from_dict(self.benchmark_params)),
            scenario=scenario, epochs=epochs, iterations=iterations,
            eval_batch_size=self.eval_batch_size or protocol.eval_batch_size,
            method_params={n: p for n, p in params.items() if p},
        )

    def check_method(self, method: Method) -> list[str]:
        check_compatible(method, self.scenario)
        return unprotected_warnings(method, self.scenario)

    def build_data(self) -> Scenario:
        return get_benchmark(self.benchmark).build(
            self.scenario, data_dir=self.data_dir, head=self.head, mask_unseen=self.mask_unseen,
            options=self.benchmark_params, model=self.model)

    def build_model(self, data: Scenario) -> nn.Module:
        return build_model(self.model, data.input_shape, data.num_outputs, self.hidden,
                           self.dropout, width=self.width, batch_norm=self.batch_norm,
                           text=data.text)


@dataclasses.dataclass
class StreamConfig(RunSettings):
    """An online run on one stream (`lifelong stream`): each sample scored, then learned from."""

    _owner = "stream"
    benchmark: str = option("slowly-changing-regression", "streaming benchmark "
                            "(lifelong list)")
    tasks: int | None = option(None, "number of tasks (default: the benchmark's)", low=1)
    steps: int | None = option(None, "stop after this many samples", low=1)
    bin_size: int | None = option(None, "samples per bin of the online metric "
                                  "(default: one task; 20k for the regression)", low=1)
    boundaries: bool = option(False, "announce task boundaries to the method "
                              "(default: task-free)")
    diagnose_every: int | None = option(None, "samples between diagnoses (default: each bin)",
                                        low=1)

    def resolved(self) -> StreamConfig:
        benchmark = get_stream_benchmark(self.benchmark)
        protocol = benchmark.protocol
        self._method_names()
        options = benchmark.options.from_dict(self.benchmark_params)
        return self.replace(
            **self._shared_defaults(protocol, options),
            tasks=self.tasks or protocol.num_tasks,
            bin_size=self.bin_size or protocol.bin_size or options.to_dict()["samples_per_task"],
        )

    def check_method(self, method: Method) -> list[str]:
        # a stream reads one shared output without task ids: domain-incremental
        check_compatible(method, "domain", task_boundaries=self.boundaries)
        check_trains_on_given_data(method, "a stream", "run it with `lifelong run` on a task "
                                   "benchmark")
        return unprotected_warnings(method, "domain")

    def build_data(self) -> Stream:
        return get_stream_benchmark(self.benchmark).build(
            num_tasks=self.tasks, seed=self.seed, data_dir=self.data_dir,
            options=self.benchmark_params)

    def build_model(self, data: Stream) -> nn.Module:
        return build_model(self.model, data.input_shape, data.num_outputs, self.hidden)


def config_differences(out: str | Path, config: dict[str, Any],
                       ignore: tuple[str, ...] = ()) -> list[str] | None:
    """The settings whose value in `out/config.yaml` differs from `config` (as a run writes it),
    apart from `ignore` and settings that change no result; None when there is no config.yaml."""
    path = Path(out) / "config.yaml"
    if not path.is_file():
        return None
    saved = read_yaml(path, f"the run's {path}")
    wanted = yaml.safe_load(yaml.safe_dump(jsonable(config), sort_keys=False))
    skip = (*ignore, *RESULT_NEUTRAL)
    return sorted(k for k in set(saved) | set(wanted)
                  if k not in skip and saved.get(k) != wanted.get(k))
