"""Fresh Gaussian noise for every parameter at every step (UPGD's ξ, Shrink & Perturb's ξ).

Both papers define ξ ~ N(0, σ²) drawn anew for every weight at every step (Elsayed & Mahmood,
ICLR 2024; Dohare et al., Nature 2024). `GaussianNoise` draws exactly that with PyTorch's
generators, in as few calls as possible: one `normal_` into one flat buffer per step, read
through views shaped like the parameters (made once: slicing a flat tensor into views at every
step costs microseconds per view at batch size 1).

A cheaper source that re-used normals across steps (a rolling table read through random windows)
was removed: its noise summed over 32 or 128 steps had up to 1.5x the variance of independent
noise, so it moved the weights further than the formula says (tests/test_noise_statistics.py
checks every source against K·σ²).
"""

from __future__ import annotations

import torch
from torch import Tensor


def flat_views(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Views of the 1-D `flat`, one after another, shaped like the tensors in `like`."""
    return [part.view(t.shape) for part, t in zip(flat.split([t.numel() for t in like]), like)]


class GaussianNoise:
    """Standard normal noise shaped like `like` (a list of tensors), a fresh draw per `sample()`.

    `buffer` is the flat tensor the draws land in and `views` its per-tensor views; between two
    draws a caller may use them as scratch space of the parameters' shapes (`lifelong.optim.UPGD`
    does)."""

    def __init__(self, like: list[Tensor], generator: torch.Generator) -> None:
        device = like[0].device if like else torch.device("cpu")
        dtype = like[0].dtype if like else torch.float32
        self.generator = generator
        self.buffer = torch.empty(sum(t.numel() for t in like), device=device, dtype=dtype)
        self.views = flat_views(self.buffer, like)

    def sample(self) -> list[Tensor]:
        """i.i.d. N(0, 1) noise like the tensors given, one generator call; valid until the next
        call (the same tensors are refilled)."""
        self.buffer.normal_(generator=self.generator)
        return self.views
