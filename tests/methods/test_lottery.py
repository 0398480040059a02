"""lifelong.functional.prune and the lottery method against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import blobs, tiny_mlp, toy_scenario, train_tasks

from lifelong.core import check_compatible
from lifelong.errors import ConfigError
from lifelong.functional.prune import (
    apply_masks_,
    global_magnitude_masks,
    iterative_magnitude_pruning,
    keep_pruned,
    prunable_parameters,
    sparsity,
)
from lifelong.methods import Lottery


def remaining_after(n: int, rounds: int, fraction: float = 0.2) -> int:
    """Candidates left after `rounds` rounds that each prune round-half-up(fraction × left)."""
    for _ in range(rounds):
        n -= math.floor(fraction * n + 0.5)
    return n


# --- lifelong.functional.prune --------------------------------------------------------------------
def test_prunable_parameters_are_linear_and_conv_weights_only() -> None:
    shared = torch.nn.Linear(6, 6)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
        torch.nn.Linear(2 * 4 * 4, 6), torch.nn.LayerNorm(6), shared, torch.nn.ReLU(), shared,
        torch.nn.ConvTranspose1d(1, 1, 2))
    model.add_module("embedding", torch.nn.Embedding(5, 6))
    names = [name for name, _ in prunable_parameters(model)]
    assert names == ["0.weight", "3.weight", "5.weight", "8.weight"]  # shared layer once


def numpy_masks(weights, fraction, masks, eligible) -> list[np.ndarray]:
    """Independent global magnitude pruning: one stable sort of every candidate |w|."""
    values = [w.numpy().ravel() for w in weights]
    kept = [m.numpy().ravel() for m in masks]
    candidates = [k & e.numpy().ravel() for k, e in zip(kept, eligible)]
    offsets = np.cumsum([0] + [v.size for v in values])
    scores = np.concatenate([np.abs(v)[c] for v, c in zip(values, candidates)])
    where = np.concatenate([np.flatnonzero(c) + o for c, o in zip(candidates, offsets)])
    count = int(np.floor(fraction * scores.size + 0.5))
    flat = np.concatenate(kept).copy()
    flat[where[np.argsort(scores, kind="stable")[:count]]] = False
    return [flat[a:b].reshape(w.shape) for a, b, w in zip(offsets[:-1], offsets[1:], weights)]


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.37])
def test_global_magnitude_masks_match_numpy_with_ties_masks_and_eligibility(
        fraction: float) -> None:
    generator = torch.Generator().manual_seed(3)
    shapes = [(7, 5), (11,), (3, 2, 4)]
    weights = [torch.randint(-6, 7, s, generator=generator).float() for s in shapes]  # ties
    masks = [torch.rand(s, generator=generator) > 0.2 for s in shapes]
    eligible = [torch.rand(s, generator=generator) > 0.3 for s in shapes]
    got = global_magnitude_masks(weights, fraction, masks, eligible)
    expected = numpy_masks(weights, fraction, masks, eligible)
    for g, e, m, el in zip(got, expected, masks, eligible):
        assert g.dtype == torch.bool and g.shape == m.shape
        np.testing.assert_array_equal(g.numpy(), e)
        assert not (g & ~m).any()  # pruned entries stay pruned
        assert torch.equal(g[~el], m[~el])  # ineligible entries are never pruned
    candidates = sum(int((m & e).sum()) for m, e in zip(masks, eligible))
    removed = sum(int((m & ~g).sum()) for m, g in zip(masks, got))
    assert removed == math.floor(fraction * candidates + 0.5)
    # one global threshold: every removed |w| <= every surviving candidate's |w|
    removed_max = max(float(w[m & ~g].abs().max()) for w, m, g in zip(weights, masks, got)
                      if (m & ~g).any())
    kept_min = min(float(w[g & e].abs().min()) for w, g, e in zip(weights, got, eligible)
                   if (g & e).any())
    assert removed_max <= kept_min
    # defaults: every entry kept and eligible
    expected = numpy_masks(weights, fraction, [torch.ones(s, dtype=torch.bool) for s in shapes],
                           [torch.ones(s, dtype=torch.bool) for s in shapes])
    for g, e in zip(global_magnitude_masks(weights, fraction), expected):
        np.testing.assert_array_equal(g.numpy(), e)


def test_twenty_percent_per_round_compounds() -> None:
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(40, 30, generator=generator), torch.randn(30, 10, generator=generator)]
    total = sum(w.numel() for w in weights)
    masks = None
    for r in range(1, 7):
        masks = global_magnitude_masks(weights, 0.2, masks)
        assert sparsity(masks) == (total - remaining_after(total, r)) / total
        assert abs(sparsity(masks) - (1 - 0.8**r)) < r / total


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, True, "0.2"])
def test_fraction_outside_zero_one_is_refused(fraction) -> None:
    with pytest.raises(ValueError, match="fraction must be a number in \\(0, 1\\)"):
        global_magnitude_masks([torch.ones(3)], fraction)


def test_apply_masks_and_sparsity() -> None:
    weights = [torch.ones(2, 3), torch.ones(4)]
    masks = [torch.tensor([[True, False, True], [False, False, True]]),
             torch.tensor([True, True, True, False])]
    apply_masks_(weights, masks)
    assert torch.equal(weights[0], masks[0].float()) and torch.equal(weights[1], masks[1].float())
    assert sparsity(masks) == 4 / 10
    assert sparsity([]) == 0.0


def train_steps(model, optimizer, steps: int, seed: int = 0, on_step=None) -> None:
    x, y = blobs(num_classes=4, per_class=8, seed=seed)
    for step in range(steps):
        index = slice(8 * (step % 4), 8 * (step % 4) + 8)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step()


def test_keep_pruned_keeps_zeros_under_adam() -> None:
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.01)
    train_steps(model, optimizer, 3)  # Adam's moments are nonzero for every weight now
    weights = [w for _, w in prunable_parameters(model)]
    masks = global_magnitude_masks(weights, 0.5)
    count = len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)
    handle = keep_pruned(optimizer, weights, masks)
    assert all(w[~m].eq(0).all() for w, m in zip(weights, masks))  # zeroed at once
    kept_before = [w[m].clone() for w, m in zip(weights, masks)]
    train_steps(model, optimizer, 6)
    for w, m, before in zip(weights, masks, kept_before):
        assert w[~m].eq(0).all()
        assert not torch.equal(w[m], before)  # the kept weights did train
    handle.remove()
    assert len(optimizer._optimizer_step_pre_hooks) + len(
        optimizer._optimizer_step_post_hooks) == count
    train_steps(model, optimizer, 1)
    assert any(w[~m].ne(0).any() for w, m in zip(weights, masks))  # Adam would revive them


def imp_model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))


@pytest.mark.parametrize("rewind_step", [0, 3])
def test_imp_rewinds_survivors_keeps_masks_and_never_prunes_biases(rewind_step: int) -> None:
    model = imp_model()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    starts, rewind_points = [], []

    def train(model, round_, on_step):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        zeros = {k: v.eq(0) for k, v in starts[-1].items() if k.endswith("weight")}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = blobs(num_classes=4, per_class=8, seed=round_)
        for step in range(5):
            loss = F.cross_entropy(model(x[8 * step % 32:][:8]), y[8 * step % 32:][:8])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            on_step()
            if round_ == 0 and step + 1 == rewind_step:
                rewind_points.append({k: v.clone() for k, v in model.state_dict().items()})
            state = model.state_dict()
            assert all(state[k][z].eq(0).all() for k, z in zeros.items())  # mask kept
        return f"accuracy of round {round_}"

    result = iterative_magnitude_pruning(model, train, rounds=2, rewind_step=rewind_step)
    point = theta0 if rewind_step == 0 else rewind_points[0]
    assert result.names == ["0.weight", "3.weight"]  # weights only: no bias, no norm
    assert [r.round for r in result.history] == [0, 1, 2]
    assert [r.steps for r in result.history] == [5, 5, 5]
    assert [r.result for r in result.history] == [f"accuracy of round {r}" for r in range(3)]
    total = 8 * 16 + 16 * 4
    assert [r.sparsity for r in result.history] == [
        (total - remaining_after(total, r)) / total for r in range(3)]
    assert result.sparsity == result.history[-1].sparsity
    for r in (1, 2):
        pruned = 0
        for key, value in starts[r].items():
            if key in result.names:
                zeros = value.eq(0)
                assert torch.equal(value[~zeros], point[key][~zeros])  # survivors rewound
                pruned += int(zeros.sum())
            else:  # biases, norm parameters and running statistics: rewound, never pruned
                assert torch.equal(value, point[key]), key
        assert pruned == total - remaining_after(total, r)
    final_start = starts[2]
    for name, mask in zip(result.names, result.masks):
        assert torch.equal(final_start[name], torch.where(mask, point[name], 0))
    assert sum(int((~m).sum()) for m in result.masks) == total - remaining_after(total, 2)


def test_imp_without_training_the_ticket_returns_it_at_the_rewind_point() -> None:
    model = imp_model()
    theta0 = [p.detach().clone() for p in model.parameters()]

    def train(model, round_, on_step):
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        optimizer.register_step_post_hook(on_step)  # on_step works as a step hook too
        train_steps(model, optimizer, 4, seed=round_)

    result = iterative_magnitude_pruning(model, train, rounds=3, train_ticket=False)
    assert len(result.history) == 3
    masks = dict(zip(result.names, result.masks))
    for (name, p), start in zip(model.named_parameters(), theta0):
        expected = torch.where(masks[name], start, 0) if name in masks else start
        assert torch.equal(p.detach(), expected), name
    with pytest.raises(ValueError, match="rewind_step=9, but round 0 made only 4"):
        iterative_magnitude_pruning(imp_model(), train, rounds=1, rewind_step=9)


# --- the lottery method ------------------------------------------------------------------------
def run(method, model, optimizer, scenario, tasks, epochs: int = 3) -> None:
    train_tasks(method, model, optimizer, scenario, tasks, epochs=epochs)


def task_logits(method, model, scenario, task: int) -> torch.Tensor:
    data = scenario.tasks[task].test_data()
    method.evaluation_task(task)
    with torch.no_grad():
        logits = scenario.readout.select(model(data.x), data.task_ids)
    method.evaluation_task(None)
    return logits


def setup_lottery(**config):
    scenario = toy_scenario("task")
    model = tiny_mlp(outputs=scenario.num_outputs)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02, weight_decay=0.01)
    method = Lottery(**{"rounds": 2, "round_steps": 5, **config})
    method.attach(model, optimizer, scenario.readout, seed=0)
    return scenario, model, optimizer, method


def test_lottery_freezes_tickets_bit_exactly_and_forgets_nothing() -> None:
    scenario, model, optimizer, method = setup_lottery()
    run(method, model, optimizer, scenario, (0,))  # 18 steps: rounds at steps 5 and 10
    after_first = [p.detach().clone() for p in model.parameters()]
    logits = task_logits(method, model, scenario, 0)
    assert all(torch.equal(a, p) for a, p in zip(after_first, model.parameters()))  # restored
    owner = [o.clone() for o in method.owner]
    head_weight, head_bias = owner[2], owner[3]
    assert head_weight[2:].eq(-1).all() and head_bias[2:].eq(-1).all()  # task 1's head is free
    assert head_bias[:2].eq(0).all()  # the biases the task used are its own
    assert owner[1].eq(0).sum() > 12  # most hidden biases; a dead unit's bias and weights:
    assert owner[0][owner[1].eq(-1)].eq(-1).all()  # unused, so they stay free
    accuracy = (logits.argmax(1) == scenario.tasks[0].test_data().y).float().mean()
    assert accuracy > 0.9

    run(method, model, optimizer, scenario, (1,))  # Adam + weight decay on the same optimizer
    for p, before, o in zip(model.parameters(), after_first, owner):
        frozen = o == 0
        assert frozen.any() and torch.equal(p.detach()[frozen], before[frozen])
        assert method.owner[model_index(model, p)][frozen].eq(0).all()
    assert method.owner[2][2:].ne(0).all() and method.owner[2][2:].eq(1).any()
    assert torch.equal(task_logits(method, model, scenario, 0), logits)  # zero forgetting
    accuracy = (task_logits(method, model, scenario, 1).argmax(1)
                == scenario.tasks[1].test_data().y).float().mean()
    assert accuracy > 0.9


def model_index(model: torch.nn.Module, param: torch.Tensor) -> int:
    return next(i for i, p in enumerate(model.parameters()) if p is param)


def test_lottery_report_counts_the_ticket() -> None:
    scenario, model, optimizer, method = setup_lottery()
    prunable = [0, 2]  # the two Linear weights: parameters 0 and 2, modules 0 and 2
    used = [torch.zeros_like(method.owner[i], dtype=torch.bool) for i in prunable]

    def record_gradients(opt, args, kwargs) -> None:  # runs after the method's own pre-hook
        for u, i in zip(used, prunable):
            u |= model[i].weight.grad != 0

    optimizer.register_step_pre_hook(record_gradients)
    total = sum(method.owner[i].numel() for i in prunable)
    for task in (0, 1):
        free_before = [method.owner[i].eq(-1) for i in prunable]
        for u in used:
            u.zero_()
        run(method, model, optimizer, scenario, (task,))
        eligible = sum(int((f & u).sum()) for f, u in zip(free_before, used))
        owned = sum(int(method.owner[i].eq(task).sum()) for i in prunable)
        assert owned == remaining_after(eligible, 2)
        free = sum(int(method.owner[i].eq(-1).sum()) for i in prunable)
        assert free == sum(int(f.sum()) for f in free_before) - owned
        report = method.report(task, lambda m: [])
        assert report == {"ticket_sparsity": (eligible - owned) / eligible,
                          "free_fraction": free / total, "rounds": 2}
        assert abs(report["ticket_sparsity"] - 0.36) < 0.02


def test_lottery_prunes_then_rewinds_free_weights_and_resets_the_optimizer() -> None:
    for rewind_step in (0, 2):
        scenario, model, optimizer, method = setup_lottery(rounds=1, round_steps=3,
                                                           rewind_step=rewind_step)
        run(method, model, optimizer, scenario, (0,))
        scenario.readout.begin_task(1)
        method.before_task(1)
        params = list(model.parameters())
        data = scenario.tasks[1].train_data()
        point = [p.detach().clone() for p in params]  # θ₀ of task 1
        for step in range(3):
            batch = data.select(slice(8 * step, 8 * step + 8))
            loss = F.cross_entropy(scenario.readout.select(model(batch.x), batch.task_ids),
                                   batch.y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step + 1 == rewind_step:
                point = [p.detach().clone() for p in params]
        assert method.rounds_done == 1 and not optimizer.state  # pruned, rewound, reset
        assert sum(int(p.sum()) for p in method.pruned) == 8  # 20% of the 40 eligible
        for i, p in enumerate(params):
            pruned = method.pruned[i]
            assert not pruned.any() or i in (0, 2)  # weights only
            assert torch.equal(p.detach(), torch.where(pruned, 0, point[i]))
            assert not (pruned & method.owner[i].ne(-1)).any()  # owned weights never pruned


def test_lottery_evaluation_restores_weights_mid_task_and_when_nested() -> None:
    scenario, model, optimizer, method = setup_lottery()
    run(method, model, optimizer, scenario, (0,))
    scenario.readout.begin_task(1)
    method.before_task(1)
    train_steps_task(model, optimizer, scenario, 1, 3)  # anchor (θ₀) and weights now differ
    weights = [p.detach().clone() for p in model.parameters()]
    method.evaluation_task(0)
    for p, o in zip(model.parameters(), method.owner):
        assert p[o != 0].eq(0).all()
    method.evaluation_task(1)
    method.evaluation_task(None)
    method.evaluation_task(None)
    assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters()))


def train_steps_task(model, optimizer, scenario, task: int, steps: int) -> None:
    data = scenario.tasks[task].train_data()
    for step in range(steps):
        batch = data.select(slice(8 * step, 8 * step + 8))
        loss = F.cross_entropy(scenario.readout.select(model(batch.x), batch.task_ids), batch.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_lottery_warns_when_a_task_ends_at_a_pruning_round_and_refuses_going_back() -> None:
    scenario, model, optimizer, method = setup_lottery(rounds=1, round_steps=6)
    with pytest.warns(UserWarning, match="ended at a pruning round"):
        run(method, model, optimizer, scenario, (0,), epochs=1)  # 6 steps
    assert method.report(0, lambda m: [])["rounds"] == 1
    run(method, model, optimizer, scenario, (1,), epochs=2)
    with pytest.raises(ValueError, match="increasing order"):
        method.before_task(0)


@pytest.mark.parametrize("values,message", [
    ({"fraction": 0}, "lottery.fraction: 0.0 is out of range; accepted: > 0"),
    ({"fraction": 1}, "lottery.fraction: 1.0 is out of range; accepted: > 0 and < 1"),
    ({"fraction": 1.5}, "lottery.fraction: 1.5 is out of range"),
    ({"rounds": 0}, "lottery.rounds: 0 is out of range; accepted: >= 1"),
    ({"round_steps": 0}, "lottery.round_steps: 0 is out of range"),
    ({"rewind_step": -1}, "lottery.rewind_step: -1 is out of range"),
    ({"rewind_step": 200}, "rewind_step: 200 must be smaller than round_steps \\(200\\)"),
    ({"rounds": "three"}, "lottery.rounds: expected an integer"),
])
def test_lottery_bad_config_is_refused(values, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Lottery(values)


def test_lottery_is_task_incremental_only() -> None:
    check_compatible(Lottery(), "task")
    for scenario in ("class", "domain"):
        with pytest.raises(ConfigError, match="does not support"):
            check_compatible(Lottery(), scenario)
