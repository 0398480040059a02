"""Importance from gradients: |tanh(z-score)|, the soft mask of SPG and DAS.

SPG (Konishi et al., ICML 2023) and DAS (Ke et al., ICLR 2023) both turn accumulated gradients
into an importance in [0, 1): standardise them within a group (SPG: one parameter tensor; DAS:
one layer's units of one kind), squash with tanh and take the absolute value, so that entries far
from the group's mean, on either side, count as important.

The standard deviation uses Bessel's correction (n − 1), as both authors' code does: torch's
`Tensor.std()` default in SPG's `standardize` (github.com/UIC-Liu-Lab/spg,
approaches/spg/spg.py, line 46: `(x - x.mean()) / x.std()`) and in DAS's `impt_norm`
(github.com/UIC-Liu-Lab/ContinualLM, networks/baselines/softmask.py, lines 38-39:
`(impt[layer] - impt[layer].mean()) / impt[layer].std()`). The papers write "standardise"
without saying which; the correction matters only for small groups (a bias of 4 entries: 13%).
"""

from __future__ import annotations

import torch
from torch import Tensor


def tanh_zscore(values: Tensor) -> Tensor:
    """|tanh((v − mean v) / std v)| over all entries of `values`, std with Bessel's correction
    (n − 1). Zeros where the z-score is undefined: fewer than two entries, all entries equal, or
    a non-finite std (SPG's reference code returns tanh(0) = 0 for an all-zero tensor too)."""
    if values.numel() < 2:
        return torch.zeros_like(values)
    std, mean = torch.std_mean(values)
    usable = (std > 0) & torch.isfinite(std)  # on the device: no host sync per tensor
    return torch.where(usable, torch.tanh((values - mean) / std).abs(), 0.0)


__all__ = ["tanh_zscore"]
