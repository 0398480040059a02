"""What the convolutional models accept as input: images (C, H, W), or (H, W) with one channel."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError

ACCEPTED = "images of shape (C, H, W), or (H, W) for one channel (MNIST's 28x28)"


def image_shape(model: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) for `input_shape`, or a `ConfigError` that says what `model` accepts."""
    shape = tuple(int(d) for d in input_shape)
    given = "x".join(map(str, shape)) or "a scalar"
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or any(d < 1 for d in shape):
        hint = " (flat vectors: use --model mlp)" if len(shape) == 1 else ""
        raise ConfigError(f"model {model} takes {ACCEPTED}; the inputs are {given}{hint}")
    channels, height, width = shape
    if width in (1, 3, 4) and channels > 4 and height > 4:  # e.g. 32x32x3
        raise ConfigError(f"model {model} takes {ACCEPTED}; the inputs are {given}, which looks "
                          f"like channels-last images (H, W, C): give them as [N, {width}, "
                          f"{channels}, {height}]")
    return shape
