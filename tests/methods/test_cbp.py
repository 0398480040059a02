"""CBP against a numpy re-computation of its recurrences, and its replacement rules."""

from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lifelong.methods.cbp  # noqa: F401  (registers the method)
from lifelong.errors import ConfigError
from lifelong.functional.cbp import init_bound
from lifelong.methods.cbp import CBP
from lifelong.models import MLP
from lifelong.models.introspection import hidden_units

torch.set_num_threads(1)


def conv_net(seed: int = 0) -> nn.Module:
    """Conv→Conv, Conv→(flatten)→Linear and Linear→Linear pairs; input (B, 2, 8, 8)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Conv2d(4, 5, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(80, 6), nn.Tanh(), nn.Linear(6, 3))


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))


def inputs(model: nn.Module, batch: int, generator: torch.Generator) -> torch.Tensor:
    if isinstance(model[0], nn.Conv2d):
        return torch.randn(batch, 2, 8, 8, generator=generator)
    return torch.randn(batch, model[0].in_features, generator=generator)


def train_step(model, optimizer, x, y) -> None:
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


class Recorder:
    """The inputs of the weight layers after the first, in training passes (the test's own
    hooks, independent of the method's)."""

    def __init__(self, model: nn.Module) -> None:
        self.features: list[np.ndarray | None] = []
        self.handles = []
        for i, layer in enumerate(weight_layers(model)[1:]):
            self.features.append(None)
            self.handles.append(layer.register_forward_pre_hook(self._hook(i)))

    def _hook(self, i):
        def hook(module, args):
            if module.training:
                self.features[i] = args[0].detach().double().numpy().copy()
        return hook


def unit_view(h: np.ndarray, units: int, next_layer: nn.Module) -> np.ndarray:
    """(samples, units, positions) from the next layer's input."""
    if isinstance(next_layer, nn.Linear) and h.shape[-1] == units:
        return h.reshape(-1, units, 1)
    return h.reshape(h.shape[0], units, -1)  # conv input (B, C, H, W) or flattened (B, C·S)


def numpy_statistics(records, eta: float, kind: str):
    """u, f, age per layer from the recorded features and post-step weights."""
    state = None
    for step in records:
        if state is None:
            state = [[np.zeros(h.shape[1]), np.zeros(h.shape[1]), 0] for h, _, _ in step]
        for s, (h, w_out, w_in) in zip(state, step):
            u, f, age = s
            age += 1
            f = eta * f + (1 - eta) * h.mean((0, 2))
            f_hat = f / (1 - eta ** age)
            out = np.abs(w_out).sum((0, 2))
            if kind == "contribution":
                instant = np.abs(h).mean((0, 2)) * out
            else:
                instant = np.abs(h - f_hat[None, :, None]).mean((0, 2)) * out \
                    / np.abs(w_in).sum(1)
            u = eta * u + (1 - eta) * instant
            s[:] = [u, f, age]
    return state


@pytest.mark.parametrize("kind", ["contribution", "adaptable"])
@pytest.mark.parametrize("net,batch", [(mlp, 1), (mlp, 4), (conv_net, 1), (conv_net, 3)])
def test_statistics_follow_the_recurrence(kind, net, batch) -> None:
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    eta = 0.9
    method = CBP(decay_rate=eta, utility=kind, replacement_rate=0.0).attach(
        model, optimizer, seed=0)
    recorder = Recorder(model)
    layers = weight_layers(model)
    generator = torch.Generator().manual_seed(1)
    records = []
    for _ in range(6):
        x = inputs(model, batch, generator)
        y = torch.randint(0, 3, (batch,), generator=generator)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        model.eval()
        model(inputs(model, 2, generator))  # an evaluation pass in between is not recorded
        model.train()
        loss.backward()
        optimizer.step()
        step = []
        for h, layer, following in zip(recorder.features, layers, layers[1:]):
            units = layer.weight.shape[0]
            w_out = following.weight.detach().double().numpy()
            w_in = layer.weight.detach().double().numpy().reshape(units, -1)
            step.append((unit_view(h, units, following), w_out.reshape(w_out.shape[0], units, -1),
                         w_in))
        records.append(step)
    expected = numpy_statistics(records, eta, kind)
    assert len(method.utility) == len(expected) == len(layers) - 1
    for (u, f, age), got_u, got_f, got_age, corrected in zip(
            expected, method.utility, method.mean_activation, method.ages,
            [method.corrected_utility(i) for i in range(len(expected))]):
        np.testing.assert_allclose(got_u.double().numpy(), u, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got_f.double().numpy(), f, rtol=1e-4, atol=1e-7)
        assert got_age.tolist() == [age] * len(u)
        np.testing.assert_allclose(corrected.double().numpy(), u / (1 - eta ** age), rtol=1e-4,
                                   atol=1e-7)


def test_layer_discovery() -> None:
    found = hidden_units(MLP((2, 4), (16, 12), 5, dropout=0.1), "cbp")
    assert [h.units for h in found] == [16, 12]
    assert [init_bound(h.layer.weight, "default") for h in found] == pytest.approx(
        [1 / math.sqrt(8), 1 / math.sqrt(16)])
    found = hidden_units(conv_net(), "cbp")
    assert [(h.units, h.units_last) for h in found] == [(4, False), (5, False), (6, True)]


def blob_data(generator, batch=4, features=4):
    return torch.randn(batch, features, generator=generator), torch.randint(
        0, 3, (batch,), generator=generator)


def test_replaces_the_eligible_unit_with_lowest_corrected_utility() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    method = CBP(decay_rate=0.99, maturity_threshold=10, replacement_rate=0.2).attach(
        model, optimizer, seed=0)
    # unit 0: the lowest u but immature; unit 1: low u, young, so its û is high (u / 0.19);
    # unit 3: u above unit 1's but old, so the lowest û among the eligible units
    method.utility = [torch.tensor([0.0, 0.2, 10.0, 0.5, 10.0, 10.0])]
    method.ages = [torch.tensor([2, 20, 400, 400, 400, 400])]
    before = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    train_step(model, optimizer, *blob_data(generator))  # 5 eligible · 0.2 = one replacement
    assert method.replaced == [1]
    assert method.ages[0].tolist() == [3, 21, 401, 0, 401, 401]
    assert method.utility[0][3] == 0 and method.mean_activation[0][3] == 0
    assert not torch.equal(model[0].weight[3], before[0][3])
    assert all(float(u) > 0 for j, u in enumerate(method.utility[0]) if j not in (0, 3))
    assert method.report(0, lambda m: []) == {"replaced_units": 1.0}


@pytest.mark.parametrize("rate", ["0.05", "0.1", "0.25", "0.5"])
def test_fractional_counter(rate) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    # maturity 0: every unit is eligible one step after its birth, so n_eligible stays 6
    method = CBP(maturity_threshold=0, replacement_rate=float(rate)).attach(model, optimizer,
                                                                          seed=0)
    generator = torch.Generator().manual_seed(0)
    counts = []
    for _ in range(20):
        done = method.replaced[0]
        train_step(model, optimizer, *blob_data(generator))
        counts.append(method.replaced[0] - done)
    per_step = Fraction(rate) * 6  # exact: units owed after t steps = floor(t · ρ · n)
    expected = [math.floor(per_step * t) - math.floor(per_step * (t - 1)) for t in range(1, 21)]
    assert counts == expected
    if rate == "0.05":  # 0.3 per step: 0.3, 0.6, 0.9, 1.2 → one unit, 0.2 carried, ...
        assert [t + 1 for t, c in enumerate(counts) if c] == [4, 7, 10, 14, 17, 20]
    if rate == "0.25":  # 1.5 per step
        assert counts[:4] == [1, 2, 1, 2]


def test_no_replacement_before_maturity_and_before_any_forward() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    method = CBP(maturity_threshold=5, replacement_rate=1.0).attach(model, optimizer, seed=0)
    optimizer.step()  # no training forward pass yet: nothing to measure
    assert method.ages[0].tolist() == [0] * 6
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        train_step(model, optimizer, *blob_data(generator))
    assert method.replaced == [0]  # age 5 is not > m = 5
    train_step(model, optimizer, *blob_data(generator))
    assert method.replaced == [6]  # ρ = 1: every eligible unit


def force_one(method: CBP, layer: int, unit: int) -> None:
    """Make `unit` of hidden layer `layer` the only unit anywhere that can become eligible at the
    next step: every other unit's age is set to 0 (its own age, and so its bias-corrected
    statistics, are kept)."""
    ages = method.ages
    keep = int(ages[layer][unit])
    for a in ages:
        a.zero_()
    ages[layer][unit] = keep
    method.ages = ages


@pytest.mark.parametrize("opt", ["sgd", "adam", "amsgrad"])
def test_replacement_resets_weights_optimizer_state_and_norm(opt) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1, 1)
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        keys = ["momentum_buffer"]
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, amsgrad=opt == "amsgrad")
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if opt == "amsgrad" else [])
    method = CBP(maturity_threshold=3, replacement_rate=1.0).attach(model, optimizer, seed=0)
    generator = torch.Generator().manual_seed(0)
    data = lambda: blob_data(generator, batch=8, features=64)  # noqa: E731
    for _ in range(3):
        train_step(model, optimizer, *data())
    force_one(method, 0, 2)
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, optimizer, *data())
    assert method.replaced == [1]
    w_in, b_in, bn_w, bn_b, w_out, b_out = model.parameters()
    bound = 1 / math.sqrt(64)
    assert not torch.allclose(w_in[2], before[0][2], atol=1e-3)
    assert w_in[2].abs().max() <= bound and w_in[2].abs().max() > 0.8 * bound
    assert b_in[2] == 0 and torch.all(w_out[:, 2] == 0)
    assert bn_w[2] == 1 and bn_b[2] == 0
    assert model[1].running_mean[2] == 0 and model[1].running_var[2] == 1
    for p, rows in ((w_in, True), (b_in, True), (bn_w, True), (bn_b, True), (w_out, False)):
        for key in keys:
            state = optimizer.state[p][key]
            touched = state[2] if rows else state[:, 2]
            assert torch.all(touched == 0), (key, p.shape)
            others = torch.cat([state[:2], state[3:]]) if rows else state[:, [0, 1, 3, 4, 5]]
            assert others.abs().sum() > 0
    for key in keys:  # the next layer's bias keeps its state
        assert optimizer.state[b_out][key].abs().sum() > 0
    # the other units keep their BatchNorm entries
    assert torch.all(bn_w[[0, 1, 3, 4, 5]] != 1)


