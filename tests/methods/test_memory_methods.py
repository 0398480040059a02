"""Replay, A-GEM and joint: batch composition, the projection formula, the memories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario

from lifelong.core import Batch
from lifelong.functional import project_away_from_conflict_
from lifelong.methods import AGEM, Joint, Replay
from lifelong.methods.memory import ClassBalancedMemory, ReservoirMemory


def reference_reservoir(stream: list[int], capacity: int, draws: list[float]) -> list[int]:
    """Vitter's algorithm R, one sample at a time, with the given uniform draws."""
    buffer: list[int] = []
    for position, (item, u) in enumerate(zip(stream, draws)):
        if position < capacity:
            buffer.append(item)
        else:
            slot = int(u * (position + 1))
            if slot < capacity:
                buffer[slot] = item
    return buffer


def test_reservoir_matches_the_sequential_algorithm() -> None:
    capacity, sizes = 7, [3, 5, 1, 16, 9, 30]
    memory = ReservoirMemory(capacity, torch.Generator().manual_seed(3))
    shadow = torch.Generator().manual_seed(3)  # replays the same draws for the reference
    stream, draws, start = [], [], 0
    for size in sizes:
        items = torch.arange(start, start + size)
        memory.add(Batch(items.float().unsqueeze(1), items))
        draws += torch.rand(size, generator=shadow, dtype=torch.float64).tolist()
        stream += items.tolist()
        start += size
    assert memory.seen == sum(sizes)
    assert memory.stored().y.tolist() == reference_reservoir(stream, capacity, draws)


def test_reservoir_keeps_every_item_with_equal_probability() -> None:
    counts = np.zeros(200)
    for seed in range(300):
        memory = ReservoirMemory(20, torch.Generator().manual_seed(seed))
        for start in range(0, 200, 25):
            items = torch.arange(start, start + 25)
            memory.add(Batch(items.float().unsqueeze(1), items))
        counts[memory.stored().y.numpy()] += 1
    rate = counts / 300  # expected 20/200 = 0.1 for every item, early or late in the stream
    assert abs(rate.mean() - 0.1) < 1e-9
    assert abs(rate[:100].mean() - rate[100:].mean()) < 0.02
    assert rate.std() < 0.03  # binomial std at n=300, p=0.1: 0.017


def test_class_balanced_memory_quota_shrinks_as_classes_arrive() -> None:
    scenario = toy_scenario("class", num_classes=6)
    memory = ClassBalancedMemory(capacity=12, generator=torch.Generator().manual_seed(0))
    memory.add_task(scenario.tasks[0].train_data())
    assert sorted(torch.bincount(memory.stored().y).tolist()) == [6, 6]
    memory.add_task(scenario.tasks[1].train_data())
    memory.add_task(scenario.tasks[2].train_data())
    assert torch.bincount(memory.stored().y).tolist() == [2] * 6
    per_class = ClassBalancedMemory(capacity=1, per_class=5)
    per_class.add_task(scenario.tasks[0].train_data())
    per_class.add_task(scenario.tasks[1].train_data())
    assert torch.bincount(per_class.stored().y).tolist() == [5] * 4


def test_replay_appends_an_equal_batch_from_memory_and_keeps_the_new_rows_first() -> None:
    model = tiny_mlp()
    method = Replay(memory_size=50).attach(model, None, seed=0)
    first = Batch(torch.randn(8, 8), torch.randint(0, 4, (8,)), torch.zeros(8, dtype=torch.long))
    out = method.prepare_batch(first)
    assert out is first  # nothing stored yet
    second = Batch(torch.randn(8, 8), torch.randint(0, 4, (8,)), torch.ones(8, dtype=torch.long))
    out = method.prepare_batch(second)
    assert len(out) == 16 and out.num_new == 8
    assert torch.equal(out.x[:8], second.x)
    assert out.task_ids[8:].eq(0).all()  # the replayed rows come from the first batch
    stored = {tuple(r.tolist()) for r in first.x}
    assert all(tuple(r.tolist()) in stored for r in out.x[8:])


def test_replay_task_weighting_gives_the_new_batch_one_over_t() -> None:
    model = tiny_mlp()
    method = Replay(memory_size=50, weighting="tasks").attach(model, None, seed=0)
    assert method.needs_task_boundaries
    method.before_task(0)
    method.prepare_batch(Batch(torch.randn(12, 8), torch.randint(0, 4, (12,))))
    method.before_task(3)  # the 4th task: new 1/4, replayed 3/4
    new = Batch(torch.randn(8, 8), torch.randint(0, 4, (8,)))
    out = method.prepare_batch(new)
    logits = model(out.x)
    expected = (0.25 * F.cross_entropy(logits[:8], out.y[:8])
                + 0.75 * F.cross_entropy(logits[8:], out.y[8:]))
    torch.testing.assert_close(out.loss(logits), expected)
    torch.testing.assert_close(method.task_loss(out), expected)
    uniform = Replay(memory_size=50).attach(tiny_mlp(), None, seed=0)
    uniform.prepare_batch(Batch(torch.randn(12, 8), torch.randint(0, 4, (12,))))
    out = uniform.prepare_batch(new)
    assert "loss_weight" not in out.extras and not uniform.needs_task_boundaries


def test_class_balanced_replay_fills_at_task_end() -> None:
    scenario = toy_scenario("class")
    method = Replay(buffer="class-balanced", memory_per_class=3).attach(tiny_mlp(), None, seed=0)
    assert method.needs_task_boundaries
    batch = scenario.tasks[0].train_data().select(slice(0, 4))
    assert method.prepare_batch(batch) is batch
    method.after_task(0, scenario.tasks[0].train_data())
    assert len(method.prepare_batch(batch)) == 8
    assert len(method.memory) == 6


