"""Streams, the online form of a scenario: every sample is seen once, in order.

A `Stream` is a sequence of tasks (segments of `samples_per_task` samples). The task changes are
known to the benchmark (to bin the online metric) but are not announced to the method unless the
run asks for boundaries. Like a `Scenario` it gives a model's input shape, its number of outputs
and its readout (the identity: one shared output, no task ids). Segments are generated on demand
from the stream's seed, so a 1M-step stream never sits in memory at once and any segment can be
rebuilt on its own.

- `slowly_changing_regression` (Dohare et al. 2021, 2024): 20 binary inputs, 15 of them bits that
  change slowly (one flips every `samples_per_task` steps), 5 i.i.d. random bits; the target is a
  fixed random network of 100 linear threshold units (LTUs) with ±1 weights.
- `permuted_images` (Dohare et al.'s online permuted MNIST, Elsayed & Mahmood's input-permuted
  MNIST): a new random pixel permutation per task, the training images in a new random order.
- `label_permuted_images` (Elsayed & Mahmood's label-permuted EMNIST / CIFAR-10): a new random
  permutation of the labels per task, the images in a new random order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..core.batch import Batch
from ..core.readout import Readout


@dataclasses.dataclass
class Stream:
    """A sequence of `num_tasks` segments of `samples_per_task` samples each."""

    name: str
    input_shape: tuple[int, ...]
    num_outputs: int
    num_tasks: int
    samples_per_task: int
    regression: bool
    make_segment: Callable[[int], Batch]  # task -> its samples, in stream order, on the CPU
    make_probe: Callable[[int, int], Batch]  # (task, n) -> n samples of the task's distribution
    # one shared output read as it is (a stream is domain-incremental, without task ids)
    readout: Readout = dataclasses.field(default_factory=Readout.identity)

    def segment(self, task: int) -> Batch:
        self._check(task)
        return self.make_segment(task)

    def probe(self, task: int, size: int) -> Batch:
        """`size` samples from task `task`'s distribution, for the diagnostics."""
        self._check(task)
        return self.make_probe(task, size)

    @property
    def total_samples(self) -> int:
        return self.num_tasks * self.samples_per_task

    def _check(self, task: int) -> None:
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task {task} is outside the stream's {self.num_tasks} tasks")

    def describe(self) -> str:
        kind = "regression" if self.regression else f"{self.num_outputs} classes"
        return (f"{self.name}: {self.num_tasks} tasks x {self.samples_per_task} samples, inputs "
                f"{'x'.join(map(str, self.input_shape))}, {kind}")


def _generator(*keys: int) -> torch.Generator:
    """A generator seeded from several integers (stream seed, task, purpose)."""
    seed = np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(seed) & (2**63 - 1))


# --- slowly-changing regression ------------------------------------------------------------------
class LTUTarget:
    """Dohare et al.'s target: y = v·f(Wx + b) + c, f an LTU per hidden unit, every weight ±1.

    LTU i outputs 1 when its input exceeds τ_i = β(m + 1) − S_i, with m the number of inputs and
    S_i the number of −1 among its m + 1 weights (bias included), as the paper defines it. (The
    reference code computes S_i as (m − Σw + b)/2, which differs by up to 1.5 when b = ±1.)
    """

    def __init__(self, num_inputs: int, hidden: int, beta: float, generator: torch.Generator
                 ) -> None:
        sign = lambda *shape: torch.randint(0, 2, shape, generator=generator).float() * 2 - 1  # noqa: E731
        self.weight = sign(hidden, num_inputs)
        self.bias = sign(hidden)
        self.out_weight = sign(hidden)
        self.out_bias = sign(1)
        negatives = (self.weight < 0).sum(1) + (self.bias < 0)
        self.threshold = beta * (num_inputs + 1) - negatives.float()

    def features(self, x: Tensor) -> Tensor:
        return (x @ self.weight.T + self.bias > self.threshold).float()

    def __call__(self, x: Tensor) -> Tensor:
        return (self.features(x) @ self.out_weight + self.out_bias).unsqueeze(1)


