"""Multi-layer perceptrons, the workhorse of the continual-learning benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Flatten → (Linear → [BatchNorm1d →] ReLU [→ Dropout])* → Linear over all output units.

    The last layer holds every output unit of the scenario (all heads); the scenario's readout
    picks each task's units, so one model serves all three scenarios. With `batch_norm`, the
    hidden Linear layers have no bias (the norm's shift replaces it).
    """

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], num_outputs: int,
                 dropout: float = 0.0, *, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in hidden:
            layers.append(nn.Linear(width, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_outputs)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