@pytest.mark.parametrize("init,bound", [("default", 1 / 8), ("kaiming", math.sqrt(6 / 64)),
                                        ("xavier", math.sqrt(6 / 70))])
def test_init_distribution_and_generator(init, bound) -> None:
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        method = CBP(maturity_threshold=0, replacement_rate=1.0, init=init).attach(
            model, optimizer, seed=5)
        generator = torch.Generator().manual_seed(0)
        train_step(model, optimizer, *blob_data(generator, features=64))
        assert method.replaced == [6]
        draws.append(model[0].weight.detach().clone())
        assert torch.all(model[0].bias == 0)
    assert torch.equal(draws[0], draws[1])  # drawn with the method's generator
    assert draws[0].abs().max() <= bound and draws[0].abs().max() > 0.9 * bound


def positive_net(model: nn.Module, constant: tuple[int, int], value: float = 0.7) -> None:
    """Positive weights (every unit active on positive inputs), one constant unit: zero
    incoming weights, bias `value`, small outgoing weights (so it has the lowest utility)."""
    layers = weight_layers(model)
    layer, unit = layers[constant[0]], constant[1]
    with torch.no_grad():
        for w in layers:
            w.weight.abs_().add_(0.05)
            w.bias.abs_().add_(0.1)
        layer.weight[unit] = 0
        layer.bias[unit] = value
        following = layers[constant[0] + 1].weight
        following.view(following.shape[0], layer.weight.shape[0], -1)[:, unit] *= 0.05