def test_projection_matches_the_agem_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    for conflict in (True, False):
        g = [torch.randn(3, 4, generator=generator), torch.randn(5, generator=generator)]
        r = [torch.randn(3, 4, generator=generator), torch.randn(5, generator=generator)]
        flat_g = torch.cat([t.flatten() for t in g]).double().numpy()
        flat_r = torch.cat([t.flatten() for t in r]).double().numpy()
        if (flat_g @ flat_r < 0) != conflict:
            r = [-t for t in r]
            flat_r = -flat_r
        expected = flat_g - min(flat_g @ flat_r, 0) / (flat_r @ flat_r) * flat_r
        project_away_from_conflict_(g, r, eps=0)
        got = torch.cat([t.flatten() for t in g]).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        if conflict:  # after the projection the new gradient no longer conflicts
            assert abs(got @ flat_r) < 1e-4


def test_agem_projects_inside_optimizer_step_of_a_plain_loop() -> None:
    scenario = toy_scenario("task")
    readout = scenario.readout
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    method = AGEM(memory_per_class=40, ref_batch_size=1000).attach(model, optimizer, readout,
                                                                   seed=0)
    method.after_task(0, scenario.tasks[0].train_data())  # the memory: all of task 0
    batch = scenario.tasks[1].train_data().select(slice(0, 16))
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    memory = method.memory.stored()
    g_ref = torch.autograd.grad(F.cross_entropy(readout.select(model(memory.x), memory.task_ids),
                                                memory.y), params)
    loss = F.cross_entropy(readout.select(model(batch.x), batch.task_ids), batch.y)
    g = torch.autograd.grad(loss, params)
    flat = lambda ts: torch.cat([t.flatten() for t in ts]).double()  # noqa: E731
    inner = flat(g) @ flat(g_ref)
    expected = flat(g) - min(inner, 0) / (flat(g_ref) @ flat(g_ref)) * flat(g_ref)

    optimizer.zero_grad()
    F.cross_entropy(readout.select(model(batch.x), batch.task_ids), batch.y).backward()
    optimizer.step()  # plain PyTorch: the projection runs from the step pre-hook
    step = flat(before) - flat([p.detach() for p in params])
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("buffer", ["reservoir", "class-balanced"])
def test_agem_memory_modes(buffer: str) -> None:
    scenario = toy_scenario("class")
    model = tiny_mlp()
    method = AGEM(buffer=buffer, memory_size=10).attach(
        model, torch.optim.SGD(model.parameters(), 0.1), scenario.readout, seed=0)
    data = scenario.tasks[0].train_data()
    if buffer == "reservoir":
        assert method.uses("prepare_batch")
        method.prepare_batch(data)
    else:
        assert not method.uses("prepare_batch")
        method.after_task(0, data)
    assert len(method.memory) == 10


def test_joint_trains_on_every_task_so_far() -> None:
    scenario = toy_scenario("class", num_classes=6)
    method = Joint().attach(tiny_mlp(), None, seed=0)
    sizes = []
    for task in scenario.tasks:
        data = task.train_data()
        union = method.training_data(task.id, data)
        sizes.append(len(union))
        assert torch.equal(union.x[-len(data):], data.x)
        method.after_task(task.id, data)
    assert sizes == [48, 96, 144]


@pytest.mark.parametrize("spec", ["agem+ewc", "ewc+agem"])
def test_penalty_gradients_are_projected_whatever_the_order_given(spec: str) -> None:
    """In a composition, EWC's gradient joins the task gradient before A-GEM projects it."""
    from lifelong.core import build_method

    scenario = toy_scenario("task")
    readout = scenario.readout
    model = tiny_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    method = build_method(spec, {"agem": {"memory_per_class": 40, "ref_batch_size": 1000},
                                 "ewc": {"lambda": 2.0}}).attach(model, optimizer, readout,
                                                                  seed=0)
    first = scenario.tasks[0].train_data()
    method.after_task(0, first)
    with torch.no_grad():  # move away from the anchor so EWC's gradient is not zero
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ewc = next(m for m in method.members if m.name == "ewc")
    params = list(model.parameters())
    batch = first.select(slice(0, 16))
    batch.y = 1 - batch.y  # task 0's inputs with flipped labels: opposes the memory's gradient
    memory = method.members[[m.name for m in method.members].index("agem")].memory.stored()
    g_ref = torch.autograd.grad(F.cross_entropy(readout.select(model(memory.x), memory.task_ids),
                                                memory.y), params)
    task_grads = torch.autograd.grad(
        F.cross_entropy(readout.select(model(batch.x), batch.task_ids), batch.y), params)
    penalty_grads = [2.0 * P * (p.detach() - mu)  # λ·P∘(θ − μ); EWC itself: test_ewc.py
                     for p, P, mu in zip(params, ewc.precision, ewc.anchor)]
    flat = lambda ts: torch.cat([t.flatten() for t in ts]).double()  # noqa: E731
    total = flat(task_grads) + flat(penalty_grads)
    inner = total @ flat(g_ref)
    assert inner < 0  # the case where the order matters
    expected = total - inner / (flat(g_ref) @ flat(g_ref)) * flat(g_ref)
    task_only = flat(task_grads)  # the other order: project the task gradient, then add EWC's
    wrong = task_only - min(task_only @ flat(g_ref), 0) / (flat(g_ref) @ flat(g_ref)) * flat(
        g_ref) + flat(penalty_grads)
    assert (wrong - expected).norm() > 1e-3 * expected.norm()
    for p, g in zip(params, task_grads):
        p.grad = g.clone()
    optimizer.step()  # one pre-hook: EWC (objective) first, then A-GEM (transform)
    torch.testing.assert_close(flat([p.grad for p in params]), expected, rtol=1e-4, atol=1e-6)
