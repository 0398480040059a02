"""The small CNN of the continual-learning literature, for 28x28 and 32x32 images.

Zenke, Poole & Ganguli (2017, "Continual learning through synaptic intelligence") used it for
split CIFAR-10/100, taking the Keras CIFAR-10 example network (their code:
github.com/ganguli-lab/pathint, `fig_transfer_cifar/train.py`); many later papers reuse it. With
w = `width` (32 there), 3x3 kernels and ReLU:

    conv(w, padding 1) → conv(w, no padding) → max-pool 2 → [dropout]
    → conv(2w, padding 1) → conv(2w, no padding) → max-pool 2 → [dropout] → flatten
    → (Linear(h) → ReLU → [dropout]) for each h in `hidden` (512 there) → Linear head

A 32x32 input leaves 2w maps of 6x6 (2304 features at w = 32), a 28x28 one 5x5 (1600); the
smallest input that fits is 10x10. Zenke et al. drop out 0.25 after each pooling and 0.5 after the
hidden layer; here one `dropout` rate serves both. With `batch_norm`, a BatchNorm2d/1d follows
every conv/hidden Linear layer (before its ReLU) and those layers have no bias (the norm's shift
replaces it); the original has no normalisation. Initialisation is PyTorch's default (the
original's output layer starts at zero).

The layers are registered in the order they run (conv stack, hidden layers, head), which is what
continual backprop and the diagnostics read.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from .images import image_shape


def _stack_output(size: int) -> int:
    """Spatial size after the conv stack (0 where some stage would be empty)."""
    for step in (lambda s: s - 2, lambda s: s // 2, lambda s: s - 2, lambda s: s // 2):
        size = step(size)
        if size < 1:
            return 0
    return size


class CNN(nn.Module):
    """See the module docstring; `self.head` holds every output unit of the scenario."""

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], num_outputs: int, *,
                 width: int = 32, dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        channels, height, width_px = image_shape("cnn", input_shape)
        out_h, out_w = _stack_output(height), _stack_output(width_px)
        if not (out_h and out_w):
            raise ConfigError(f"model cnn needs images of at least 10x10 (two 3x3 convolutions "
                              f"without padding and two 2x2 poolings); the inputs are "
                              f"{height}x{width_px}")
        self.image_shape = (channels, height, width_px)

        def conv(cin: int, cout: int, padding: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=padding,
                                                 bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            return layers + [nn.ReLU()]

        def pool() -> list[nn.Module]:
            return [nn.MaxPool2d(2)] + ([nn.Dropout(dropout)] if dropout else [])

        self.conv = nn.Sequential(
            *conv(channels, width, 1), *conv(width, width, 0), *pool(),
            *conv(width, 2 * width, 1), *conv(2 * width, 2 * width, 0), *pool(),
            nn.Flatten())
        size = 2 * width * out_h * out_w
        layers: list[nn.Module] = []
        for units in hidden:
            layers.append(nn.Linear(size, units, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            size = units
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(size, num_outputs)

    def features(self, x: Tensor) -> Tensor:
        """The input of the head."""
        return self.body(self.conv(x.reshape(x.shape[0], *self.image_shape)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