@pytest.mark.parametrize("net,layer,unit", [(mlp, 0, 3), (mlp, 1, 2), (conv_net, 0, 1),
                                            (conv_net, 1, 4), (conv_net, 2, 0)])
def test_bias_correction_keeps_the_output(net, layer, unit) -> None:
    """A unit with constant activation c is the layer's lowest-utility unit; replacing it moves
    c · Σ w_out into the next bias, so the network's output does not change (the reference code
    adds nothing there, and its output would move by c · Σ w_out)."""
    model = net()
    positive_net(model, (layer, unit))
    units = weight_layers(model)[layer].weight.shape[0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay put
    method = CBP(maturity_threshold=9, replacement_rate=1 / units, decay_rate=0.9).attach(
        model, optimizer, seed=0)
    generator = torch.Generator().manual_seed(0)
    batch = lambda: inputs(model, 3, generator).abs()  # noqa: E731
    for _ in range(9):
        train_step(model, optimizer, batch(), torch.zeros(3, dtype=torch.long))
    corrected = method.corrected_utility(layer)
    assert int(corrected.argmin()) == unit
    ages = method.ages
    for i, a in enumerate(ages):  # only the chosen layer matures at the next step
        if i != layer:
            a.zero_()
    method.ages = ages
    probe = inputs(model, 5, generator).abs()
    following = weight_layers(model)[layer + 1]
    outgoing = following.weight.view(following.weight.shape[0], units, -1)
    with torch.no_grad():
        expected = model(probe)
        modules = list(model)
        activation = modules[modules.index(weight_layers(model)[layer]) + 1]
        constant = float(activation(torch.tensor(0.7)))  # the unit's activation
        removed = outgoing[:, unit].sum(1) * constant  # Σ over the kernel / flattened columns
    bias_before = following.bias.detach().clone()
    kept = outgoing[:, [j for j in range(units) if j != unit]].detach().clone()
    train_step(model, optimizer, batch(), torch.zeros(3, dtype=torch.long))
    replaced = [0] * len(ages)
    replaced[layer] = 1  # ρ · n = 1: one unit, the one with the lowest utility
    assert method.replaced == replaced
    assert torch.all(outgoing[:, unit] == 0)  # its column / kernels / flattened columns
    assert torch.equal(outgoing[:, [j for j in range(units) if j != unit]], kept)
    with torch.no_grad():
        torch.testing.assert_close(model(probe), expected, rtol=1e-5, atol=1e-5)
    change = following.bias.detach() - bias_before
    assert change.abs().min() > 1e-4  # a real correction, not the reference's no-op
    torch.testing.assert_close(change, removed, rtol=1e-5, atol=1e-6)


def test_bias_correction_of_a_constant_unit_alone() -> None:
    """Only the constant unit is eligible: the output stays, the other units are untouched."""
    model = conv_net()
    positive_net(model, (1, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    method = CBP(maturity_threshold=4, replacement_rate=1.0, decay_rate=0.8).attach(
        model, optimizer, seed=0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        train_step(model, optimizer, inputs(model, 2, generator).abs(),
                   torch.zeros(2, dtype=torch.long))
    force_one(method, 1, 3)
    probe = inputs(model, 4, generator).abs()
    with torch.no_grad():
        expected = model(probe)
    w_next = model[5].weight.detach().clone()
    train_step(model, optimizer, inputs(model, 2, generator).abs(),
               torch.zeros(2, dtype=torch.long))
    assert method.replaced == [0, 1, 0]
    conv = model[2]
    assert torch.all(model[5].weight[:, 48:64] == 0) and conv.bias[3] == 0
    assert torch.equal(model[5].weight[:, :48], w_next[:, :48])
    assert conv.weight[3].abs().max() <= 1 / math.sqrt(36)
    with torch.no_grad():
        torch.testing.assert_close(model(probe), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model,message", [
    (nn.Sequential(nn.Linear(4, 3)), "at least a hidden layer"),
    (nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(5, 3)), "6 units do not feed 5"),
    (nn.Sequential(nn.Linear(4, 6), nn.Conv2d(6, 3, 1)), "Conv2d after a Linear"),
    (nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(10, 3)), "multiple of 4"),
    (nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 3)),
     "4 units do not feed 3"),
    (nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(5), nn.Linear(6, 3)), "BatchNorm1d\\(5\\)"),
    (nn.Sequential(nn.Conv2d(2, 4, 3), nn.LayerNorm(6), nn.Flatten(), nn.Linear(144, 3)),
     "LayerNorm"),
    (nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 6), nn.Linear(6, 3)), "Embedding"),
    (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 3)), "grouped"),
])
def test_bad_models_are_refused(model, message) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=message) as error:
        CBP().attach(model, optimizer)
    if "units do not feed" in message:
        assert "plain chain" in str(error.value)