def slowly_changing_regression(*, num_tasks: int = 100, samples_per_task: int = 10_000,
                               num_inputs: int = 20, flipping_bits: int = 15,
                               target_hidden: int = 100, beta: float = 0.7, seed: int = 0
                               ) -> Stream:
    """Dohare et al.'s slowly-changing regression; task t holds the t-th state of the slow bits
    (one random bit flips between consecutive tasks)."""
    if not 0 < flipping_bits <= num_inputs:
        raise ValueError(f"flipping_bits must be in 1..{num_inputs}, got {flipping_bits}")
    setup = _generator(seed, 0)
    target = LTUTarget(num_inputs, target_hidden, beta, setup)
    states = torch.empty(num_tasks, flipping_bits)
    states[0] = torch.randint(0, 2, (flipping_bits,), generator=setup).float()
    flips = torch.randint(0, flipping_bits, (num_tasks,), generator=setup)
    for t in range(1, num_tasks):
        states[t] = states[t - 1]
        states[t, flips[t]] = 1 - states[t, flips[t]]

    def samples(task: int, n: int, generator: torch.Generator) -> Batch:
        random_bits = torch.randint(0, 2, (n, num_inputs - flipping_bits),
                                    generator=generator).float()
        x = torch.cat([states[task].expand(n, -1), random_bits], 1)
        return Batch(x, target(x))

    return Stream("slowly-changing-regression", (num_inputs,), 1, num_tasks, samples_per_task,
                  True, lambda t: samples(t, samples_per_task, _generator(seed, 1, t)),
                  lambda t, n: samples(t, n, _generator(seed, 2, t)))


# --- image streams -------------------------------------------------------------------------------
def _as_float(images: np.ndarray) -> Tensor:
    """uint8 images -> float32 in [0, 1]; HWC colour images become CHW."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dim() == 4 and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    return x.float().div_(255.0) if images.dtype == np.uint8 else x.float()


def permuted_images(images: np.ndarray, labels: np.ndarray, *, name: str, num_tasks: int,
                    samples_per_task: int, seed: int = 0, permute_first: bool = True) -> Stream:
    """A new fixed input permutation per task; each task shows `samples_per_task` training
    images in a new random order (without replacement while the dataset lasts)."""
    base = images.reshape(len(images), -1)
    y_all = torch.from_numpy(labels.astype(np.int64))
    features = base.shape[1]
    classes = int(labels.max()) + 1

    def permutation(task: int) -> Tensor:
        if task == 0 and not permute_first:
            return torch.arange(features)
        return torch.randperm(features, generator=_generator(seed, 3, task))

    def draw(task: int, n: int, purpose: int) -> Batch:
        index = _indices(len(base), n, _generator(seed, purpose, task))
        x = _as_float(base[index.numpy()])[:, permutation(task)]
        return Batch(x, y_all[index])

    return Stream(name, (features,), classes, num_tasks, samples_per_task, False,
                  lambda t: draw(t, samples_per_task, 4), lambda t, n: draw(t, n, 5))


def label_permuted_images(images: np.ndarray, labels: np.ndarray, *, name: str,
                          num_tasks: int, samples_per_task: int, seed: int = 0,
                          permute_first: bool = True) -> Stream:
    """A new random permutation of the class labels per task (Elsayed & Mahmood 2024)."""
    y_all = torch.from_numpy(labels.astype(np.int64))
    classes = int(labels.max()) + 1
    shape = tuple(_as_float(images[:1]).shape[1:])

    def relabel(task: int) -> Tensor:
        if task == 0 and not permute_first:
            return torch.arange(classes)
        return torch.randperm(classes, generator=_generator(seed, 6, task))

    def draw(task: int, n: int, purpose: int) -> Batch:
        index = _indices(len(images), n, _generator(seed, purpose, task))
        return Batch(_as_float(images[index.numpy()]), relabel(task)[y_all[index]])

    return Stream(name, shape, classes, num_tasks, samples_per_task, False,
                  lambda t: draw(t, samples_per_task, 7), lambda t, n: draw(t, n, 8))


def _indices(size: int, n: int, generator: torch.Generator) -> Tensor:
    """n indices in random order, each dataset item once per pass (several passes if n > size)."""
    passes = math.ceil(n / size)
    return torch.cat([torch.randperm(size, generator=generator) for _ in range(passes)])[:n]
