"""L1-to-start: the penalty's subgradient, the ticket (top rows by |ΔW|) and its report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario

from lifelong.errors import ConfigError
from lifelong.methods import L1


def accuracy(model, readout, data) -> float:
    with torch.no_grad():
        return (readout.select(model(data.x), data.task_ids).argmax(1) == data.y).float().mean()


def setup(**settings):
    scenario = toy_scenario("task")
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = L1(**settings).attach(model, optimizer, scenario.readout, seed=0)
    return scenario, model, optimizer, method


def train(model, optimizer, scenario, task, steps=20):
    data = scenario.tasks[task].train_data()
    for _ in range(steps):
        loss = F.cross_entropy(scenario.readout.select(model(data.x), data.task_ids), data.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return data


def test_penalty_subgradient_is_lambda_sign_of_the_change() -> None:
    scenario, model, optimizer, method = setup(lambda_=0.3)
    method.before_task(0)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    value = 0.3 * sum((p - s).abs().sum() for p, s in zip(model.parameters(), start))
    expected = torch.autograd.grad(value, list(model.parameters()))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    method.transform_grads()
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g)
    torch.testing.assert_close(method.penalty_value(), value.detach())


def test_ticket_is_the_top_rows_by_l1_change_and_report_measures_it() -> None:
    scenario, model, optimizer, method = setup(lambda_=1e-3, ticket_fraction=0.25)
    readout = scenario.readout
    method.before_task(0)
    start = [p.detach().clone().numpy() for p in model.parameters()]
    data = train(model, optimizer, scenario, 0)
    method.after_task(0, data)
    ticket_weights, kept = [], 0
    for p, s, got in zip(model.parameters(), start, method.tickets[0]):
        delta = p.detach().numpy() - s
        rows = delta.reshape(delta.shape[0], -1) if delta.ndim > 1 else delta.reshape(-1, 1)
        norms = np.abs(rows).sum(1)
        mask = got.numpy()
        # the k rows with the largest L1 change (ties, e.g. Δb₀ = −Δb₁ of a 2-way head, either)
        assert mask.sum() == math.ceil(0.25 * rows.shape[0])
        assert norms[mask].min() >= norms[~mask].max() - 1e-7
        kept += mask.sum() * rows.shape[1]
        ticket_weights.append(s + delta * (mask.reshape(-1, *[1] * (delta.ndim - 1))))
    total = sum(p.numel() for p in model.parameters())

    test = scenario.tasks[0].test_data()
    ticket_model = tiny_mlp()
    with torch.no_grad():
        for p, w in zip(ticket_model.parameters(), ticket_weights):
            p.copy_(torch.from_numpy(w))
    report = method.report(0, lambda m: [accuracy(m, readout, test).item(), 0.0])
    assert report["ticket_sparsity"] == pytest.approx(1 - kept / total)
    assert report["ticket_accuracy"] == pytest.approx(accuracy(ticket_model, readout, test).item())
    assert report["full_accuracy"] == pytest.approx(accuracy(model, readout, test).item())


def test_apply_ticket_keeps_only_the_tickets_change() -> None:
    scenario, model, optimizer, method = setup(ticket_fraction=0.5, apply_ticket=True)
    method.before_task(0)
    start = [p.detach().clone() for p in model.parameters()]
    data = train(model, optimizer, scenario, 0)
    trained = [p.detach().clone() for p in model.parameters()]
    method.after_task(0, data)
    for p, s, t, m in zip(model.parameters(), start, trained, method.tickets[0]):
        m = m.reshape(-1, *[1] * (p.dim() - 1))
        torch.testing.assert_close(p.detach(), torch.where(m, t, s))
    report = method.report(0, lambda m: [accuracy(m, scenario.readout,
                                                  scenario.tasks[0].test_data()).item()] * 2)
    assert report["ticket_accuracy"] == pytest.approx(
        accuracy(model, scenario.readout, scenario.tasks[0].test_data()).item())


def test_bad_ticket_fraction_is_refused() -> None:
    with pytest.raises(ConfigError, match="ticket_fraction"):
        L1(ticket_fraction=0.0)
