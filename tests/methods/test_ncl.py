"""KFAC factors and NCL's step against dense, per-sample computations on tiny networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario

from lifelong.core import Batch
from lifelong.errors import ConfigError
from lifelong.functional import diagonal_fisher
from lifelong.functional.kfac import (
    KroneckerFactors,
    kfac_fisher,
    nearest_kronecker_sum,
    weight_matrix,
)
from lifelong.methods import NCL


def identity(output, task_ids):
    return output


def vec(matrix: torch.Tensor) -> torch.Tensor:
    """Column-major vec, the convention of (A ⊗ G) vec(Δ) = vec(G Δ A)."""
    return matrix.T.reshape(-1)


def exact_block_fisher(model, layer, x, kind="true", y=None) -> torch.Tensor:
    """E_x Σ_c p(c|x) vec(∇_W̄ log p(c|x)) vec(·)ᵀ, one sample and one class at a time."""
    params = [layer.weight, layer.bias]
    size = layer.weight.numel() + layer.bias.numel()
    total = torch.zeros(size, size, dtype=torch.float64)
    for i in range(len(x)):
        log_p = F.log_softmax(model(x[i: i + 1]), dim=-1)[0]
        classes = range(len(log_p)) if kind == "true" else [int(y[i])]
        for c in classes:
            weight = log_p[c].exp().item() if kind == "true" else 1.0
            gw, gb = torch.autograd.grad(log_p[c], params, retain_graph=True)
            v = vec(weight_matrix(layer, gw, gb)).double()
            total += weight * torch.outer(v, v)
    return total / len(x)


@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_kfac_is_exact_for_one_sample_and_matches_per_sample_factors(kind: str) -> None:
    model = tiny_mlp(inputs=5, hidden=6, outputs=3)
    layer = model[2]
    x = torch.randn(7, 5)
    y = torch.randint(0, 3, (7,))
    one = kfac_fisher(model, [layer], [Batch(x[:1], y[:1])], identity, kind=kind)[0]
    exact = exact_block_fisher(model, layer, x[:1], kind, y[:1])
    torch.testing.assert_close(torch.kron(one.A, one.G).double(), exact, rtol=1e-4, atol=1e-6)

    # several samples: A and G are the means of the per-sample factors (A⊗G is then the KFAC
    # approximation, no longer exact)
    both = kfac_fisher(model, [model[0], layer], [Batch(x[:4], y[:4]), Batch(x[4:], y[4:])],
                       identity, kind=kind)
    for index, factors in zip((0, 2), both):
        a_sum = torch.zeros_like(factors.A)
        g_sum = torch.zeros_like(factors.G)
        for i in range(len(x)):
            inputs, outputs = [], []

            def keep(module, args, out, inputs=inputs, outputs=outputs):
                inputs.append(args[0])
                outputs.append(out)

            handle = model[index].register_forward_hook(keep)
            log_p = F.log_softmax(model(x[i: i + 1]), dim=-1)[0]
            handle.remove()
            a = torch.cat([inputs[0][0], torch.ones(1)])
            a_sum += torch.outer(a, a)
            classes = range(3) if kind == "true" else [int(y[i])]
            for c in classes:
                w = log_p[c].exp().item() if kind == "true" else 1.0
                (g,) = torch.autograd.grad(log_p[c], outputs[0], retain_graph=True)
                g_sum += w * torch.outer(g[0], g[0])
        torch.testing.assert_close(factors.A, a_sum / len(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(factors.G, g_sum / len(x), rtol=1e-4, atol=1e-7)


def test_conv_kfac_uses_weight_layout_of_the_kernel() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, kernel_size=3)
    model = torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.Linear(3, 4))
    x = torch.randn(1, 2, 3, 3)  # one output position: A ⊗ G is the exact Fisher block
    factors = kfac_fisher(model, [conv], [Batch(x, torch.tensor([1]))], identity)[0]
    torch.testing.assert_close(torch.kron(factors.A, factors.G).double(),
                               exact_block_fisher(model, conv, x), rtol=1e-4, atol=1e-6)


def test_nearest_kronecker_sum_minimises_the_cross_terms() -> None:
    def spd(n):
        m = torch.randn(n, n, dtype=torch.float64)
        return m @ m.T + torch.eye(n, dtype=torch.float64)

    a1, g1, a2, g2 = spd(4), spd(3), spd(4), spd(3)
    summed = nearest_kronecker_sum(KroneckerFactors(a1, g1), KroneckerFactors(a2, g2))
    pi = torch.sqrt(torch.trace(g1) * torch.trace(a2) / (torch.trace(g2) * torch.trace(a1)))
    torch.testing.assert_close(summed.A, a1 + a2 / pi)
    torch.testing.assert_close(summed.G, g1 + pi * g2)

    def cross_terms(p):  # (A₁ + A₂/p) ⊗ (G₁ + p G₂) − A₁⊗G₁ − A₂⊗G₂
        return (torch.kron(a1 + a2 / p, g1 + p * g2) - torch.kron(a1, g1) - torch.kron(a2, g2))

    torch.testing.assert_close(cross_terms(pi), pi * torch.kron(a1, g2) + torch.kron(a2, g1) / pi)
    best = torch.trace(cross_terms(pi))  # π minimises the trace of the cross terms
    assert best < torch.trace(cross_terms(pi * 1.1)) and best < torch.trace(cross_terms(pi / 1.1))


def dense_precision(method, index: int) -> torch.Tensor:
    f = method.factors[index]
    return torch.kron(f["A"], f["G"]).double()


@pytest.mark.parametrize("alpha", [0.0, 0.05])
def test_ncl_precision_penalty_and_preconditioned_step(alpha: float) -> None:
    scenario = toy_scenario("task")
    readout = scenario.readout
    model = tiny_mlp()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    lam, size = 3.0, 40
    method = NCL(lambda_=lam, data_size=size, alpha=alpha).attach(model, optimizer, readout,
                                                                  seed=0)

    # first task: Λ = I/N, so the step is the gradient plus the prior's pull λθ/N
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    method.transform_grads()
    for p, g in zip(params, grads):
        torch.testing.assert_close(p.grad, g + lam * p.detach() / size, rtol=1e-4, atol=1e-6)

    data = scenario.tasks[0].train_data()
    method.after_task(0, data)
    prior = KroneckerFactors(torch.eye(9) / size ** 0.5, torch.eye(16) / size ** 0.5)
    fresh = kfac_fisher(model, [model[0]], [data], readout.select)[0]
    expected = nearest_kronecker_sum(prior, fresh)
    torch.testing.assert_close(method.factors[0]["A"], expected.A)
    torch.testing.assert_close(method.factors[0]["G"], expected.G)

    with torch.no_grad():
        for p in params:
            p.add_(0.2 * torch.randn_like(p))
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    method.transform_grads()
    for index, layer in enumerate((model[0], model[2])):
        precision = dense_precision(method, index)
        f = method.factors[index]
        damped = nearest_kronecker_sum(
            KroneckerFactors(f["A"], f["G"]),
            KroneckerFactors(alpha * torch.eye(len(f["A"])), alpha * torch.eye(len(f["G"]))))
        damped = torch.kron(damped.A, damped.G).double() if alpha else precision
        delta = vec(weight_matrix(layer).detach() - method.block_means[index]).double()
        g = vec(weight_matrix(layer, grads[2 * index], grads[2 * index + 1])).double()
        step = torch.linalg.solve(damped, g + lam * precision @ delta) / size
        got = vec(weight_matrix(layer, layer.weight.grad, layer.bias.grad)).double()
        torch.testing.assert_close(got, step, rtol=2e-3, atol=1e-6)
    penalty = sum(
        (vec(weight_matrix(layer).detach() - method.block_means[i]).double() @ dense_precision(
            method, i) @ vec(weight_matrix(layer).detach() - method.block_means[i]).double())
        for i, layer in enumerate((model[0], model[2])))
    torch.testing.assert_close(method.penalty_value().double(), lam / 2 * penalty, rtol=1e-4,
                               atol=1e-7)


def test_diagonal_ncl_and_trust_region() -> None:
    scenario = toy_scenario("task")
    model = tiny_mlp()
    params = list(model.parameters())
    lr, size, radius = 0.5, 30, 1e-3
    optimizer = torch.optim.SGD(params, lr=lr)
    method = NCL(fisher="diagonal", data_size=size, lambda_=0.0,
                 trust_region=radius).attach(model, optimizer, scenario.readout, seed=0)
    data = scenario.tasks[0].train_data()
    method.after_task(0, data)
    fisher = diagonal_fisher(model, [data], scenario.readout.select, kind="true")
    precision = [1.0 / size + fisher[n] for n, _ in model.named_parameters()]
    for got, want in zip(method.diag_precision, precision):
        torch.testing.assert_close(got, want)
    grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    method.transform_grads()
    steps = [g / (lam * size) for g, lam in zip(grads, precision)]
    norm = lr * sum((lam * s.square()).sum() for lam, s in zip(precision, steps)).sqrt()
    assert norm > radius  # so the trust region acts
    for p, s in zip(params, steps):
        torch.testing.assert_close(p.grad, s * radius / norm, rtol=1e-4, atol=1e-9)
    after = lr * sum((lam * p.grad.square()).sum() for lam, p in zip(precision, params)).sqrt()
    torch.testing.assert_close(after, torch.tensor(radius), rtol=1e-4, atol=0)


def test_ncl_needs_its_data_size() -> None:
    scenario = toy_scenario("task")
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = NCL().attach(model, optimizer, scenario.readout, seed=0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(ConfigError, match="data_size"):
        optimizer.step()
    method.training_data(0, scenario.tasks[0].train_data())
    assert method.data_size == len(scenario.tasks[0].train_data())
    optimizer.step()


def test_ncl_preconditions_convolution_kernels() -> None:
    scenario = toy_scenario("task")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Unflatten(1, (2, 2, 2)), torch.nn.Conv2d(2, 3, 2),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3, 4))
    conv = model[1]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = NCL(lambda_=2.0, data_size=25).attach(model, optimizer, scenario.readout, seed=0)
    assert method.layers == [conv, model[4]] and method.diag_index == []
    method.after_task(0, scenario.tasks[0].train_data())
    with torch.no_grad():
        conv.weight.add_(0.1)
    grads = [torch.randn_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    method.transform_grads()
    precision = dense_precision(method, 0)
    delta = vec(weight_matrix(conv).detach() - method.block_means[0]).double()
    g = vec(weight_matrix(conv, grads[0], grads[1])).double()
    expected = torch.linalg.solve(precision, g + 2.0 * precision @ delta) / 25
    got = vec(weight_matrix(conv, conv.weight.grad, conv.bias.grad)).double()
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-6)
