"""GEM: the dual QP against exhaustive active-set enumeration, and the projection end to end."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario

from lifelong.functional.projection import solve_gem_dual
from lifelong.methods import GEM


def enumerate_dual(P: np.ndarray, q: np.ndarray, margin: float) -> np.ndarray:
    """argmin ½vᵀPv + qᵀv s.t. v ≥ margin by trying every set of free variables (KKT)."""
    size = len(q)
    best, best_value = None, np.inf
    for free_count in range(size + 1):
        for free in itertools.combinations(range(size), free_count):
            v = np.full(size, margin)
            fixed = [i for i in range(size) if i not in free]
            if free:
                f = list(free)
                rhs = -(q[f] + P[np.ix_(f, fixed)] @ v[fixed])
                v[f] = np.linalg.solve(P[np.ix_(f, f)], rhs)
            if (v < margin - 1e-10).any():
                continue
            value = 0.5 * v @ P @ v + q @ v
            if value < best_value:
                best, best_value = v, value
    return best


@pytest.mark.parametrize("margin", [0.0, 0.5])
@pytest.mark.parametrize("seed", range(5))
def test_dual_solver_finds_the_exact_optimum(margin: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    G = rng.normal(size=(4, 9))
    g = rng.normal(size=9)
    P, q = G @ G.T + 1e-3 * np.eye(4), G @ g
    expected = enumerate_dual(P, q, margin)
    got = solve_gem_dual(torch.tensor(G @ G.T), torch.tensor(q), margin, 1e-3).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)


def test_gem_projects_so_that_no_memory_loss_rises() -> None:
    scenario = toy_scenario("task", num_classes=6)
    readout = scenario.readout
    model = tiny_mlp(outputs=6)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=1.0)
    method = GEM(memory_per_task=30, margin=0.0, eps=0.0).attach(model, optimizer, readout,
                                                                 seed=0)
    for task in scenario.tasks[:2]:
        method.after_task(task.id, task.train_data())
    batch = scenario.tasks[0].train_data().select(slice(0, 12))
    batch.y = 1 - batch.y  # flipped labels: conflicts with task 0's memory

    flat = lambda ts: torch.cat([t.reshape(-1) for t in ts]).double()  # noqa: E731
    G = torch.stack([flat(torch.autograd.grad(F.cross_entropy(
        readout.select(model(m.x), m.task_ids), m.y), params)) for m in method.memories])
    g = flat(torch.autograd.grad(F.cross_entropy(readout.select(model(batch.x), batch.task_ids),
                                                 batch.y), params))
    assert (G @ g < 0).any()
    v = enumerate_dual((G @ G.T).numpy(), (G @ g).numpy(), 0.0)
    expected = g + G.T @ torch.from_numpy(v)

    before = flat([p.detach() for p in params])
    optimizer.zero_grad()
    F.cross_entropy(readout.select(model(batch.x), batch.task_ids), batch.y).backward()
    optimizer.step()  # plain PyTorch: the projection runs inside step()
    taken = before - flat([p.detach() for p in params])
    torch.testing.assert_close(taken, expected, rtol=1e-4, atol=1e-6)
    assert (G @ taken >= -1e-6).all()  # the projected step conflicts with no past task


def test_gem_keeps_a_gradient_without_conflict() -> None:
    scenario = toy_scenario("task")
    model = tiny_mlp()
    params = list(model.parameters())
    method = GEM(memory_per_task=30).attach(model, torch.optim.SGD(params, 1.0),
                                            scenario.readout, seed=0)
    data = scenario.tasks[0].train_data()
    method.after_task(0, data)
    loss = F.cross_entropy(scenario.readout.select(model(data.x), data.task_ids), data.y)
    loss.backward()  # the memory's own task: its gradient agrees with the memory's
    before = [p.grad.clone() for p in params]
    method.transform_grads()
    for p, b in zip(params, before):
        assert torch.equal(p.grad, b)
