"""Named benchmarks: a dataset, how it becomes tasks, and the protocol's training defaults.

Besides the registered names, `get_benchmark` accepts a user's own data: `folder:PATH` (a folder
of class subfolders of images, or of `train/` and `test/` each holding class subfolders) and
`arrays:PATH.npz` (arrays `x_train`, `y_train` and optionally `x_test`, `y_test`), both split by
classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from ..core.config import Config, option
from ..core.registry import unknown_name
from ..errors import ConfigError
from .permuted import permuted_inputs
from .rotated import rotated_inputs
from .split import split_by_classes
from .task import Scenario
from .text_benchmarks import DomainOptions, StandardOptions, TextOptions


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
    momentum: float = 0.0  # SGD
    weight_decay: float = 0.0
    eval_batch_size: int = 1000

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
    cumulative: bool = option(False, "class-incremental: each task trains on the classes of all "
                              "tasks so far (Dohare et al. 2024)")


@dataclasses.dataclass
class Cifar100SplitOptions(SplitOptions):
    classes_per_task: int = option(10, "classes in each task (10: 10 tasks; 5: 20 tasks)", low=1)


@dataclasses.dataclass
class IncrementalOptions(SplitOptions):
    classes_per_task: int = option(5, "new classes in each task", low=1)
    class_order: str = option("random", "sorted, random (drawn with class_order_seed) or a "
                              "comma-separated list of classes")
    cumulative: bool = option(True, "each task trains on the classes of all tasks so far")


@dataclasses.dataclass
class PermutedOptions(Config):
    _owner = "benchmark"
    num_tasks: int = option(10, "number of permutations (tasks)", low=1)
    permutation_seed: int = option(0, "seed of the permutations", low=0)
    permute_first: bool = option(False, "permute the first task too")


@dataclasses.dataclass
class RotatedOptions(Config):
    _owner = "benchmark"
    num_tasks: int | None = option(None, "number of tasks, their angles spread evenly over "
                                   "[0, 180) (default: 10, or as many as angles)", low=1)
    angles: tuple[float, ...] | None = option(None, "comma-separated angles in degrees, one per "
                                              "task, counter-clockwise (default: evenly spaced)")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    options: type[Config]
    default_scenario: Literal["task", "domain", "class"]
    protocol: Protocol
    load: Callable[[str | None], Any]  # data_dir -> ArraySplits
    kind: Literal["split", "permuted", "rotated", "text"]
    needs_files: bool = False

    def build(self, scenario: str, *, data_dir: str | None = None, head: str = "multi",
              mask_unseen: bool = True, options: dict[str, Any] | None = None,
              model: str | None = None) -> Scenario:
        """The scenario; `model` matters for text benchmarks only (its tokenizer and whether it
        classifies or generates)."""
        opts = self.options.from_dict(options or {})
        if self.kind == "text":
            from .text_benchmarks import build_text

            return build_text(self.name, opts, scenario, data_dir=data_dir, head=head,
                              mask_unseen=mask_unseen, model=model)
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
                                    name=self.name, cumulative=opts.cumulative,
                                    class_names=getattr(data, "class_names", None))
        if self.kind == "rotated":
            return rotated_inputs(*arrays, num_tasks=opts.num_tasks, angles=opts.angles,
                                  scenario=scenario, head=head, mask_unseen=mask_unseen,
                                  name=self.name)
        return permuted_inputs(*arrays, num_tasks=opts.num_tasks, scenario=scenario, head=head,
                               seed=opts.permutation_seed, permute_first=opts.permute_first,
                               mask_unseen=mask_unseen, name=self.name)


def _no_arrays(data_dir: str | None) -> Any:
    raise ConfigError("text benchmarks build their scenario from text (Benchmark.build)")


def _digits(data_dir: str | None) -> Any:
    from ..data import load_digits_splits

    return load_digits_splits()


def _mnist1d(data_dir: str | None) -> Any:
    from ..data import load_mnist1d

    return load_mnist1d()


def _mnist(data_dir: str | None) -> Any:
    from ..data import load_mnist

    return load_mnist(data_dir)


def _fashion_mnist(data_dir: str | None) -> Any:
    from ..data import load_fashion_mnist

    return load_fashion_mnist(data_dir)


def _kmnist(data_dir: str | None) -> Any:
    from ..data import load_kmnist

    return load_kmnist(data_dir)


def _channels_first(data: Any, class_names: Any = None) -> Any:
    """CIFAR's HWC images as CHW (what the convolutional models take); still uint8, so that the
    builders scale them to [0, 1] like MNIST's (no mean/std normalisation)."""
    from ..data import ArraySplits

    return ArraySplits(data.x_train.transpose(0, 3, 1, 2), data.y_train,
                       data.x_test.transpose(0, 3, 1, 2), data.y_test,
                       class_names=class_names or getattr(data, "class_names", None))


def _cifar10(data_dir: str | None) -> Any:
    from ..data import load_cifar10
    from ..data.cifar import CLASSES

    return _channels_first(load_cifar10(data_dir), CLASSES)


