"""UPGD against a numpy re-implementation of its update, and the diagonal Hessian of its
second-order utility against autograd's exact Hessian and a numpy HesScale recursion."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario
from test_conformance import hooks

import lifelong.methods.upgd  # noqa: F401  (registers the method)
from lifelong.core import Batch
from lifelong.core.readout import Readout
from lifelong.errors import ConfigError
from lifelong.functional.hessian import LinearChainRecorder, output_curvature
from lifelong.methods.upgd import UPGD
from lifelong.models import MLP
from lifelong.training.loop import train_task


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def batches(count: int, size: int = 6, seed: int = 0) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    return [Batch(torch.randn(size, 8, generator=generator),
                  torch.randint(0, 4, (size,), generator=generator)) for _ in range(count)]


def gradients(model: torch.nn.Module, batch: Batch) -> list[np.ndarray]:
    model.zero_grad()
    batch.loss(model(batch.x)).backward()
    return [p.grad.double().numpy().copy() for p in model.parameters()]


def reference_run(data: list[Batch], *, lr: float, beta: float = 0.999, sigma: float = 0.0,
                  weight_decay: float = 0.0, protect: bool = True, scaling: str = "global",
                  seed: int = 0) -> list[np.ndarray]:
    """The paper's update in float64, written out: ū ← βū + (1−β)(−g⊙θ), û = ū/(1−βᵗ),
    M = max û (all tensors, or per tensor), s = sigmoid(û/M) (s = 0 if M ≤ 0), and
    θ ← (1 − lr·wd)θ − lr(g + ξ)(1 − s)  (protecting) or  − lr(g + ξ(1 − s))."""
    model = tiny_mlp()
    params = list(model.parameters())
    theta = [p.detach().double().numpy().copy() for p in params]
    trace = [np.zeros_like(t) for t in theta]
    noise = torch.Generator().manual_seed(seed)  # UPGD draws ξ for all weights at once
    for t, batch in enumerate(data, start=1):
        with torch.no_grad():
            for p, value in zip(params, theta):
                p.copy_(torch.from_numpy(value))
        g = gradients(model, batch)
        trace = [beta * u + (1 - beta) * (-gi * th) for u, gi, th in zip(trace, g, theta)]
        corrected = [u / (1 - beta ** t) for u in trace]
        maxima = ([max(u.max() for u in corrected)] * len(corrected) if scaling == "global"
                  else [u.max() for u in corrected])
        s = [sigmoid(u / m) if m > 0 else np.zeros_like(u) for u, m in zip(corrected, maxima)]
        if sigma:
            flat = torch.empty(sum(th.size for th in theta)).normal_(0.0, sigma, generator=noise)
            xi = [part.double().numpy().reshape(th.shape)
                  for part, th in zip(flat.split([th.size for th in theta]), theta)]
        else:
            xi = [np.zeros_like(th) for th in theta]
        if protect:
            steps = [(gi + x) * (1 - si) for gi, x, si in zip(g, xi, s)]
        else:
            steps = [gi + x * (1 - si) for gi, x, si in zip(g, xi, s)]
        theta = [(1 - lr * weight_decay) * th - lr * st for th, st in zip(theta, steps)]
    return theta


# The two code paths of the step: M read on the host with one fused gate pass per tensor (CPU
# tensors), and the accelerator's path (M kept on the device), run here on the CPU.
PATHS = ("host", "device")


def on_path(method: UPGD, path: str) -> UPGD:
    """Make `method` take `path`."""
    assert method.host_scalars  # the default on the CPU
    method.host_scalars = path != "device"
    return method


def method_run(data: list[Batch], *, lr: float, path: str = "host", seed: int = 0,
               **config) -> tuple[list[np.ndarray], UPGD]:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    method = UPGD(**config).attach(model, optimizer, seed=seed)
    on_path(method, path)
    for batch in data:
        optimizer.zero_grad(set_to_none=True)
        batch.loss(model(batch.x)).backward()
        optimizer.step()
    return [p.detach().double().numpy() for p in model.parameters()], method


def assert_params_close(got: list[np.ndarray], want: list[np.ndarray], tol: float = 2e-6) -> None:
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# --- the update --------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("protect,sigma,scaling,weight_decay,beta", [
    (True, 0.0, "global", 0.0, 0.9),
    (True, 0.0, "local", 0.0, 0.9),
    (True, 0.0, "global", 0.5, 0.999),  # weight decay
    (True, 0.05, "global", 0.0, 0.9),  # the same noise, re-drawn
    (False, 0.05, "global", 0.0, 0.9),
    (False, 0.05, "local", 0.1, 0.0),  # β = 0: the utility is the last step's
])
def test_steps_equal_the_formula(path: str, protect: bool, sigma: float, scaling: str,
                                 weight_decay: float, beta: float) -> None:
    data = batches(6)
    config = dict(lr=0.2, sigma=sigma, protect=protect, scaling=scaling,
                  weight_decay=weight_decay, beta=beta)
    want = reference_run(data, **config)
    got, _ = method_run(data, path=path, lr=0.2, sigma=sigma, protect=protect, scaling=scaling,
                        weight_decay=weight_decay, beta_utility=beta)
    assert_params_close(got, want)


def test_many_steps_with_fast_decay_rescale_the_trace() -> None:
    """β = 0.5: the kept trace v = ū·β^−(t − origin) is rescaled about every 40 steps."""
    data = batches(100, size=3)
    want = reference_run(data, lr=0.05, beta=0.5)
    got, method = method_run(data, lr=0.05, beta_utility=0.5, sigma=0.0)
    assert method.utility_origin > 0
    assert_params_close(got, want, tol=1e-5)


def test_dead_weights_keep_their_gate_and_never_go_denormal() -> None:
    """Weights whose gradient stays 0 have a utility decaying like βᵗ: in float32 it would pass
    through denormal numbers (slow) near t = 800 for β = 0.9; the rescaled trace zeroes it first,
    with the same gates as the float64 trace."""
    model = torch.nn.Linear(4, 3)
    method = UPGD(beta_utility=0.9, sigma=0.0).attach(
        model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
    generator = torch.Generator().manual_seed(0)
    alive = torch.rand(3, 4, generator=generator) < 0.5
    trace = [torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)]
    for t in range(1, 1001):
        grads = [torch.randn(3, 4, generator=generator) * (alive if t > 1 else 1),
                 torch.randn(3, generator=generator)]
        trace = [0.9 * u - 0.1 * (g * p.detach()).double()
                 for u, g, p in zip(trace, grads, model.parameters())]
        set_grads(model, grads)
        method.transform_grads()
    v = method.utility
    assert method.utility_origin > 0
    assert bool(((v == 0) | (v.abs() >= torch.finfo(v.dtype).tiny)).all())
    assert bool((v[:12].view(3, 4)[~alive] == 0).all())
    top = max(float(u.max()) for u in trace)
    for got, u in zip(method.gate(), trace):
        torch.testing.assert_close(got.double(), torch.sigmoid(-u / top), rtol=1e-6, atol=1e-6)


def test_upgd_differs_from_sgd_and_protects_the_most_useful_weight() -> None:
    data = batches(3)
    got, method = method_run(data, lr=0.2, beta_utility=0.9, sigma=0.0)
    plain = reference_run(data, lr=0.2, beta=0.0, protect=False)  # σ = 0, unprotected: SGD
    assert not all(np.allclose(a, b) for a, b in zip(got, plain))
    gate = torch.cat([k.flatten() for k in method.gate()])
    utility = torch.cat([u.flatten() for u in method.utility_estimate()])
    assert gate[utility.argmax()] == pytest.approx(1 - 1 / (1 + np.exp(-1)), rel=1e-6)
    assert float(gate.min()) == pytest.approx(float(gate[utility.argmax()]))


def set_grads(model: torch.nn.Module, grads: list[torch.Tensor]) -> None:
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()


@pytest.mark.parametrize("path", PATHS)
def test_bias_correction_and_global_versus_local_maximum(path: str) -> None:
    """One step with β = 0.5: û = u, so s = sigmoid(u / max u). Taking M from the uncorrected
    ū = u/2 (the reference code) would give sigmoid(2u / max u)."""
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, -1.0], [0.5, 1.0, 2.0]]))
        model.bias.copy_(torch.tensor([1.0, -1.0]))
    grads = [torch.tensor([[-1.0, -0.5, 0.25], [2.0, -1.0, -0.1]]), torch.tensor([-0.2, 0.3])]
    u = [-(g * p.detach()) for g, p in zip(grads, model.parameters())]  # weight: max 1, bias .3
    for scaling, maxima in (("global", (1.0, 1.0)), ("local", (1.0, 0.3))):
        method = on_path(UPGD(beta_utility=0.5, sigma=0.0, scaling=scaling).attach(
            model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0), path)
        set_grads(model, grads)
        method.transform_grads()
        for p, g, ui, m in zip(model.parameters(), grads, u, maxima):
            torch.testing.assert_close(p.grad, g * (1 - torch.sigmoid(ui / m)))
            assert not torch.allclose(p.grad, g * (1 - torch.sigmoid(2 * ui / m)))
        for got, ui in zip(method.utility_estimate(), u):
            torch.testing.assert_close(got, ui)
        method.detach()


def test_utility_estimate_is_the_bias_corrected_trace() -> None:
    model = torch.nn.Linear(3, 2)
    method = UPGD(beta_utility=0.8, sigma=0.0).attach(
        model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
    generator = torch.Generator().manual_seed(3)
    trace = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
    for t in range(1, 6):
        grads = [torch.randn(p.shape, generator=generator) for p in model.parameters()]
        trace = [0.8 * u + 0.2 * -(g * p.detach()).double()
                 for u, g, p in zip(trace, grads, model.parameters())]
        set_grads(model, grads)
        method.transform_grads()
        for got, u in zip(method.utility_estimate(), trace):
            torch.testing.assert_close(got.double(), u / (1 - 0.8 ** t), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("path", PATHS)
def test_no_positive_utility_protects_nothing(path: str) -> None:
    """M ≤ 0: the guard sets s = 0, so the gradient passes unchanged; per tensor when local."""
    model = torch.nn.Linear(3, 2)
    weight_grad = model.weight.detach() * 0.7  # u = −0.7θ² ≤ 0 for every weight
    bias_grad = -model.bias.detach()  # u = θ² > 0 for the bias
    for scaling in ("global", "local"):
        method = on_path(UPGD(sigma=0.0, scaling=scaling).attach(
            model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0), path)
        set_grads(model, [torch.zeros(2, 3), torch.zeros(2)])  # u = 0 everywhere: M = 0
        method.transform_grads()
        assert torch.equal(model.weight.grad, torch.zeros(2, 3))
        set_grads(model, [weight_grad, torch.zeros(2)])  # all utilities ≤ 0
        method.transform_grads()
        torch.testing.assert_close(model.weight.grad, weight_grad, rtol=0, atol=0)
        set_grads(model, [weight_grad, bias_grad])
        method.transform_grads()
        if scaling == "local":  # the weight's own M ≤ 0: still unprotected
            torch.testing.assert_close(model.weight.grad, weight_grad, rtol=0, atol=0)
        else:  # M from the bias > 0: the weights get sigmoid(û/M) < ½ protection
            ratio = model.weight.grad / weight_grad
            assert bool(((ratio > 0.5) & (ratio < 1)).all())
        assert bool((model.bias.grad.abs() < bias_grad.abs()).all())
        method.detach()
    method = on_path(UPGD(sigma=0.0).attach(
        model, torch.optim.SGD(model.parameters(), lr=0.1)), path)
    set_grads(model, [weight_grad * float("nan"), bias_grad])  # M not finite
    method.transform_grads()
    torch.testing.assert_close(model.bias.grad, bias_grad, rtol=0, atol=0)


def test_noise_has_the_right_statistics() -> None:
    """With zero gradients the gate is 1, so the transformed gradient is the noise itself."""
    model = torch.nn.Linear(20, 10)
    method = UPGD(sigma=2.0).attach(
        model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
    draws = []
    for _ in range(300):
        set_grads(model, [torch.zeros(10, 20), torch.zeros(10)])
        method.transform_grads()
        draws.append(torch.cat([model.weight.grad.flatten(), model.bias.grad]))
    xi = torch.stack(draws).double()  # steps × weights
    assert abs(float(xi.mean())) < 0.03
    assert float(xi.std()) == pytest.approx(2.0, rel=0.02)
    lag = (xi[1:] * xi[:-1]).mean() / xi.var()  # a weight's successive draws
    assert abs(float(lag)) < 0.03
    assert all(len(row.unique()) == len(row) for row in xi[:20])  # distinct within a step


# --- second order: the Hessian diagonal --------------------------------------------------------
def exact_diagonal(model: torch.nn.Module, name: str, x: torch.Tensor, loss) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.named_parameters()}
    p0 = params[name]

    def f(flat: torch.Tensor) -> torch.Tensor:
        return loss(torch.func.functional_call(model, {**params, name: flat.view_as(p0)}, (x,)))

    return torch.autograd.functional.hessian(f, p0.reshape(-1)).diagonal().view_as(p0)


def recorded_curvature(model, batch: Batch, readout):
    recorder = LinearChainRecorder(model)
    handles = recorder.register()
    output = model(batch.x)
    records = recorder.find(output)
    hessian, gradient = output_curvature(output, batch.y, batch.task_ids, readout,
                                         batch.extras.get("loss_weight"),
                                         with_gradient=recorder.curved)
    for handle in handles:
        handle.remove()
    return recorder.curvature(records, hessian, gradient)


def double_mlp(outputs: int = 4, activation=torch.nn.ReLU, inputs: int = 5, hidden: int = 6):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), activation(),
                               torch.nn.Linear(hidden, outputs)).double()


def output_cases():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    identity = Readout.identity()
    task = Readout("task", 5, [[0, 1], [2, 3], [4]])  # padded: task 2 has one class
    masked = Readout("class", 4, [[0, 1], [2, 3]])
    masked.begin_task(0)  # units 2, 3 unseen: −inf
    task_ids = torch.tensor([0, 1, 2, 1, 0, 2, 1])
    yield "cross-entropy", 4, identity, Batch(x, torch.randint(0, 4, (7,), generator=generator))
    yield "task heads", 5, task, Batch(x, torch.tensor([1, 0, 0, 1, 0, 0, 1]), task_ids)
    yield "class mask", 4, masked, Batch(x, torch.randint(0, 2, (7,), generator=generator))
    yield "squared error", 3, identity, Batch(x, torch.randn(7, 3, generator=generator,
                                                            dtype=torch.float64))
    weights = torch.rand(7, generator=generator, dtype=torch.float64)
    yield "weighted", 4, identity, Batch(x, torch.randint(0, 4, (7,), generator=generator),
                                         extras={"loss_weight": weights / weights.sum()})


@pytest.mark.parametrize("case", list(output_cases()), ids=lambda c: c[0])
def test_output_layer_diagonal_is_exact(case) -> None:
    _, outputs, readout, batch = case
    model = double_mlp(outputs)
    curvature = recorded_curvature(model, batch, readout)

    def loss(output: torch.Tensor) -> torch.Tensor:
        return batch.loss(readout.select(output, batch.task_ids))

    last = model[2]
    torch.testing.assert_close(curvature[last].weight, exact_diagonal(model, "2.weight",
                                                                      batch.x, loss))
    torch.testing.assert_close(curvature[last].bias, exact_diagonal(model, "2.bias",
                                                                    batch.x, loss))


def hesscale_numpy(model, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Becker & LeCun's diagonal recursion for Linear → ReLU → Linear → mean cross-entropy."""
    w1, b1, w2, b2 = [p.detach().numpy() for p in model.parameters()]
    z1 = x @ w1.T + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ w2.T + b2
    p = np.exp(z2 - z2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h_z2 = p * (1 - p) / len(x)  # per sample, the mean's 1/B included
    h_a1 = h_z2 @ w2 ** 2
    h_z1 = (z1 > 0) * h_a1  # ReLU: σ' ∈ {0, 1}, σ'' = 0
    return h_z1.T @ x ** 2, h_z1.sum(0)


def test_hidden_layer_diagonal_is_the_hesscale_recursion() -> None:
    model = double_mlp(4)
    generator = torch.Generator().manual_seed(2)
    batch = Batch(torch.randn(9, 5, generator=generator, dtype=torch.float64),
                  torch.randint(0, 4, (9,), generator=generator))
    curvature = recorded_curvature(model, batch, Readout.identity())
    weight, bias = hesscale_numpy(model, batch.x.numpy(), batch.y.numpy())
    np.testing.assert_allclose(curvature[model[0]].weight.numpy(), weight, rtol=1e-10)
    np.testing.assert_allclose(curvature[model[0]].bias.numpy(), bias, rtol=1e-10)
    exact = exact_diagonal(model, "0.weight", batch.x, batch.loss)
    assert not torch.allclose(curvature[model[0]].weight, exact)  # an approximation, with CE


@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.Tanh, torch.nn.Sigmoid])
def test_hidden_layer_diagonal_is_exact_with_one_output(activation) -> None:
    """One output unit: the Hessian w.r.t. the output is 1×1, so nothing is dropped and the
    recursion (with σ''·g for Tanh and Sigmoid) gives the exact diagonal."""
    model = double_mlp(1, activation)
    generator = torch.Generator().manual_seed(4)
    batch = Batch(torch.randn(6, 5, generator=generator, dtype=torch.float64),
                  torch.randn(6, 1, generator=generator, dtype=torch.float64))
    curvature = recorded_curvature(model, batch, Readout.identity())
    for name, got in (("0.weight", curvature[model[0]].weight),
                      ("0.bias", curvature[model[0]].bias)):
        torch.testing.assert_close(got, exact_diagonal(model, name, batch.x, batch.loss))


