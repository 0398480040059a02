"""BatchNorm and the methods' own forward passes.

Evaluation uses BatchNorm's running statistics, so a method's extra passes (Fisher, importance,
reference gradients, teachers) must not move them, and must use the statistics their definition
asks for (eval mode for the model as evaluated, batch statistics for the model as trained); see
`lifelong.core.probe`. Checked here on tiny models with BatchNorm1d and BatchNorm2d:

- every row of tests/method_cases.py (several configurations per method) that runs without a
  transformer: a training step moves the running statistics exactly once (DER: once more per
  memory term, as documented), and before_task / after_task leave them alone;
- EWC's Fisher, MAS's importance and NCL's KFAC factors equal an independent eval-mode
  computation; A-GEM's and GEM's reference gradients and SPG's importance an independent
  train-mode one, after which the statistics are those of the training pass alone;
- LwF's teacher runs in eval mode on the statistics of the task boundary, and saves them;
- CBP resets the BatchNorm2d entries of a replaced conv unit and ignores other methods' probes;
- lottery evaluates each task with its own running statistics and rewinds them with the weights;
- the helpers themselves, the diagnostics and `frozen_copy`.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from helpers import toy_scenario
from method_cases import Case, each_case, small_cnn
from torch import nn

import lifelong.methods.agem as agem_module
import lifelong.methods.gem as gem_module
from lifelong.core import build_method
from lifelong.core.batch import Batch
from lifelong.core.copy import frozen_copy
from lifelong.core.probe import (
    RunningStats,
    is_probing,
    load_running_stats,
    probe,
    save_running_stats,
    training_mode,
)
from lifelong.functional.kfac import kfac_fisher
from lifelong.methods import AGEM, CBP, DER, EWC, GEM, MAS, SPG, Lottery, LwF
from lifelong.metrics.diagnostics import diagnose
from lifelong.models import build_model
from lifelong.training.loop import train_task

torch.set_num_threads(1)


def passes_of(method) -> int:
    """Training passes per optimizer step once the memory holds samples (documented in der.py):
    DER adds one for the logits it matches and one more for the labels when beta > 0."""
    members = getattr(method, "members", [method])
    return 1 + sum(1 + (m.config.beta > 0) for m in members if isinstance(m, DER))


def bn_mlp(outputs: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", (8,), outputs, (16, 16), batch_norm=True)


def bn_cnn(outputs: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn", (1, 10, 10), outputs, (6,), width=2, batch_norm=True)


def data(model_input: tuple[int, ...], count: int = 24, classes: int = 4, seed: int = 0
         ) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, *model_input, generator=generator)
    return Batch(x, torch.randint(0, classes, (count,), generator=generator))


def warm_up(model: nn.Module, x: torch.Tensor) -> None:
    """Give the running statistics values far from their initial 0 and 1."""
    model.train()
    with torch.no_grad():
        for shift in (1.0, 2.0, 3.0):
            model(x * shift + shift)


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def assert_buffers(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = buffers(model)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def tracked(model: nn.Module) -> int:
    return int(next(m for m in model.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm)).num_batches_tracked)


def trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


# --- every method ----------------------------------------------------------------------------
# Rows that need a transformer (DAS) cannot run on these BatchNorm networks; transformers have
# no running statistics (DAS's own passes still run inside probe()).
@each_case("batchnorm", where=lambda case: not case.needs_transformer)
def test_a_step_moves_the_statistics_once_and_task_boundaries_not_at_all(case: Case) -> None:
    scenario = toy_scenario("task")
    if case.model == "cnn":
        model = small_cnn(scenario.num_outputs, batch_norm=True)
    else:
        model = bn_mlp(scenario.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = case.build()
    method.attach(model, optimizer, scenario.readout, seed=0)
    steps = []
    optimizer.register_step_post_hook(lambda *args: steps.append(tracked(model)))
    generator = torch.Generator().manual_seed(0)
    for t in (0, 1):
        scenario.readout.begin_task(t)
        before = buffers(model)
        method.before_task(t)
        assert_buffers(model, before)
        task_data = scenario.tasks[t].train_data()
        train_task(model, optimizer, method, scenario.readout, method.training_data(t, task_data),
                   batch_size=8, epochs=1, generator=generator)
        assert model.training
        before = buffers(model)
        method.after_task(t, task_data)
        assert_buffers(model, before)
        assert model.training  # the mode is given back
    passes = passes_of(method)
    expected = [1] + [1 + passes * k for k in range(1, len(steps))]  # the first step: no memory
    if passes == 1:
        expected = list(range(1, len(steps) + 1))
    assert steps == expected


# --- Fisher and importance: the model as evaluated -------------------------------------------
def eval_per_sample(model: nn.Module, batch: Batch, quantity, statistic) -> list[torch.Tensor]:
    """Mean over samples of statistic(∂q(x_i)/∂θ), one sample at a time, in eval mode."""
    reference = copy.deepcopy(model).eval()
    params = trainable(reference)
    totals = [torch.zeros_like(p) for p in params]
    for i in range(len(batch)):
        logits = reference(batch.x[i:i + 1])
        grads = torch.autograd.grad(quantity(logits, batch.y[i:i + 1]), params)
        for total, g in zip(totals, grads):
            total += statistic(g)
    return [t / len(batch) for t in totals]


def log_likelihood(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits, -1).gather(1, y[:, None]).sum()


def output_norm(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.square().sum()


@pytest.mark.parametrize("make,shape", [(bn_mlp, (8,)), (bn_cnn, (1, 10, 10))])
@pytest.mark.parametrize("kind", ["ewc", "mas"])
def test_fisher_and_importance_are_those_of_the_model_as_evaluated(make, shape, kind) -> None:
    model = make()
    batch = data(shape, count=12)
    warm_up(model, batch.x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if kind == "ewc":
        method = EWC(fisher="empirical", fisher_batch_size=5).attach(model, optimizer, seed=0)
        expected = eval_per_sample(model, batch, log_likelihood, torch.square)
    else:
        method = MAS(importance_batch_size=5).attach(model, optimizer, seed=0)
        expected = eval_per_sample(model, batch, output_norm, torch.abs)
    before = buffers(model)
    method.after_task(0, batch)
    got = method.precision if kind == "ewc" else method.importance
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    assert_buffers(model, before)
    assert model.training


def test_ncl_kfac_input_factors_use_the_running_statistics() -> None:
    model = bn_mlp()
    batch = data((8,), count=10)
    warm_up(model, batch.x)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    before = buffers(model)
    factors = kfac_fisher(model, layers, [batch], lambda out, ids: out, kind="empirical")
    assert_buffers(model, before)
    inputs = []
    handle = layers[1].register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    with torch.no_grad():
        copy.deepcopy(model).eval()(batch.x)  # the copy has the hook too
    handle.remove()
    a = inputs[0]
    a = torch.cat([a, torch.ones(len(a), 1)], 1) if layers[1].bias is not None else a
    torch.testing.assert_close(factors[1].A, a.T @ a / len(a), rtol=1e-5, atol=1e-6)


# --- reference gradients: the model as trained, statistics restored --------------------------
def train_mode_gradient(model: nn.Module, batch: Batch, params_of) -> list[torch.Tensor]:
    reference = copy.deepcopy(model).train()
    loss = F.cross_entropy(reference(batch.x), batch.y)
    return list(torch.autograd.grad(loss, params_of(reference)))


def one_step(model, optimizer, batch: Batch) -> None:
    optimizer.zero_grad()
    F.cross_entropy(model(batch.x), batch.y).backward()
    optimizer.step()


def statistics_after_forward(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        reference(x)
    return buffers(reference)


@pytest.mark.parametrize("make,shape", [(bn_mlp, (8,)), (bn_cnn, (1, 10, 10))])
def test_agem_reference_gradient_uses_batch_statistics_and_restores_running_ones(
        make, shape, monkeypatch) -> None:
    model = make()
    old, new = data(shape, seed=1), data(shape, count=8, seed=2)
    warm_up(model, old.x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = AGEM(memory_size=20, ref_batch_size=6).attach(model, optimizer, seed=0)
    method.after_task(0, old)
    captured = {}
    sample = method.memory.sample

    def sample_and_keep(count):
        captured["batch"] = sample(count)
        return captured["batch"]

    project = agem_module.project_away_from_conflict_

    def check_then_project(grads, refs, *args, **kwargs):
        captured["refs"] = [r.clone() for r in refs]
        captured["expected"] = train_mode_gradient(model, captured["batch"], trainable)
        captured["in_eval"] = eval_mode_gradient(model, captured["batch"])
        return project(grads, refs, *args, **kwargs)

    monkeypatch.setattr(method.memory, "sample", sample_and_keep)
    monkeypatch.setattr(agem_module, "project_away_from_conflict_", check_then_project)
    expected_stats = statistics_after_forward(model, new.x)
    one_step(model, optimizer, new)
    for got, want in zip(captured["refs"], captured["expected"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(g, e) for g, e in zip(captured["refs"], captured["in_eval"]))
    assert_buffers(model, expected_stats)


def eval_mode_gradient(model: nn.Module, batch: Batch) -> list[torch.Tensor]:
    reference = copy.deepcopy(model).eval()
    loss = F.cross_entropy(reference(batch.x), batch.y)
    return list(torch.autograd.grad(loss, trainable(reference)))


def test_gem_reference_gradients_use_batch_statistics_and_restore_running_ones(
        monkeypatch) -> None:
    model = bn_cnn()
    tasks = [data((1, 10, 10), seed=s) for s in (1, 2)]
    new = data((1, 10, 10), count=8, seed=3)
    warm_up(model, tasks[0].x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = GEM(memory_per_task=7).attach(model, optimizer, seed=0)
    for t, task in enumerate(tasks):
        method.after_task(t, task)
    captured = {}
    gram = gem_module._gram

    def check_then_gram(references, grads):
        captured["refs"] = [[r.clone() for r in ref] for ref in references]
        captured["expected"] = [train_mode_gradient(model, memory, trainable)
                                for memory in method.memories]
        return gram(references, grads)

    monkeypatch.setattr(gem_module, "_gram", check_then_gram)
    expected_stats = statistics_after_forward(model, new.x)
    one_step(model, optimizer, new)
    assert len(captured["refs"]) == 2
    for refs, expected in zip(captured["refs"], captured["expected"]):
        for got, want in zip(refs, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert_buffers(model, expected_stats)


def test_spg_importance_uses_batch_statistics_and_restores_running_ones() -> None:
    model = bn_mlp()
    batch = data((8,), count=16)
    warm_up(model, batch.x)
    model.body[2].eval()  # a norm the user keeps in eval mode stays so
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = SPG(importance_batch_size=100).attach(model, optimizer, seed=0)
    before = buffers(model)
    sums = method.head_gradient_sums(0, batch)
    assert_buffers(model, before)
    assert model.training and not model.body[2].training
    model.body[2].train()
    shared = lambda m: [p for n, p in m.named_parameters() if not n.startswith("head")]  # noqa: E731
    for got, want in zip(sums[0], train_mode_gradient(model, batch, shared)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# --- teachers and snapshots --------------------------------------------------------------------
def test_lwf_teacher_is_the_model_as_evaluated_and_keeps_its_statistics() -> None:
    model = bn_mlp()
    batch = data((8,), count=8)
    warm_up(model, batch.x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = LwF().attach(model, optimizer, seed=0)
    method.before_task(0)
    one_step(model, optimizer, batch)
    boundary = copy.deepcopy(model).eval()
    method.before_task(1)
    assert not method.teacher.training
    with torch.no_grad():
        torch.testing.assert_close(method.teacher(batch.x), boundary(batch.x), rtol=0, atol=0)
    expected_stats = statistics_after_forward(model, batch.x)
    output = model(batch.x)
    loss = F.cross_entropy(output, batch.y) + method.penalty(batch, output)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert_buffers(model, expected_stats)  # the teacher's pass did not touch the student's
    assert_buffers(method.teacher, buffers(boundary))  # nor its own

    state = method.state_dict()
    assert any(key.endswith("running_mean") for key in state["teacher"])
    saved = io.BytesIO()
    torch.save(state, saved)
    saved.seek(0)
    other_model = bn_mlp(seed=1)
    other = LwF().attach(other_model, torch.optim.SGD(other_model.parameters(), lr=0.1), seed=0)
    other.load_state_dict(torch.load(saved, weights_only=True))
    assert_buffers(other.teacher, buffers(boundary))


def test_frozen_copy_has_the_buffers_and_its_passes_touch_nothing() -> None:
    model = bn_cnn()
    x = data((1, 10, 10), count=6).x
    warm_up(model, x)
    before = buffers(model)
    clone = frozen_copy(model)
    assert_buffers(clone, before)
    assert not any(m.training for m in clone.modules())
    with torch.no_grad():
        clone(x)
    assert_buffers(clone, before)
    assert_buffers(model, before)
    assert model.training


# --- continual backprop --------------------------------------------------------------------------
def test_cbp_resets_the_batchnorm2d_entries_of_a_replaced_conv_unit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method = CBP(maturity_threshold=3, replacement_rate=1.0).attach(model, optimizer, seed=0)
    generator = torch.Generator().manual_seed(0)
    batch = lambda: (torch.randn(8, 1, 8, 8, generator=generator) + 1,  # noqa: E731
                     torch.randint(0, 3, (8,), generator=generator))
    for _ in range(3):
        one_step(model, optimizer, Batch(*batch()))
    ages = method.ages  # only unit 2 becomes eligible at the next step
    ages[0][[0, 1, 3]] = 0
    method.ages = ages
    one_step(model, optimizer, Batch(*batch()))
    assert method.replaced == [1]
    norm = model[1]
    assert norm.weight[2] == 1 and norm.bias[2] == 0
    assert norm.running_mean[2] == 0 and norm.running_var[2] == 1
    others = [0, 1, 3]
    assert torch.all(norm.weight[others] != 1) and torch.all(norm.running_var[others] != 1)


def test_cbp_features_come_from_the_training_pass_not_from_probe_passes() -> None:
    model = bn_mlp()
    x = data((8,), count=8).x
    cbp = CBP().attach(model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
    model.train()
    model(x)
    recorded = list(cbp._features)
    with probe(model, None):
        assert is_probing()
        model(x[:3])
    assert not is_probing()
    assert all(a is b for a, b in zip(cbp._features, recorded))
    cbp.detach()

    # composed with A-GEM, whose reference pass runs between the training pass and the step
    model = bn_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = build_method("agem+cbp", {"agem": {"ref_batch_size": 5, "memory_size": 20}})
    method.attach(model, optimizer, seed=0)
    agem, cbp = method.members
    agem.after_task(0, data((8,), count=20, seed=4))
    one_step(model, optimizer, data((8,), count=8, seed=5))
    assert [len(f) for f in cbp._features] == [8, 8]  # the training batch, not the 5


# --- lottery -------------------------------------------------------------------------------------
def lottery_run(task_norm_stats: bool):
    scenario = toy_scenario("task")
    model = bn_mlp(scenario.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = Lottery(rounds=1, round_steps=3, task_norm_stats=task_norm_stats)
    method.attach(model, optimizer, scenario.readout, seed=0)
    test = scenario.tasks[0].test_data()
    generator = torch.Generator().manual_seed(0)
    logits = []
    for t in (0, 1):
        scenario.readout.begin_task(t)
        method.before_task(t)
        task_data = scenario.tasks[t].train_data()
        train_task(model, optimizer, method, scenario.readout, task_data, batch_size=8,
                   epochs=2, generator=generator)
        method.after_task(t, task_data)
        current = buffers(model)
        method.evaluation_task(0)
        with training_mode(model, False), torch.no_grad():
            logits.append(model(test.x))
        method.evaluation_task(None)
        assert_buffers(model, current)  # the current statistics are back
    return method, model, logits


def test_lottery_evaluates_each_task_with_its_own_running_statistics() -> None:
    method, model, logits = lottery_run(task_norm_stats=True)
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)  # no forgetting at all
    _, _, drifting = lottery_run(task_norm_stats=False)
    assert not torch.allclose(drifting[1], drifting[0])  # what the per-task statistics prevent

    saved = io.BytesIO()
    torch.save(method.state_dict(), saved)
    saved.seek(0)
    other_model = bn_mlp(model.head.out_features, seed=1)
    other = Lottery(rounds=1, round_steps=3).attach(
        other_model, torch.optim.SGD(other_model.parameters(), lr=0.1), seed=0)
    other.load_state_dict(torch.load(saved, weights_only=True))
    assert sorted(other.norm_stats) == [0, 1]
    for a, b in zip(other.norm_stats[0], method.norm_stats[0]):
        assert torch.equal(a, b)


def test_lottery_rewinds_the_running_statistics_with_the_weights() -> None:
    model = bn_mlp()
    batch = data((8,), count=8)
    warm_up(model, batch.x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = Lottery(rounds=1, round_steps=3).attach(model, optimizer, seed=0)
    method.before_task(0)
    start = buffers(model)
    for step in range(3):
        one_step(model, optimizer, batch)
        if step < 2:
            assert tracked(model) == int(start["body.2.num_batches_tracked"]) + step + 1
    assert method.rounds_done == 1
    assert_buffers(model, start)


# --- diagnostics and the helpers ------------------------------------------------------------------
def test_diagnostics_leave_statistics_and_modes_alone() -> None:
    model = bn_cnn()
    probe = data((1, 10, 10), count=12)
    warm_up(model, probe.x)
    model.conv[1].eval()
    before = buffers(model)
    result = diagnose(model, probe, lr=0.1)
    assert 0 <= result["dead_units"] <= 1
    assert_buffers(model, before)
    assert model.training and not model.conv[1].training


def test_probe_restores_running_stats_after_train_passes_and_errors() -> None:
    model = bn_cnn()
    x = data((1, 10, 10), count=6).x
    warm_up(model, x)
    before = buffers(model)
    with probe(model, None):
        model(x + 5)
        assert tracked(model) == int(before["conv.1.num_batches_tracked"]) + 1
    assert_buffers(model, before)
    with pytest.raises(RuntimeError), probe(model, None):
        model(x - 5)
        raise RuntimeError("inside")
    assert_buffers(model, before)
    assert not is_probing()


def test_running_stats_follow_buffers_that_were_replaced() -> None:
    model = bn_mlp()
    stats = RunningStats(model)
    model.double()  # replaces the floating buffers, as model.to(device) does
    x = data((8,), count=6).x.double()
    warm_up(model, x)
    before = buffers(model)
    for _ in range(2):  # the second use reuses its saved copies
        with stats.frozen():
            model(x * 3)
        assert_buffers(model, before)
    with RunningStats(nn.Linear(2, 2)).frozen():  # nothing to keep
        pass


def test_save_and_load_running_stats_round_trip() -> None:
    model = bn_mlp()
    x = data((8,), count=6).x
    warm_up(model, x)
    saved = save_running_stats(model)
    assert len(saved) == 2 * 3  # two BatchNorm1d: mean, variance, batches tracked
    before = buffers(model)
    warm_up(model, x * 2)
    load_running_stats(model, saved)
    assert_buffers(model, before)
    with pytest.raises(ValueError, match="6 tensors"):
        load_running_stats(bn_cnn(), saved)


def test_training_mode_gives_each_module_its_own_mode_back() -> None:
    model = bn_mlp()
    model.train()
    model.body[2].eval()
    with training_mode(model, False):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.body[2].training
    with training_mode(model, True):
        assert all(m.training for m in model.modules())
    assert model.training and not model.body[2].training
