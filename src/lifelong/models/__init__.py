"""Models and the registry that builds them by name."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..core.registry import unknown_name
from .mlp import MLP

MODELS = {"mlp": "multi-layer perceptron with ReLU (--hidden sets the layer widths)"}


def build_model(name: str, input_shape: Sequence[int], num_outputs: int,
                hidden: Sequence[int] = (400, 400), dropout: float = 0.0) -> nn.Module:
    from ..errors import ConfigError

    if name == "mlp":
        if any(h < 1 for h in hidden):
            raise ConfigError(f"--hidden must be positive layer widths, got {list(hidden)}")
        return MLP(input_shape, hidden, num_outputs, dropout)
    raise ConfigError(unknown_name("model", name, MODELS))


__all__ = ["MLP", "MODELS", "build_model"]