def test_chain_is_checked_at_run_time() -> None:
    class Skip(torch.nn.Module):  # leaf order looks like a chain, the forward pass is not one
        def __init__(self) -> None:
            super().__init__()
            self.first, self.act, self.last = (torch.nn.Linear(4, 4), torch.nn.ReLU(),
                                               torch.nn.Linear(4, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.last(self.act(self.first(x)) + x)

    model = Skip()
    batch = Batch(torch.randn(3, 4), torch.tensor([0, 1, 0]))
    curvature = recorded_curvature(model, batch, Readout.identity())
    assert set(curvature) == {model.last}  # the output layer only


def test_second_order_utility_in_a_training_step() -> None:
    """β = 0, σ = 0: after one step the utility is −g⊙θ + ½h⊙θ², h exact for the output layer
    and the numpy recursion for the hidden one; the trainer's hooks supply the batch."""
    model = tiny_mlp().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    method = UPGD(utility="second", beta_utility=0.0, sigma=0.0).attach(model, optimizer, seed=0)
    batch = Batch(torch.randn(5, 8, dtype=torch.float64), torch.randint(0, 4, (5,)))
    theta = [p.detach().clone() for p in model.parameters()]
    g = [torch.from_numpy(x) for x in gradients(model, batch)]
    hidden_w, hidden_b = hesscale_numpy(model, batch.x.numpy(), batch.y.numpy())
    h = [torch.from_numpy(hidden_w), torch.from_numpy(hidden_b),
         exact_diagonal(model, "2.weight", batch.x, batch.loss),
         exact_diagonal(model, "2.bias", batch.x, batch.loss)]
    train_task(model, optimizer, method, Readout.identity(), batch, batch_size=5, epochs=1)
    for got, gi, hi, th in zip(method.utility_estimate(), g, h, theta):
        torch.testing.assert_close(got, -gi * th + 0.5 * hi * th ** 2)


def test_second_order_needs_the_batch() -> None:
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    UPGD(utility="second").attach(model, optimizer, seed=0)
    F.cross_entropy(model(torch.randn(2, 8)), torch.tensor([0, 1])).backward()
    with pytest.raises(ConfigError, match="add_penalty"):
        optimizer.step()


# --- feature level -----------------------------------------------------------------------------
def test_feature_level_gates_rows_by_unit_utility() -> None:
    """u_j = −Σ_b ∂L/∂h_bj h_bj for each hidden ReLU output h (autograd on the activations),
    one global M over both hidden layers; rows and biases scaled by 1 − s_j, the head ungated."""
    torch.manual_seed(0)
    model = MLP((8,), (6, 5), 3)
    method = UPGD(level="feature", beta_utility=0.7, sigma=0.0).attach(
        model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
    batch = Batch(torch.randn(4, 8), torch.randint(0, 3, (4,)))
    trace = None
    for t in (1, 2):
        activations: list[torch.Tensor] = []

        def keep_activation(module, args, out, activations=activations) -> None:
            out.retain_grad()
            activations.append(out)

        handles = [m.register_forward_hook(keep_activation)
                   for m in model.body if isinstance(m, torch.nn.ReLU)]
        model.zero_grad()
        batch.loss(model(batch.x)).backward()
        for handle in handles:
            handle.remove()
        u = torch.cat([-(h.grad * h).sum(0) for h in activations]).double()
        trace = 0.3 * u if trace is None else 0.7 * trace + 0.3 * u
        corrected = trace / (1 - 0.7 ** t)
        keep = 1 - torch.sigmoid(corrected / corrected.max())
        grads = [p.grad.clone() for p in model.parameters()]
        method.transform_grads()
        torch.testing.assert_close(torch.cat(method.utility_estimate()).double(), corrected,
                                   rtol=1e-5, atol=1e-8)
        first, second = keep[:6].float(), keep[6:].float()
        expected = [grads[0] * first[:, None], grads[1] * first,
                    grads[2] * second[:, None], grads[3] * second, grads[4], grads[5]]
        for p, e in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, e)
        with torch.no_grad():
            for p in model.parameters():
                p.sub_(0.1 * p.grad)


def test_feature_level_noise_spares_the_output_layer() -> None:
    model = tiny_mlp()
    method = UPGD(level="feature", sigma=0.1).attach(
        model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
    batch = batches(1)[0]
    batch.loss(model(batch.x)).backward()
    before = [p.grad.clone() for p in model.parameters()]
    method.transform_grads()
    assert not torch.allclose(model[0].weight.grad, before[0])
    assert torch.equal(model[2].weight.grad, before[2])
    assert torch.equal(model[2].bias.grad, before[3])


# --- state, composition, configuration ---------------------------------------------------------
@pytest.mark.parametrize("config", [
    {"beta_utility": 0.5},
    {"utility": "second", "sigma": 0.01},
    {"level": "feature", "scaling": "local", "protect": False, "sigma": 0.01},
], ids=["first", "second", "feature-local-nonprotecting"])
def test_state_dict_round_trip_continues_identically(config) -> None:
    scenario = toy_scenario("task")
    data = scenario.tasks[0].train_data()

    def run(model, optimizer, method, seed):
        train_task(model, optimizer, method, scenario.readout, data, batch_size=4, epochs=2,
                   generator=torch.Generator().manual_seed(seed))

    model = tiny_mlp(seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method = UPGD(**config).attach(model, optimizer, scenario.readout, seed=0)
    run(model, optimizer, method, 0)
    buffer = io.BytesIO()
    torch.save({"method": method.state_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    other = tiny_mlp(seed=1)
    other.load_state_dict(saved["model"])
    other_optimizer = torch.optim.SGD(other.parameters(), lr=0.05)
    restored = UPGD(**config).attach(other, other_optimizer, scenario.readout, seed=9)
    restored.load_state_dict(saved["method"])
    run(model, optimizer, method, 1)
    run(other, other_optimizer, restored, 1)
    for a, b in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("config", [{"utility": "second"}, {"level": "feature"},
                                    {"protect": False}])
def test_variants_train_and_detach_cleanly(config) -> None:
    scenario = toy_scenario("class")
    model = tiny_mlp(outputs=scenario.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = hooks(model, optimizer)
    method = UPGD(**config).attach(model, optimizer, scenario.readout, seed=0)
    scenario.readout.begin_task(0)
    data = scenario.tasks[0].train_data()
    stats = train_task(model, optimizer, method, scenario.readout, data, batch_size=4, epochs=3,
                       generator=torch.Generator().manual_seed(0))
    assert stats.epoch_losses[-1] < 0.5 * stats.epoch_losses[0]
    method.detach()
    assert hooks(model, optimizer) == before


@pytest.mark.parametrize("values,message", [
    ({"beta_utility": 1.0}, "beta_utility"),
    ({"beta_utility": -0.1}, "beta_utility"),
    ({"sigma": -1.0}, "sigma"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"scaling": "layer"}, "global, local"),
    ({"level": "unit"}, "weight, feature"),
    ({"utility": "third"}, "first, second"),
    ({"noise": "table"}, "^upgd.noise was removed: the noise is always fresh"),
    ({"fused": True}, "^upgd.fused was removed: the compiled CPU kernel is gone"),
    ({"protect": "maybe"}, "true or false"),
])
def test_bad_config_is_refused(values, message) -> None:
    with pytest.raises(ConfigError, match=message):
        UPGD(**values)


def test_feature_level_needs_a_hidden_layer() -> None:
    model = torch.nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="hidden Linear"):
        UPGD(level="feature").attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
