"""lifelong.functional.cbp against continual backprop's formulas (Dohare et al., Nature 2024)
recomputed in float64 on tiny networks: running means and utilities (both kinds, batch 1 and
larger, Linear and Conv2d units), the fractional replacement counter, the choice of units and
their re-initialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lifelong.functional import cbp as F
from lifelong.models.introspection import hidden_units


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def conv_net() -> nn.Sequential:
    """Conv→Conv, Conv→(flatten)→Linear and Linear→Linear pairs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 2))


def feature_shape(hidden, batch: int) -> tuple[int, ...]:
    """The next layer's input for `batch` samples (8×8 inputs to the conv net)."""
    if isinstance(hidden.next, nn.Conv2d):
        return (batch, hidden.units, 6, 6)
    return (batch, hidden.next.in_features)


@pytest.mark.parametrize("kind", ["contribution", "adaptable"])
@pytest.mark.parametrize("net,batch", [(mlp, 1), (mlp, 3), (conv_net, 1), (conv_net, 2)])
def test_statistics_follow_the_formula(kind, net, batch) -> None:
    """f ← ηf + (1 − η) mean h, u ← ηu + (1 − η)·|h|·Σ|w_out| (contribution) or
    |h − f̂|·Σ|w_out| / Σ|w_in| (adaptable), f̂ = f / (1 − η^age), over 5 steps in which the
    weights change; units start at different ages."""
    eta = 0.8
    model = net()
    layers = hidden_units(model, "cbp")
    state = F.new_state([h.units for h in layers], layers[0].layer.weight)
    start = [torch.arange(h.units) % 3 for h in layers]  # ages 0, 1, 2, 0, ...
    F.set_ages(state, start, maturity=100, on_device=kind == "adaptable")
    work = F.Workspace(layers, layers[0].layer.weight, adaptable=kind == "adaptable")
    generator = torch.Generator().manual_seed(1)
    f = [np.zeros(h.units) for h in layers]
    u = [np.zeros(h.units) for h in layers]
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
        features = [torch.randn(feature_shape(h, batch), generator=generator) for h in layers]
        state.step += 1
        F.update_statistics_(state, work, features, eta, contribution=kind == "contribution")
        for i, (h, hidden) in enumerate(zip(features, layers)):
            units = hidden.units
            x = h.double().numpy().reshape(h.shape[0], units, -1)  # (samples, units, positions)
            w_out = hidden.next.weight.detach().double().numpy()
            w_out = np.abs(w_out.reshape(w_out.shape[0], units, -1)).sum((0, 2))
            w_in = np.abs(hidden.layer.weight.detach().double().numpy().reshape(units, -1)).sum(1)
            age = start[i].double().numpy() + step
            f[i] = eta * f[i] + (1 - eta) * x.mean((0, 2))
            f_hat = f[i] / (1 - eta ** age)
            if kind == "contribution":
                instant = np.abs(x).mean((0, 2)) * w_out
            else:
                instant = np.abs(x - f_hat[None, :, None]).mean((0, 2)) * w_out / w_in
            u[i] = eta * u[i] + (1 - eta) * instant
        for i in range(len(layers)):
            offset = state.offset(i)
            got_u = state.utility[offset:offset + layers[i].units].double().numpy()
            got_f = state.mean[offset:offset + layers[i].units].double().numpy()
            np.testing.assert_allclose(got_u, u[i], rtol=2e-5, atol=1e-7)
            np.testing.assert_allclose(got_f, f[i], rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("rate,expected", [
    (0.05, [0, 0, 0, 1, 0, 0, 1, 0, 0, 1]),  # 0.3 a step: 0.3, 0.6, 0.9, 1.2 → 1, 0.2 kept
    (0.25, [1, 2, 1, 2, 1, 2, 1, 2, 1, 2]),  # 1.5 a step
])
def test_the_fractional_counter_owes_floor_of_rate_times_eligible(rate, expected) -> None:
    state = F.new_state([6], torch.zeros(1))
    F.set_ages(state, [torch.full((6,), 5)], maturity=3, on_device=False)
    owed = []
    for _ in range(10):
        state.step += 1
        owed.append(F.owed(state, 0, rate, maturity=3))
    assert owed == expected


def test_units_join_the_eligible_count_when_they_mature() -> None:
    state = F.new_state([4], torch.zeros(1))
    F.set_ages(state, [torch.tensor([0, 1, 2, 9])], maturity=2, on_device=False)
    eligible = []
    for _ in range(4):
        state.step += 1
        F.owed(state, 0, 0.0, maturity=2)
        eligible.append(state.eligible[0])
    assert eligible == [2, 3, 4, 4]  # ages > 2: {2→3, 9}, then 1→3, then 0→3


def test_lowest_bias_corrected_utility_among_the_eligible() -> None:
    """û = u / (1 − η^age): a young unit's small u is inflated; immature units never count."""
    state = F.new_state([5], torch.zeros(1))
    F.set_ages(state, [torch.tensor([1, 3, 50, 50, 50])], maturity=2, on_device=False)
    state.utility.copy_(torch.tensor([0.0, 0.2, 0.5, 0.3, 0.3]))
    eta = 0.9
    corrected = [0.2 / (1 - eta ** 3), 0.5 / (1 - eta ** 50), 0.3 / (1 - eta ** 50)]
    assert corrected[0] > corrected[1] > corrected[2]
    assert F.lowest_utility(state, 0, 2, eta, maturity=2).tolist() == [3, 4]  # tie: lower index
    assert F.lowest_utility(state, 0, 3, eta, maturity=2).tolist() == [3, 4, 2]
    np.testing.assert_allclose(F.bias_corrections(state, 0, eta).numpy(),
                               1 - eta ** np.array([1, 3, 50, 50, 50]))


def test_init_bounds() -> None:
    weight = torch.empty(6, 64)
    assert F.init_bound(weight, "default") == pytest.approx(1 / 8)
    assert F.init_bound(weight, "kaiming") == pytest.approx(math.sqrt(6 / 64))
    assert F.init_bound(weight, "xavier") == pytest.approx(math.sqrt(6 / 70))


def test_reinitialise_replaces_the_units_and_keeps_the_output_in_expectation() -> None:
    """Units 1 and 3 of a Linear → BatchNorm1d → ReLU → Linear pair: the next bias takes
    Σ_k w_out[k, j]·f̂_j, fresh incoming weights U(±bound) from the generator, zero incoming
    bias and outgoing column, zero statistics and age, zeroed Adam moments of exactly those
    rows and columns, reset norm entries."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2)
        model[1].bias.uniform_(-1, 1)
        model[1].running_mean.uniform_(-1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    nn.functional.cross_entropy(model(torch.randn(6, 4)), torch.tensor([0, 1, 2, 0, 1, 2])
                                ).backward()
    optimizer.step()
    (hidden,) = hidden_units(model, "cbp")
    state = F.new_state([5], model[0].weight)
    F.set_ages(state, [torch.tensor([10, 20, 30, 40, 50])], maturity=5, on_device=False)
    state.mean.copy_(torch.tensor([0.1, 0.4, -0.2, 0.3, 0.5]))
    state.utility.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    eta, index = 0.9, torch.tensor([1, 3])
    w_out = model[3].weight.detach().double().clone()
    f_hat = torch.tensor([0.4 / (1 - eta ** 20), 0.3 / (1 - eta ** 40)], dtype=torch.float64)
    expected_bias = model[3].bias.detach().double() + w_out[:, [1, 3]] @ f_hat
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    moments = {p: {k: v.clone() for k, v in optimizer.state[p].items()}
               for p in model.parameters()}
    F.reinitialise_(state, 0, hidden, index, eta, bound=0.5,
                    generator=torch.Generator().manual_seed(7), optimizer=optimizer)
    torch.testing.assert_close(model[3].bias.detach().double(), expected_bias)
    fresh = torch.empty(2, 4).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(model[0].weight[index], fresh)
    assert torch.equal(model[0].weight[[0, 2, 4]], before["0.weight"][[0, 2, 4]])
    assert torch.all(model[0].bias[index] == 0) and torch.all(model[3].weight[:, index] == 0)
    assert torch.equal(model[3].weight[:, [0, 2, 4]], before["3.weight"][:, [0, 2, 4]])
    assert model[1].weight[index].tolist() == [1, 1] and model[1].bias[index].tolist() == [0, 0]
    assert model[1].running_mean[index].tolist() == [0, 0]
    assert model[1].running_var[index].tolist() == [1, 1]
    assert state.utility.tolist() == [1.0, 0.0, 3.0, 0.0, 5.0]
    assert state.mean[index].tolist() == [0, 0]
    assert F.ages(state)[0].tolist() == [10, 0, 30, 0, 50]
    assert state.replaced == [2] and state.eligible == [3]
    for p in model.parameters():
        for key, value in optimizer.state[p].items():
            if key == "step":
                continue
            old = moments[p][key]
            if p is model[3].weight:  # the columns reading the units
                touched, kept = value[:, index], (value[:, [0, 2, 4]], old[:, [0, 2, 4]])
            elif p is model[3].bias:  # keeps its state
                touched, kept = None, (value, old)
            else:  # rows of the units
                touched, kept = value[index], (value[[0, 2, 4]], old[[0, 2, 4]])
            assert touched is None or torch.all(touched == 0)
            assert torch.equal(*kept)
