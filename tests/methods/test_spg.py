"""SPG against a hand-written backward pass of a two-layer MLP (numpy), and its masking rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_mlp, toy_scenario

from lifelong.errors import ConfigError
from lifelong.methods import SPG


def manual_gradients(model, x: np.ndarray, dz: np.ndarray) -> list[np.ndarray]:
    """∂/∂(W1, b1) of Σ dz ∘ z for z = relu(x W1ᵀ + b1) W2ᵀ + b2, by hand."""
    w1, b1, w2, _ = [p.detach().double().numpy() for p in model.parameters()]
    pre = x @ w1.T + b1
    dpre = (dz @ w2) * (pre > 0)
    return [dpre.T @ x, dpre.sum(0)]


def logits(model, x: np.ndarray) -> np.ndarray:
    w1, b1, w2, b2 = [p.detach().double().numpy() for p in model.parameters()]
    return np.maximum(x @ w1.T + b1, 0) @ w2.T + b2


def cross_entropy_dz(z: np.ndarray, y: np.ndarray, units: list[int]) -> np.ndarray:
    """∂ mean CE over the task's units / ∂z, zero on the other units."""
    local = z[:, units]
    p = np.exp(local - local.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    dz = np.zeros_like(z)
    dz[:, units] = p / len(y)
    return dz


def gamma(g: np.ndarray) -> np.ndarray:
    return np.abs(np.tanh((g - g.mean()) / g.std(ddof=1)))  # Bessel, as the authors' code


def test_importance_is_max_over_heads_and_tasks_of_tanh_zscore() -> None:
    scenario = toy_scenario("task")
    readout = scenario.readout
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = SPG(importance_batch_size=1000).attach(model, optimizer, readout, seed=0)
    units = readout.task_units

    data0 = scenario.tasks[0].train_data()
    x0, y0 = data0.x.double().numpy(), data0.y.numpy()
    method.after_task(0, data0)
    expected0 = [gamma(g) for g in manual_gradients(
        model, x0, cross_entropy_dz(logits(model, x0), y0, units[0]))]
    for got, want in zip(method.importance, expected0):
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-5)

    with torch.no_grad():  # "train" task 1: the weights move
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    data1 = scenario.tasks[1].train_data()
    x1, y1 = data1.x.double().numpy(), data1.y.numpy()
    method.after_task(1, data1)
    z = logits(model, x1)
    current = [gamma(g) for g in manual_gradients(model, x1, cross_entropy_dz(z, y1, units[1]))]
    old_head = np.zeros_like(z)
    old_head[:, units[0]] = 1.0  # the plain sum of head 0's logits, no labels
    older = [gamma(g) for g in manual_gradients(model, x1, old_head)]
    for got, a0, c, o in zip(method.importance, expected0, current, older):
        np.testing.assert_allclose(got.double().numpy(), np.maximum(a0, np.maximum(c, o)),
                                   rtol=1e-4, atol=1e-5)


def test_gradients_are_scaled_by_one_minus_importance_and_heads_by_the_mean() -> None:
    scenario = toy_scenario("task")
    model = tiny_mlp()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=1.0)
    method = SPG().attach(model, optimizer, scenario.readout, seed=0)

    def step_with(grads):
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        return [b - p.detach() for b, p in zip(before, params)]  # = the gradient used

    grads = [torch.randn_like(p) for p in params]
    for used, g in zip(step_with(grads), grads):  # the first task is unmasked
        torch.testing.assert_close(used, g)

    method.after_task(0, scenario.tasks[0].train_data())
    a = method.importance
    assert all(((t >= 0) & (t <= 1)).all() for t in a) and any((t > 0.5).any() for t in a)
    mean = sum(t.sum() for t in a) / sum(t.numel() for t in a)
    used = step_with(grads)
    torch.testing.assert_close(used[0], grads[0] * (1 - a[0]))
    torch.testing.assert_close(used[1], grads[1] * (1 - a[1]))
    torch.testing.assert_close(used[2], grads[2] * (1 - mean))  # output layer: the heads
    torch.testing.assert_close(used[3], grads[3] * (1 - mean))


def test_step_masking_scales_the_adam_update() -> None:
    scenario = toy_scenario("task")
    model, twin = tiny_mlp(), tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=0.01)
    method = SPG(mask="step").attach(model, opt, scenario.readout, seed=0)
    method.after_task(0, scenario.tasks[0].train_data())
    a = method.importance
    mean = float(sum(t.sum() for t in a) / sum(t.numel() for t in a))
    grads = [torch.randn_like(p) for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    for net, optimizer in ((model, opt), (twin, twin_opt)):
        for p, g in zip(net.parameters(), grads):
            p.grad = g.clone()
        optimizer.step()
    free_steps = [p.detach() - b for p, b in zip(twin.parameters(), before)]
    masked_steps = [p.detach() - b for p, b in zip(model.parameters(), before)]
    scales = [1 - a[0], 1 - a[1], 1 - mean, 1 - mean]
    for masked, free, scale in zip(masked_steps, free_steps, scales):
        torch.testing.assert_close(masked, free * scale)


def test_bad_head_name_is_refused() -> None:
    scenario = toy_scenario("task")
    model = tiny_mlp()
    with pytest.raises(ConfigError, match="no module 'decoder'"):
        SPG(head="decoder").attach(model, torch.optim.SGD(model.parameters(), 0.1),
                                   scenario.readout)
    with pytest.raises(ConfigError, match="mask"):
        SPG(mask="weights")


def test_spg_masks_convolution_kernels_too() -> None:
    scenario = toy_scenario("task")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Unflatten(1, (2, 2, 2)), torch.nn.Conv2d(2, 3, 2),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3, 4))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=1.0)
    method = SPG().attach(model, optimizer, scenario.readout, seed=0)
    method.after_task(0, scenario.tasks[0].train_data())
    kernel_importance = method.importance[0]
    assert kernel_importance.shape == params[0].shape and bool((kernel_importance > 0).any())
    grads = [torch.randn_like(p) for p in params]
    before = [p.detach().clone() for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    optimizer.step()
    torch.testing.assert_close(before[0] - params[0].detach(), grads[0] * (1 - kernel_importance))
