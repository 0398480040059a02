"""SI, MAS and DER/DER++ against independent computations of their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario

from lifelong.core import Batch, Readout
from lifelong.functional import diagonal_fisher
from lifelong.functional.per_sample import per_sample_gradient_mean
from lifelong.methods import DERPP, MAS, SI
from lifelong.methods.mas import output_norm_terms


def test_si_path_integral_importance_and_penalty() -> None:
    scenario = toy_scenario("task")
    readout = scenario.readout
    model = tiny_mlp()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)  # Δθ is not −lr·g
    c, xi = 3.0, 0.05
    method = SI(c=c, xi=xi).attach(model, optimizer, readout, seed=0)
    start = [p.detach().clone() for p in params]
    omega = [torch.zeros_like(p) for p in params]
    data = scenario.tasks[0].train_data()
    for step in range(6):
        batch = data.select(slice(8 * step, 8 * step + 8))
        loss = F.cross_entropy(readout.select(model(batch.x), batch.task_ids), batch.y)
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in params]
        before = [p.detach().clone() for p in params]
        optimizer.step()
        for w, g, b, p in zip(omega, grads, before, params):
            w -= g * (p.detach() - b)  # ω ← ω − g∘Δθ
    for got, expected in zip(method.omega, omega):
        torch.testing.assert_close(got, expected)
    method.after_task(0, data)
    end = [p.detach().clone() for p in params]
    importance = [w / ((e - s).square() + xi) for w, e, s in zip(omega, end, start)]
    for got, expected in zip(method.importance, importance):
        torch.testing.assert_close(got, expected)
    assert all(w.eq(0).all() for w in method.omega)  # the next task integrates afresh

    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn_like(p))
    expected = c * sum((O * (p - e).square()).sum() for O, p, e in zip(importance, params, end))
    torch.testing.assert_close(method.penalty_value(), expected.detach())
    optimizer.zero_grad()
    for p in params:
        p.grad = torch.zeros_like(p)
    method.transform_grads()  # the penalty's gradient 2c·Ω∘(θ − θ*) joins the gradient
    for p, g in zip(params, torch.autograd.grad(expected, params)):
        torch.testing.assert_close(p.grad, g)


def loop_output_sensitivity(model, batch: Batch, readout: Readout) -> list[torch.Tensor]:
    """1/N Σ_i |∂ ||f(x_i)||² / ∂θ|, one sample at a time."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(len(batch)):
        t = None if batch.task_ids is None else batch.task_ids[i:i + 1]
        logits = readout.select(model(batch.x[i:i + 1]), t)
        norm = torch.where(torch.isfinite(logits), logits, 0).square().sum()
        for acc, g in zip(total, torch.autograd.grad(norm, params)):
            acc += g.abs()
    return [acc / len(batch) for acc in total]


@pytest.mark.parametrize("implementation", ["auto", "vmap"])
@pytest.mark.parametrize("kind", ["task", "class"])
def test_mas_importance_is_the_mean_absolute_output_sensitivity(kind, implementation) -> None:
    scenario = toy_scenario(kind)
    scenario.readout.begin_task(0)
    model = tiny_mlp()
    data = Batch.cat(scenario.tasks[0].train_data().select(slice(0, 7)),
                     scenario.tasks[1].train_data().select(slice(0, 3)))
    expected = loop_output_sensitivity(model, data, scenario.readout)
    got = per_sample_gradient_mean(model, [data.select(slice(0, 4)), data.select(slice(4, 10))],
                                   scenario.readout.select, output_norm_terms, "abs",
                                   implementation=implementation, max_rows=3)
    for name, exp in zip(dict(model.named_parameters()), expected):
        torch.testing.assert_close(got[name], exp)


def test_mas_accumulates_importance_and_anchors_to_the_latest_weights() -> None:
    scenario = toy_scenario("task")
    model = tiny_mlp()
    params = list(model.parameters())
    method = MAS(lambda_=2.0).attach(model, torch.optim.SGD(params, 0.1), scenario.readout,
                                     seed=0)
    total = [torch.zeros_like(p) for p in params]
    for task in scenario.tasks:
        data = task.train_data()
        for acc, imp in zip(total, loop_output_sensitivity(model, data, scenario.readout)):
            acc += imp
        method.after_task(task.id, data)
        anchor = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                p.add_(0.2 * torch.randn_like(p))
    expected = 2.0 * sum((O * (p - a).square()).sum() for O, p, a in zip(total, params, anchor))
    torch.testing.assert_close(method.penalty_value(), expected.detach(), rtol=1e-5, atol=1e-6)


def test_derpp_matches_stored_logits_and_memory_labels() -> None:
    scenario = toy_scenario("task")
    readout = scenario.readout
    model = tiny_mlp()
    method = DERPP(memory_size=6, replay_batch_size=6, alpha=0.4, beta=0.7).attach(
        model, torch.optim.SGD(model.parameters(), 0.1), readout, seed=0)
    first = scenario.tasks[0].train_data().select(slice(0, 6))
    stored_logits = model(first.x).detach()
    assert method.penalty(first, model(first.x)) is None  # empty memory: nothing to replay
    assert len(method.memory) == 6
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    second = scenario.tasks[1].train_data().select(slice(0, 6))
    got = method.penalty(second, model(second.x))
    # replaying all six stored rows: the mean terms do not depend on the order drawn
    expected = 0.4 * F.mse_loss(model(first.x), stored_logits) + 0.7 * F.cross_entropy(
        readout.select(model(first.x), first.task_ids), first.y)
    torch.testing.assert_close(got, expected)
    params = list(model.parameters())
    for g, e in zip(torch.autograd.grad(got, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(g, e)


def test_der_refuses_a_class_balanced_memory() -> None:
    from lifelong.errors import ConfigError

    with pytest.raises(ConfigError, match="needs buffer=reservoir"):
        DERPP(buffer="class-balanced")


def test_sampled_fisher_is_the_empirical_fisher_of_labels_drawn_from_the_model() -> None:
    model = tiny_mlp()
    data = Batch(torch.randn(9, 8), torch.randint(0, 4, (9,)))
    identity = Readout.identity().select
    got = diagonal_fisher(model, [data], identity, kind="sampled",
                          generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        probs = torch.softmax(model(data.x), -1)
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(5)).squeeze(1)
    expected = diagonal_fisher(model, [Batch(data.x, labels)], identity, kind="empirical")
    for name in got:
        torch.testing.assert_close(got[name], expected[name])