@pytest.mark.parametrize("key,value,message", [
    ("replacement_rate", 1.5, "replacement_rate"), ("replacement_rate", -0.1, "replacement_rate"),
    ("decay_rate", 1.0, "< 1"), ("decay_rate", -0.5, "decay_rate"),
    ("maturity_threshold", -1, "maturity_threshold"), ("utility", "gradient", "contribution"),
    ("init", "orthogonal", "xavier"),
])
def test_bad_config_is_refused(key, value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        CBP(**{key: value})


def test_needs_the_optimizer() -> None:
    with pytest.raises(ConfigError, match="optimizer"):
        CBP().attach(mlp())


@pytest.mark.parametrize("kind", ["contribution", "adaptable"])
def test_state_dict_round_trip_continues_identically(kind) -> None:
    def setup(seed):
        model = conv_net(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        return model, optimizer

    model, optimizer = setup(0)
    method = CBP(maturity_threshold=2, replacement_rate=0.3, utility=kind).attach(
        model, optimizer, seed=0)
    generator = torch.Generator().manual_seed(0)
    batches = [(inputs(model, 3, generator), torch.randint(0, 3, (3,), generator=generator))
               for _ in range(14)]
    for x, y in batches[:7]:
        train_step(model, optimizer, x, y)
    assert sum(method.replaced) > 0
    buffer = io.BytesIO()
    torch.save({"method": method.state_dict(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    model2, optimizer2 = setup(1)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    method2 = CBP(utility=kind).attach(model2, optimizer2, seed=99)
    method2.load_state_dict(saved["method"])
    for x, y in batches[7:]:
        train_step(model, optimizer, x, y)
        train_step(model2, optimizer2, x, y)
    assert method2.replaced == method.replaced and sum(method.replaced) > sum(
        saved["method"]["replaced"])
    for a, b in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(method.utility + method.ages, method2.utility + method2.ages):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert method.counters == method2.counters
