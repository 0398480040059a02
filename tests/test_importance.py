"""The |tanh(z-score)| importance SPG and DAS share, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.functional.importance import tanh_zscore


def test_tanh_zscore_uses_bessels_correction_as_the_authors_code() -> None:
    g = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    want = np.abs(np.tanh((g.numpy() - g.numpy().mean()) / g.numpy().std(ddof=1)))
    got = tanh_zscore(g)
    assert got.shape == g.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    population = np.abs(np.tanh((g.numpy() - g.numpy().mean()) / g.numpy().std()))
    assert np.abs(got.numpy() - population).max() > 1e-2  # 4 entries: the convention shows


@pytest.mark.parametrize("values", [torch.zeros(5), torch.full((3, 2), 7.0), torch.ones(1),
                                    torch.tensor([1.0, float("inf")])])
def test_tanh_zscore_is_zero_where_the_zscore_is_undefined(values: torch.Tensor) -> None:
    assert torch.equal(tanh_zscore(values), torch.zeros_like(values))
