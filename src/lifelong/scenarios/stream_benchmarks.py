"""Named streaming benchmarks with their published protocols as defaults.

| benchmark                  | paper                  | network         | per task | tasks | lr    |
|----------------------------|------------------------|-----------------|----------|-------|-------|
| slowly-changing-regression | Dohare et al. 2024     | 20-5-1          | 10k      | 100   | 0.01  |
| online-permuted-mnist      | Dohare et al. 2024     | 784-2000x3-10   | 60k      | 800   | 0.003 |
| input-permuted-mnist       | Elsayed & Mahmood 2024 | 784-300-150-10  | 5000     | 200   | 0.01  |
| label-permuted-mnist       | Elsayed & Mahmood 2024 | 784-300-150-10  | 2500     | 400   | 0.01  |
| label-permuted-cifar10     | Elsayed & Mahmood 2024 | 3072-300-150-10 | 2500     | 400   | 0.01  |

All use SGD at batch size 1. `--tasks`, `--steps`, `--hidden` and
`--set benchmark.samples_per_task=N` shrink them to CPU size. Elsayed & Mahmood use EMNIST for the
label-permuted MNIST-style benchmark; EMNIST is not available offline here, so MNIST stands in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..core.config import Config, option
from ..core.registry import unknown_name
from ..errors import ConfigError
from .streams import (
    Stream,
    label_permuted_images,
    permuted_images,
    slowly_changing_regression,
)


@dataclasses.dataclass(frozen=True)
class StreamProtocol:
    """Training defaults of a streaming benchmark (the fields it shares with `Protocol` mean the
    same)."""

    hidden: tuple[int, ...]
    lr: float
    num_tasks: int
    bin_size: int | None = None  # samples per bin of the online metric (None: one task)
    optimizer: str = "sgd"
    batch_size: int = 1
    model: str = "mlp"
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclasses.dataclass
class RegressionOptions(Config):
    _owner = "benchmark"
    samples_per_task: int = option(10_000, "steps between two bit flips", low=1)
    num_inputs: int = option(20, "binary inputs", low=1)
    flipping_bits: int = option(15, "inputs that flip slowly (the rest are i.i.d.)", low=1)
    target_hidden: int = option(100, "LTU units of the target network", low=1)
    beta: float = option(0.7, "LTU threshold parameter β", low=0, high=1)

    def validate(self) -> None:
        if self.flipping_bits > self.num_inputs:
            raise ConfigError(f"benchmark.flipping_bits ({self.flipping_bits}) must not exceed "
                              f"benchmark.num_inputs ({self.num_inputs})")


@dataclasses.dataclass
class ImageStreamOptions(Config):
    _owner = "benchmark"
    samples_per_task: int = option(5000, "samples per task", low=1)
    permute_first: bool = option(True, "permute the first task too")


def _options(default_samples: int) -> type[Config]:
    """ImageStreamOptions with another default for samples_per_task."""
    return dataclasses.make_dataclass(
        f"ImageStreamOptions{default_samples}",
        [("samples_per_task", int, option(default_samples, "samples per task", low=1))],
        bases=(ImageStreamOptions,))


@dataclasses.dataclass(frozen=True)
class StreamBenchmark:
    name: str
    description: str
    options: type[Config]
    protocol: StreamProtocol
    build_stream: Callable[[str, dict[str, Any], int, int, str | None], Stream]
    needs_files: bool = False

    def build(self, *, num_tasks: int, seed: int, data_dir: str | None = None,
              options: dict[str, Any] | None = None) -> Stream:
        opts = self.options.from_dict(options or {}).to_dict()
        return self.build_stream(self.name, opts, num_tasks, seed, data_dir)


def _regression(name: str, opts: dict[str, Any], num_tasks: int, seed: int,
                data_dir: str | None) -> Stream:
    return slowly_changing_regression(num_tasks=num_tasks, seed=seed, **opts)


def _image_stream(loader: str, kind: str):
    def build(name: str, opts: dict[str, Any], num_tasks: int, seed: int,
              data_dir: str | None) -> Stream:
        from .. import data

        splits = getattr(data, loader)(data_dir)
        make = permuted_images if kind == "input" else label_permuted_images
        return make(splits.x_train, splits.y_train, name=name, num_tasks=num_tasks, seed=seed,
                    **opts)
    return build


STREAM_BENCHMARKS: dict[str, StreamBenchmark] = {
    b.name: b for b in [
        StreamBenchmark(
            "slowly-changing-regression", "Dohare et al.'s slowly-changing regression (bit "
            "flipping): 1M steps, error binned over 20k", RegressionOptions,
            StreamProtocol(hidden=(5,), lr=0.01, num_tasks=100, bin_size=20_000),
            _regression),
        StreamBenchmark(
            "online-permuted-mnist", "Dohare et al.'s online permuted MNIST: a new pixel "
            "permutation every 60k images, 800 tasks", _options(60_000),
            StreamProtocol(hidden=(2000, 2000, 2000), lr=0.003, num_tasks=800),
            _image_stream("load_mnist", "input"), needs_files=True),
        StreamBenchmark(
            "input-permuted-mnist", "Elsayed & Mahmood's input-permuted MNIST: a new pixel "
            "permutation every 5000 steps, 1M steps", _options(5000),
            StreamProtocol(hidden=(300, 150), lr=0.01, num_tasks=200),
            _image_stream("load_mnist", "input"), needs_files=True),
        StreamBenchmark(
            "label-permuted-mnist", "Elsayed & Mahmood's label-permuted stream on MNIST (EMNIST "
            "in the paper): new labels every 2500 steps, 1M steps", _options(2500),
            StreamProtocol(hidden=(300, 150), lr=0.01, num_tasks=400),
            _image_stream("load_mnist", "label"), needs_files=True),
        StreamBenchmark(
            "label-permuted-cifar10", "Elsayed & Mahmood's label-permuted CIFAR-10: new labels "
            "every 2500 steps, 1M steps", _options(2500),
            StreamProtocol(hidden=(300, 150), lr=0.01, num_tasks=400),
            _image_stream("load_cifar10", "label"), needs_files=True),
    ]
}


def get_stream_benchmark(name: str) -> StreamBenchmark:
    if name not in STREAM_BENCHMARKS:
        raise ConfigError(unknown_name("streaming benchmark", name, STREAM_BENCHMARKS))
    return STREAM_BENCHMARKS[name]


def list_stream_benchmarks() -> dict[str, str]:
    return {n: STREAM_BENCHMARKS[n].description for n in sorted(STREAM_BENCHMARKS)}
