"""Named benchmarks: a dataset, how it becomes tasks, and the protocol's training defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from ..core.config import Config, option
from ..core.registry import unknown_name
from ..errors import ConfigError
from .builders import permuted_inputs, split_by_classes
from .task import Scenario


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Training defaults of a benchmark (what its reference paper used, or what fits a CPU)."""

    hidden: tuple[int, ...]
    batch_size: int
    lr: float
    optimizer: str = "adam"
    epochs: int | None = None
    iterations: int | None = None
    method_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # per scenario, on top of method_params (the published tuning differs by scenario)
    scenario_method_params: dict[str, dict[str, dict[str, Any]]] = dataclasses.field(
        default_factory=dict)
    model: str = "mlp"  # a name of lifelong.models.MODELS

    def params_for(self, scenario: str, method: str) -> dict[str, Any]:
        return {**self.method_params.get(method, {}),
                **self.scenario_method_params.get(scenario, {}).get(method, {})}


@dataclasses.dataclass
class SplitOptions(Config):
    _owner = "benchmark"
    classes_per_task: int = option(2, "classes in each task", low=1)
    class_order: str = option("sorted", "sorted, random (drawn with class_order_seed) or a "
                              "comma-separated list of classes")
    class_order_seed: int = option(0, "seed of a random class order", low=0)


@dataclasses.dataclass
class PermutedOptions(Config):
    _owner = "benchmark"
    num_tasks: int = option(10, "number of permutations (tasks)", low=1)
    permutation_seed: int = option(0, "seed of the permutations", low=0)
    permute_first: bool = option(False, "permute the first task too")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    options: type[Config]
    default_scenario: Literal["task", "domain", "class"]
    protocol: Protocol
    load: Callable[[str | None], Any]  # data_dir -> ArraySplits
    kind: Literal["split", "permuted"]
    needs_files: bool = False

    def build(self, scenario: str, *, data_dir: str | None = None, head: str = "multi",
              mask_unseen: bool = True, options: dict[str, Any] | None = None) -> Scenario:
        opts = self.options.from_dict(options or {})
        data = self.load(data_dir)
        arrays = (data.x_train, data.y_train, data.x_test, data.y_test)
        if self.kind == "split":
            order: Any = opts.class_order
            if order not in ("sorted", "random"):
                try:
                    order = [int(c) for c in str(order).split(",")]
                except ValueError:
                    raise ConfigError(f"benchmark.class_order: '{order}' is not sorted, random "
                                      "or a comma-separated list of classes") from None
            return split_by_classes(*arrays, classes_per_task=opts.classes_per_task,
                                    scenario=scenario, head=head, class_order=order,
                                    seed=opts.class_order_seed, mask_unseen=mask_unseen,
                                    name=self.name)
        return permuted_inputs(*arrays, num_tasks=opts.num_tasks, scenario=scenario, head=head,
                               seed=opts.permutation_seed, permute_first=opts.permute_first,
                               mask_unseen=mask_unseen, name=self.name)


def _digits(data_dir: str | None) -> Any:
    from ..data import load_digits_splits

    return load_digits_splits()


def _mnist1d(data_dir: str | None) -> Any:
    from ..data import load_mnist1d

    return load_mnist1d()


def _mnist(data_dir: str | None) -> Any:
    from ..data import load_mnist

    return load_mnist(data_dir)


# Van de Ven et al. (2022) and their code (GMvandeVen/continual-learning, params/param_values.py):
# Split MNIST: MLP 400-400, Adam 1e-3, 2000 iterations of 128 per task, 100 samples per class in
# memory, EWC λ 1e5 / 1e10 / 1e9 and SI c 10 / 5e4 / 5e3 for task / domain / class, replay's loss
# weighted 1/t new and 1 − 1/t replayed, LwF's distillation × old tasks; Permuted MNIST:
# 1000-1000, Adam 1e-4, 5000 iterations of 256 per task. Methods outside their comparison get the
# same memory budget (1000 samples, 200 per task).
_VAN_DE_VEN_SPLIT = Protocol(
    hidden=(400, 400), batch_size=128, lr=1e-3, iterations=2000,
    method_params={"replay": {"buffer": "class-balanced", "memory_per_class": 100,
                              "weighting": "tasks"},
                   "agem": {"memory_per_class": 100},
                   "lwf": {"weighting": "tasks"},
                   "der": {"memory_size": 1000}, "derpp": {"memory_size": 1000},
                   "gem": {"memory_per_task": 200},
                   "lottery": {"round_steps": 400}},  # 3 rounds in 1200 steps, 800 for the ticket
    scenario_method_params={"task": {"ewc": {"lambda": 1e5}, "si": {"c": 10.0}},
                            "domain": {"ewc": {"lambda": 1e10}, "si": {"c": 5e4}},
                            "class": {"ewc": {"lambda": 1e9}, "si": {"c": 5e3}}})
_VAN_DE_VEN_PERMUTED = Protocol(hidden=(1000, 1000), batch_size=256, lr=1e-4, iterations=5000)

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("split-digits", "scikit-learn's 8x8 digits in 5 tasks of 2 classes (embedded, "
                  "seconds on a CPU)", SplitOptions, "task",
                  Protocol(hidden=(100, 100), batch_size=32, lr=1e-3, epochs=10,
                           method_params={"replay": {"memory_size": 200},
                                          "agem": {"memory_size": 200},
                                          # about 90 steps per task: 3 rounds in 60
                                          "lottery": {"round_steps": 20}},
                           # EWC λ: best mean ACC of 1e2..1e6 over seeds 0-2 (docs/benchmarks.md)
                           scenario_method_params={"task": {"ewc": {"lambda": 1e2}},
                                                   "domain": {"ewc": {"lambda": 1e4}},
                                                   "class": {"ewc": {"lambda": 1e4}}}),
                  _digits, "split"),
        Benchmark("split-mnist1d", "MNIST-1D (generated offline) in 5 tasks of 2 classes",
                  SplitOptions, "task",
                  Protocol(hidden=(100, 100), batch_size=32, lr=1e-3, epochs=20,
                           method_params={"replay": {"memory_size": 500},
                                          "agem": {"memory_size": 500}}),
                  _mnist1d, "split"),
        Benchmark("permuted-mnist1d", "MNIST-1D with a fixed feature permutation per task",
                  PermutedOptions, "domain",
                  Protocol(hidden=(100, 100), batch_size=32, lr=1e-3, epochs=20),
                  _mnist1d, "permuted"),
        Benchmark("split-mnist", "MNIST in 5 tasks of 2 digits (van de Ven et al. 2022 protocol)",
                  SplitOptions, "task", _VAN_DE_VEN_SPLIT, _mnist, "split", needs_files=True),
        Benchmark("permuted-mnist", "MNIST with a fixed pixel permutation per task "
                  "(van de Ven et al. 2022 protocol)", PermutedOptions, "domain",
                  _VAN_DE_VEN_PERMUTED, _mnist, "permuted", needs_files=True),
    ]
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ConfigError(unknown_name("benchmark", name, BENCHMARKS))
    return BENCHMARKS[name]


def list_benchmarks() -> dict[str, str]:
    return {name: BENCHMARKS[name].description for name in sorted(BENCHMARKS)}
