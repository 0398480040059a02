"""Plasticity diagnostics against direct computations of their definitions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lifelong.core.batch import Batch
from lifelong.metrics.diagnostics import (
    dead_fraction,
    diagnose,
    effective_rank,
    gradient_magnitude,
    hidden_representations,
    plasticity,
    probe_loss,
    stable_rank,
    weight_magnitude,
)
from lifelong.scenarios import split_by_classes


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(),
                         nn.Linear(4, 3))


def test_hidden_representations_are_the_post_activation_features() -> None:
    model = mlp()
    x = torch.randn(9, 6)
    features = hidden_representations(model, x, batch_size=4)
    h1 = torch.relu(model[1](x))
    h2 = torch.relu(model[3](h1))
    assert list(features) == ["3", "5"]
    torch.testing.assert_close(features["3"], h1)
    torch.testing.assert_close(features["5"], h2)


def test_dead_units_are_zero_on_every_probe_sample() -> None:
    features = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    assert dead_fraction(features) == pytest.approx(0.5)  # units 0 and 3
    conv = torch.zeros(2, 3, 2, 2)
    conv[1, 0, 1, 1] = 1.0  # channel 0 fires once; channels 1 and 2 never
    assert dead_fraction(conv) == pytest.approx(2 / 3)


def test_effective_and_stable_rank_follow_their_formulas() -> None:
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(50, 8)) @ np.diag([5, 4, 3, 1, 0.5, 0.1, 0.01, 0.0])
    sigma = np.linalg.svd(phi, compute_uv=False)
    p = sigma / sigma.sum()
    p = p[p > 0]
    expected_effective = np.exp(-(p * np.log(p)).sum())
    expected_stable = int(np.argmax(np.cumsum(sigma) / sigma.sum() >= 0.99)) + 1
    features = torch.from_numpy(phi).float()
    assert effective_rank(features) == pytest.approx(expected_effective, rel=1e-4)
    assert stable_rank(features) == expected_stable
    assert effective_rank(torch.zeros(5, 3)) == 0.0 and stable_rank(torch.zeros(5, 3)) == 0
    rank_one = torch.ones(10, 4)
    assert effective_rank(rank_one) == pytest.approx(1.0) and stable_rank(rank_one) == 1


def test_weight_and_gradient_magnitude() -> None:
    model = mlp()
    weights = [model[1].weight, model[3].weight, model[5].weight]
    expected = sum(float(w.detach().abs().sum()) for w in weights) / sum(w.numel() for w in weights)
    assert weight_magnitude(model) == pytest.approx(expected)
    probe = Batch(torch.randn(12, 6), torch.randint(0, 3, (12,)))
    loss = nn.functional.cross_entropy(model(probe.x), probe.y)
    grads = torch.autograd.grad(loss, weights)
    expected = sum(float(g.abs().sum()) for g in grads) / sum(w.numel() for w in weights)
    assert gradient_magnitude(model, probe_loss(), probe) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("regression", [False, True])
def test_plasticity_is_the_loss_drop_of_one_sgd_step_per_sample(regression: bool) -> None:
    model = mlp(1)
    if regression:
        model[5] = nn.Linear(4, 1)
    probe = Batch(torch.randn(7, 6), torch.randn(7, 1) if regression
                  else torch.randint(0, 3, (7,)))
    lr = 0.5
    expected = []
    for i in range(len(probe)):
        x, y = probe.x[i:i + 1], probe.y[i:i + 1]
        loss_fn = (lambda o, t: ((o - t) ** 2).sum(1).mean()) if regression else \
            nn.functional.cross_entropy
        before = loss_fn(model(x), y)
        copy_ = copy.deepcopy(model)
        optimizer = torch.optim.SGD(copy_.parameters(), lr=lr)
        loss_fn(copy_(x), y).backward()
        optimizer.step()
        after = loss_fn(copy_(x), y)
        expected.append(max(1 - after.item() / max(before.item(), 1e-8), 0.0))
    snapshot = [p.clone() for p in model.parameters()]
    value = plasticity(model, probe_loss(), probe, lr, chunk=3)
    assert value == pytest.approx(float(np.mean(expected)), rel=1e-4, abs=1e-6)
    for a, b in zip(snapshot, model.parameters()):
        assert torch.equal(a, b)  # the model is left unchanged


def test_diagnose_with_a_task_incremental_readout() -> None:
    x = torch.randn(40, 6)
    y = torch.arange(40) % 4
    scenario = split_by_classes(x, y, x, y, classes_per_task=2, scenario="task", name="t")
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, scenario.num_outputs))
    probe = scenario.tasks[1].train_data()
    result = diagnose(model, probe, lr=0.1, readout=scenario.readout)
    selected = scenario.readout.select(model(probe.x), probe.task_ids)
    assert selected.shape[1] == 2  # the loss only sees task 1's head
    assert 0.0 <= result["plasticity"] <= 1.0
    assert result["dead_units_per_layer"] == [result["dead_units"]]
    assert result["stable_rank"] <= 5
