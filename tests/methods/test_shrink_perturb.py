"""Shrink & Perturb against the formulas, and the noise source it shares with UPGD."""

from __future__ import annotations

import math

import torch
from torch import nn

from lifelong.core import build_method
from lifelong.functional.noise import GaussianNoise


def model_and_optimizer(lr: float = 0.1):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    return model, torch.optim.SGD(model.parameters(), lr=lr)


def one_step(model, optimizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Take a step on a fixed batch; return (weights before, gradients)."""
    x, y = torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0])
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    return before, grads


def test_step_mode_shrinks_steps_and_perturbs_exactly() -> None:
    model, optimizer = model_and_optimizer(lr=0.1)
    method = build_method("shrink-perturb", {"shrink-perturb": {
        "weight_decay": 0.5, "noise_std": 0.01}})
    method.attach(model, optimizer, seed=3)
    replay = torch.Generator().manual_seed(3)  # the method's generator, replayed
    before, grads = one_step(model, optimizer)
    noise = torch.empty(sum(p.numel() for p in before)).normal_(generator=replay)
    offset = 0
    for p, theta, g in zip(model.parameters(), before, grads):
        xi = 0.01 * noise[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        torch.testing.assert_close(p.detach(), (1 - 0.1 * 0.5) * theta - 0.1 * g + xi)


def test_step_mode_uses_each_parameter_groups_lr() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                 {"params": model[2].parameters(), "lr": 0.01}])
    method = build_method("shrink-perturb", {"shrink-perturb": {"weight_decay": 2.0,
                                                                 "noise_std": 0.0}})
    method.attach(model, optimizer)
    before, grads = one_step(model, optimizer)
    for p, theta, g, lr in zip(model.parameters(), before, grads, [0.1, 0.1, 0.01, 0.01]):
        torch.testing.assert_close(p.detach(), (1 - lr * 2.0) * theta - lr * g)


def test_task_mode_mixes_in_a_fresh_initialisation_at_new_tasks_only() -> None:
    model, optimizer = model_and_optimizer()
    method = build_method("shrink-perturb", {"shrink-perturb": {"mode": "task"}})
    assert method.needs_task_boundaries
    method.attach(model, optimizer, seed=5)
    before = [p.detach().clone() for p in model.parameters()]
    method.before_task(0)
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)  # the first task starts from the initialisation itself
    global_state = torch.random.get_rng_state()
    method.before_task(1)
    assert torch.equal(global_state, torch.random.get_rng_state())  # global RNG untouched
    for layer, (w, b) in zip([model[0], model[2]], [(before[0], before[1]),
                                                     (before[2], before[3])]):
        fresh_w = (layer.weight.detach() - 0.4 * w) / 0.1
        bound = 1 / math.sqrt(layer.in_features)  # nn.Linear's default U(-1/√fan_in, ...)
        assert fresh_w.abs().max() <= bound + 1e-5
        assert fresh_w.std() > bound / 4  # a real draw, not zeros
        assert not torch.allclose(fresh_w, w)  # and not the old weights
        fresh_b = (layer.bias.detach() - 0.4 * b) / 0.1
        assert fresh_b.abs().max() <= bound + 1e-5


def test_noise_draws_follow_the_generator_state() -> None:
    """The noise has no state of its own: a restored generator reproduces the draws."""
    like = [torch.empty(40, 30)]
    generator = torch.Generator().manual_seed(1)
    noise = GaussianNoise(like, generator)
    noise.sample()
    generator_state = generator.get_state()
    expected = [noise.sample()[0].clone() for _ in range(3)]
    other_generator = torch.Generator().manual_seed(99)
    restored = GaussianNoise(like, other_generator)
    other_generator.set_state(generator_state)
    for e in expected:
        assert torch.equal(restored.sample()[0], e)