def _cifar100(data_dir: str | None) -> Any:
    from ..data import load_cifar100

    return _channels_first(load_cifar100(data_dir))


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

# Van de Ven et al.'s CIFAR protocol (same code, param_values.py): Adam 1e-4, 5000 iterations of
# 256 per task, fully connected layers 2000-2000 after the convolutions; Split CIFAR-10 in 5 tasks,
# Split CIFAR-100 in 10; EWC λ 100 (CIFAR-10, every scenario) and 1e3 / 1e3 / 100 (CIFAR-100,
# task / domain / class), SI c 10 / 10 / 5 and 100 / 500 / 5. Their network is a 5-layer CNN
# (pre-trained on CIFAR-10 for CIFAR-100); here Split CIFAR-10 uses the "cnn" model and Split
# CIFAR-100 the reduced ResNet-18 ("resnet18", which ignores `hidden`).


def _memory(classes: int, classes_per_task: int) -> dict[str, dict[str, Any]]:
    """Their 100 samples per class; methods outside their comparison get the same budget."""
    return {"replay": {"buffer": "class-balanced", "memory_per_class": 100, "weighting": "tasks"},
            "agem": {"memory_per_class": 100}, "lwf": {"weighting": "tasks"},
            "der": {"memory_size": 100 * classes}, "derpp": {"memory_size": 100 * classes},
            "gem": {"memory_per_task": 100 * classes_per_task}}


_VAN_DE_VEN_CIFAR10 = Protocol(
    hidden=(2000, 2000), batch_size=256, lr=1e-4, iterations=5000, model="cnn",
    method_params=_memory(10, 2),
    scenario_method_params={"task": {"ewc": {"lambda": 100.0}, "si": {"c": 10.0}},
                            "domain": {"ewc": {"lambda": 100.0}, "si": {"c": 10.0}},
                            "class": {"ewc": {"lambda": 100.0}, "si": {"c": 5.0}}})
_VAN_DE_VEN_CIFAR100 = Protocol(
    hidden=(2000, 2000), batch_size=256, lr=1e-4, iterations=5000, model="resnet18",
    method_params=_memory(100, 10),
    scenario_method_params={"task": {"ewc": {"lambda": 1e3}, "si": {"c": 100.0}},
                            "domain": {"ewc": {"lambda": 1e3}, "si": {"c": 500.0}},
                            "class": {"ewc": {"lambda": 100.0}, "si": {"c": 5.0}}})

# Dohare et al. (2024, Nature, "Loss of plasticity in deep continual learning") and their code
# (shibhansh/loss-of-plasticity, lop/incremental_cifar): ResNet-18, SGD with step size 0.1,
# batch 90, 200 epochs per task, 5 new classes per task in a random order, 20 tasks, each trained
# on every class seen so far (outputs of unseen classes masked) and tested on all of them. Here
# each task's test set holds its 5 new classes, so the accuracy on every class seen after task t
# is the mean of row t of the accuracy matrix over tasks 0..t (100 test images per class).
# Also theirs: momentum 0.9 and weight decay 5e-4. Not reproduced: the step size divided by 5
# at epochs 60, 120 and 160 of each task, data
# augmentation (flips, crops, rotations), inputs normalised by the channel means and deviations
# (here scaled to [0, 1] like every image benchmark), 50 images per class held out to pick each
# task's best epoch (here all 500 train), and their full-width ResNet-18 (here the library's
# reduced one; `hidden` is unused by it).
_DOHARE_INCREMENTAL = Protocol(hidden=(), batch_size=90, lr=0.1, optimizer="sgd", epochs=200,
                               model="resnet18", momentum=0.9, weight_decay=5e-4)

# For a user's own data (folder:, arrays:): not tuned for anything; van de Ven's Split MNIST
# network and optimiser, 5 epochs per task.
_CUSTOM_PROTOCOL = Protocol(hidden=(400, 400), batch_size=128, lr=1e-3, epochs=5)

