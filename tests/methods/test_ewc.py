"""EWC against an independent computation: per-sample gradients by a Python loop over samples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario

from lifelong.core import Batch, Readout
from lifelong.functional import diagonal_fisher
from lifelong.methods import EWC


def loop_fisher(model, batch: Batch, readout: Readout, kind: str) -> list[torch.Tensor]:
    """F = mean_i (∂ log p(y_i|x_i)/∂θ)² (empirical), or
    mean_i Σ_c p(c|x_i) (∂ log p(c|x_i)/∂θ)² (true)."""
    params = [p for p in model.parameters()]
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(batch)):
        x = batch.x[i : i + 1]
        t = None if batch.task_ids is None else batch.task_ids[i : i + 1]
        log_p = F.log_softmax(readout.select(model(x), t), dim=-1)[0]
        if kind == "empirical":
            classes, weights = [int(batch.y[i])], [1.0]
        else:
            classes = [c for c in range(len(log_p)) if torch.isfinite(log_p[c])]
            weights = [float(log_p[c].detach().exp()) for c in classes]
        for c, w in zip(classes, weights):
            grads = torch.autograd.grad(log_p[c], params, retain_graph=True)
            for acc, g in zip(total, grads):
                acc += w * g.square()
    return [acc / len(batch) for acc in total]


@pytest.mark.parametrize("implementation", ["auto", "vmap"])
@pytest.mark.parametrize("kind", ["empirical", "true"])
@pytest.mark.parametrize("scenario_kind", ["task", "class", "none"])
def test_diagonal_fisher_matches_per_sample_loop(kind: str, scenario_kind: str,
                                                 implementation: str) -> None:
    model = tiny_mlp(outputs=4)
    if scenario_kind == "none":
        readout = Readout.identity()
        data = Batch(torch.randn(9, 8), torch.randint(0, 4, (9,)))
    else:
        scenario = toy_scenario(scenario_kind)
        readout = scenario.readout
        readout.begin_task(0)  # class-IL: task 1's classes stay masked (p = 0)
        data = scenario.tasks[0].train_data().select(slice(0, 9))
        if scenario_kind == "task":  # mix tasks in one batch: each sample reads its own head
            other = scenario.tasks[1].train_data().select(slice(0, 4))
            data = Batch.cat(data, other)
    expected = loop_fisher(model, data, readout, kind)
    batches = [data.select(slice(0, 5)), data.select(slice(5, len(data)))]
    got = diagonal_fisher(model, batches, readout.select, kind=kind, max_rows=3,
                          implementation=implementation)
    for name, exp in zip(dict(model.named_parameters()), expected):
        torch.testing.assert_close(got[name], exp, rtol=1e-5, atol=1e-7)


class TwiceApplied(torch.nn.Module):
    """One Linear applied twice: its per-sample gradient is a sum, so the MLP shortcut is wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


@pytest.mark.parametrize("model_factory", [TwiceApplied, lambda: torch.nn.Sequential(
    torch.nn.Linear(8, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 4))])
def test_fisher_of_models_the_shortcut_does_not_cover(model_factory) -> None:
    torch.manual_seed(0)
    model = model_factory()
    data = Batch(torch.randn(7, 8), torch.randint(0, 4, (7,)))
    readout = Readout.identity()
    expected = loop_fisher(model, data, readout, "true")
    got = diagonal_fisher(model, [data], readout.select, kind="true")
    for name, exp in zip(dict(model.named_parameters()), expected):
        torch.testing.assert_close(got[name], exp, rtol=1e-5, atol=1e-7)


def _fisher_of(model, data, readout, kind="true"):
    return loop_fisher(model, data, readout, kind)


def _perturb(model, scale=0.3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("mode", ["separate", "online"])
def test_ewc_penalty_matches_formula(mode: str) -> None:
    scenario = toy_scenario("task", num_classes=6)
    readout = scenario.readout
    model = tiny_mlp(outputs=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lam, gamma = 7.0, 0.6
    method = EWC(lambda_=lam, mode=mode, gamma=gamma, fisher="true").attach(
        model, optimizer, readout, seed=0)
    anchors, fishers = [], []
    for task in scenario.tasks:  # three tasks: weights move between consolidations
        readout.begin_task(task.id)
        method.before_task(task.id)
        _perturb(model, seed=task.id)
        data = task.train_data()
        method.after_task(task.id, data)
        anchors.append([p.detach().clone() for p in model.parameters()])
        fishers.append(_fisher_of(model, data, readout))
    _perturb(model, seed=99)
    params = list(model.parameters())
    if mode == "separate":
        expected = sum(
            (F_k * (p - a).square()).sum()
            for anchor, fisher in zip(anchors, fishers)
            for p, a, F_k in zip(params, anchor, fisher)) * lam / 2
    else:
        running = [torch.zeros_like(p) for p in params]
        for fisher in fishers:
            running = [gamma * r + f for r, f in zip(running, fisher)]
        expected = sum((r * (p - a).square()).sum()
                       for p, a, r in zip(params, anchors[-1], running)) * lam / 2
    expected_grads = torch.autograd.grad(expected, params)
    torch.testing.assert_close(method.penalty_value(), expected.detach(), rtol=1e-4, atol=1e-6)
    # the gradient arrives at the optimizer step, added to the task's own gradient
    task_grads = [torch.randn_like(p) for p in params]
    for p, g in zip(params, task_grads):
        p.grad = g.clone()
    before = [p.detach().clone() for p in params]
    optimizer.step()  # lr 0.1, plain SGD: θ ← θ − 0.1 (g_task + ∇penalty)
    for p, b, g, e in zip(params, before, task_grads, expected_grads):
        torch.testing.assert_close(p.grad, g + e, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(p.detach(), b - 0.1 * (g + e), rtol=1e-4, atol=1e-6)


def test_ewc_no_penalty_before_first_consolidation_and_fisher_sample_limit() -> None:
    scenario = toy_scenario("task")
    model = tiny_mlp()
    method = EWC(fisher_samples=5, fisher="empirical").attach(
        model, torch.optim.SGD(model.parameters(), 0.1), scenario.readout, seed=0)
    batch = scenario.tasks[0].train_data()
    assert method.penalty_value() is None
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    method.transform_grads()  # nothing to anchor to yet: the gradient is left alone
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
    method.after_task(0, batch)
    # the Fisher on 5 random samples of the task equals the loop Fisher on those same 5 samples
    generator = torch.Generator().manual_seed(0)
    chosen = batch.select(torch.randperm(len(batch), generator=generator)[:5])
    expected = loop_fisher(model, chosen, scenario.readout, "empirical")
    for got, exp in zip(method.precision, expected):
        torch.testing.assert_close(got, exp, rtol=1e-5, atol=1e-7)


def test_the_mlp_shortcut_is_taken_exactly_when_it_is_exact() -> None:
    from lifelong.functional.per_sample import _linear

    data = [Batch(torch.randn(5, 8), torch.randint(0, 4, (5,)))]
    identity = Readout.identity().select

    def terms(logits, batch):
        return [(logits.sum(1), None)]

    assert _linear(tiny_mlp(), data, identity, terms, "square") is not None
    assert _linear(TwiceApplied(), data, identity, terms, "square") is None
    with_norm = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.LayerNorm(6))
    assert _linear(with_norm, data, identity, terms, "square") is None