# Text (lifelong.scenarios.text_benchmarks): see its docstring for the papers' settings.
_TEXT = Protocol(hidden=(), batch_size=16, lr=5e-5, optimizer="adamw", epochs=1,
                 model="hf:all-MiniLM-L6-v2", eval_batch_size=64,
                 # empirical Fisher: "true" needs a gradient per class (or vocabulary entry)
                 # LoRA adapters at O-LoRA/MIGU's 1e-3 (full fine-tuning at 5e-5)
                 method_params={"ewc": {"fisher": "empirical"}, "lora": {"lr": 1e-3},
                                "inc-lora": {"lr": 1e-3}, "o-lora": {"lr": 1e-3},
                                "replay": {"memory_size": 200}, "agem": {"memory_size": 200},
                                "der": {"memory_size": 200}, "derpp": {"memory_size": 200}})

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
        # Fashion-MNIST and KMNIST have the shape of MNIST and no protocol of their own here:
        # they use van de Ven's MNIST protocols, so results compare with split/permuted-mnist.
        Benchmark("split-fashion-mnist", "Fashion-MNIST in 5 tasks of 2 classes (van de Ven et "
                  "al.'s Split MNIST protocol)", SplitOptions, "task", _VAN_DE_VEN_SPLIT,
                  _fashion_mnist, "split", needs_files=True),
        Benchmark("permuted-fashion-mnist", "Fashion-MNIST with a fixed pixel permutation per "
                  "task (van de Ven et al.'s Permuted MNIST protocol)", PermutedOptions, "domain",
                  _VAN_DE_VEN_PERMUTED, _fashion_mnist, "permuted", needs_files=True),
        Benchmark("split-kmnist", "KMNIST (Kuzushiji-MNIST) in 5 tasks of 2 classes (van de Ven "
                  "et al.'s Split MNIST protocol)", SplitOptions, "task", _VAN_DE_VEN_SPLIT,
                  _kmnist, "split", needs_files=True),
        # Rotated MNIST has no single reference protocol (GEM's 20 random angles, 1 epoch; many
        # later papers 5-10 tasks): van de Ven's Permuted MNIST protocol, the same data in the
        # same domain-incremental setting, so the two compare.
        Benchmark("rotated-mnist", "MNIST rotated by a fixed angle per task, 10 angles evenly "
                  "over [0, 180) (van de Ven et al.'s Permuted MNIST protocol)", RotatedOptions,
                  "domain", _VAN_DE_VEN_PERMUTED, _mnist, "rotated", needs_files=True),
        Benchmark("split-cifar10", "CIFAR-10 in 5 tasks of 2 classes, CNN (van de Ven et al. "
                  "2022 CIFAR protocol)", SplitOptions, "task", _VAN_DE_VEN_CIFAR10, _cifar10,
                  "split", needs_files=True),
        Benchmark("split-cifar100", "CIFAR-100 in 10 tasks of 10 classes (or 20 of 5), "
                  "ResNet-18 (van de Ven et al. 2022 CIFAR protocol)", Cifar100SplitOptions,
                  "task", _VAN_DE_VEN_CIFAR100, _cifar100, "split", needs_files=True),
        Benchmark("cifar100-incremental", "Dohare et al. 2024 class-incremental CIFAR-100: 20 "
                  "tasks of 5 new classes, each trained on all classes so far, ResNet-18",
                  IncrementalOptions, "class", _DOHARE_INCREMENTAL, _cifar100, "split",
                  needs_files=True),
        Benchmark("text-standard", "AG News, Amazon, Yelp (for Yahoo), DBpedia text "
                  "classification in O-LoRA's 3 orders (lifelong[hf])", StandardOptions, "task",
                  _TEXT, _no_arrays, "text", needs_files=True),
        Benchmark("text-long", "the 15-task long text benchmark of O-LoRA/MIGU without Yahoo "
                  "(14 tasks; lifelong[hf])", TextOptions, "task", _TEXT, _no_arrays, "text",
                  needs_files=True),
        Benchmark("text-domains", "continual pre-training (DAS): masked/causal LM on the text of "
                  "AG News, Amazon, Yelp, DBpedia in turn (lifelong[hf])", DomainOptions,
                  "domain", _TEXT, _no_arrays, "text", needs_files=True),
    ]
}

# User data given as `PREFIX:PATH` instead of a registered name.
_CUSTOM_PREFIXES = {"folder": "images in class subfolders", "arrays": "arrays in a .npz file"}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`, or a split benchmark on the user's data for
    `folder:PATH` (`lifelong.data.from_image_folder`) and `arrays:PATH.npz`
    (`lifelong.data.from_npz`). A relative PATH is looked for in the working directory, then in
    the data directories (--data-dir, $LIFELONG_DATA)."""
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    prefix, sep, path = name.partition(":")
    if sep and prefix in _CUSTOM_PREFIXES:
        if not path:
            raise ConfigError(f"benchmark '{name}' names no path; write {prefix}:PATH")
        return Benchmark(name, f"{_CUSTOM_PREFIXES[prefix]} from {path}, split by classes",
                         SplitOptions, "task", _CUSTOM_PROTOCOL, _custom_loader(prefix, path),
                         "split", needs_files=True)
    message = unknown_name("benchmark", name, BENCHMARKS)
    raise ConfigError(f"{message}; or your own data: folder:PATH (class subfolders of images) "
                      "or arrays:PATH.npz")


def _custom_loader(prefix: str, path: str) -> Callable[[str | None], Any]:
    def load(data_dir: str | None) -> Any:
        from ..data import from_image_folder, from_npz

        found = _find_user_path(path, data_dir)
        return from_image_folder(found) if prefix == "folder" else from_npz(found)

    return load


def _find_user_path(path: str, data_dir: str | None) -> Any:
    from pathlib import Path

    from ..data import data_dirs
    from ..errors import DataError

    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [given, *(d / given
                                                               for d in data_dirs(data_dir))]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise DataError(f"{path} not found; looked at {', '.join(str(c) for c in candidates)}")


def list_benchmarks() -> dict[str, str]:
    return {name: BENCHMARKS[name].description for name in sorted(BENCHMARKS)}
