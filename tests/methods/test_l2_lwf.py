"""L2-anchor and LwF against their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario

from lifelong.core import Batch
from lifelong.core.probe import is_probing
from lifelong.methods import L2, LwF


def _shift(model, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(value * torch.randn_like(p))


def _penalty_gradient(method, model) -> list[torch.Tensor]:
    """What the method adds to the gradient at the optimizer step."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    method.transform_grads()
    return [p.grad.clone() for p in model.parameters()]


def test_l2_anchor_is_half_lambda_squared_distance_to_previous_weights() -> None:
    model = tiny_mlp()
    method = L2(lambda_=3.0).attach(model, torch.optim.SGD(model.parameters(), 0.1), seed=0)
    batch = Batch(torch.randn(4, 8), torch.randint(0, 4, (4,)))
    assert method.penalty_value() is None  # nothing to anchor to yet
    assert all(g.eq(0).all() for g in _penalty_gradient(method, model))
    method.after_task(0, batch)
    anchor = [p.detach().clone() for p in model.parameters()]
    _shift(model, 0.2)
    expected = 1.5 * sum((p - a).square().sum() for p, a in zip(model.parameters(), anchor))
    torch.testing.assert_close(method.penalty_value(), expected.detach())
    for g, e in zip(_penalty_gradient(method, model),
                    torch.autograd.grad(expected, list(model.parameters()))):
        torch.testing.assert_close(g, e)


def test_l2_to_zero_is_weight_decay_from_the_start() -> None:
    model = tiny_mlp()
    method = L2(lambda_=0.5, anchor="zero").attach(model, torch.optim.SGD(model.parameters(), 1),
                                                   seed=0)
    assert not method.needs_task_boundaries
    expected = 0.25 * sum(p.square().sum() for p in model.parameters())
    torch.testing.assert_close(method.penalty_value(), expected.detach())
    for g, p in zip(_penalty_gradient(method, model), model.parameters()):
        torch.testing.assert_close(g, 0.5 * p.detach())  # the gradient of weight decay


def kd(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """T² · KL(p_teacher || p_student), summed over classes, averaged over samples."""
    p = F.softmax(teacher / T, dim=-1)
    return (p * (p.log() - F.log_softmax(student / T, dim=-1))).sum(-1).mean() * T * T


@pytest.mark.parametrize("weighting", ["constant", "tasks"])
@pytest.mark.parametrize("kind", ["task", "domain", "class"])
def test_lwf_distils_the_old_tasks_outputs(kind: str, weighting: str) -> None:
    scenario = toy_scenario(kind, num_classes=6)  # three tasks of two classes
    readout = scenario.readout
    model = tiny_mlp(outputs=scenario.num_outputs)
    method = LwF(alpha=0.7, temperature=2.0, weighting=weighting).attach(
        model, torch.optim.SGD(model.parameters(), 0.1), readout, seed=0)
    for task in (0, 1, 2):
        readout.begin_task(task)
        method.before_task(task)  # at task 2 the teacher is the model as it is now
        if task == 2:
            teacher_model = tiny_mlp(outputs=scenario.num_outputs)
            teacher_model.load_state_dict(model.state_dict())
        _shift(model, 0.3)  # "training" changes the weights

    batch = scenario.tasks[2].train_data().select(slice(0, 6))
    output = model(batch.x)
    with torch.no_grad():
        old = teacher_model(batch.x)
    if kind == "task":  # one distillation per old head, averaged
        heads = [readout.units(t) for t in (0, 1)]
        expected = sum(kd(output[:, h], old[:, h], 2.0) for h in heads) / len(heads)
    elif kind == "class":  # the old classes together (units of tasks 0 and 1)
        units = readout.units([0, 1])
        assert units == [0, 1, 2, 3]
        expected = kd(output[:, units], old[:, units], 2.0)
    else:
        expected = kd(output, old, 2.0)
    if weighting == "tasks" and kind != "class":  # van de Ven: × the 2 old tasks
        expected = 2 * expected
    got = method.penalty(batch, output)
    torch.testing.assert_close(got, 0.7 * expected)
    params = list(model.parameters())
    for g, e in zip(torch.autograd.grad(got, params, retain_graph=True),
                    torch.autograd.grad(0.7 * expected, params)):
        torch.testing.assert_close(g, e)


def test_lwf_teacher_has_no_grad_and_no_hooks_of_the_student() -> None:
    model = tiny_mlp()
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    method = LwF().attach(model, None, seed=0)
    method.before_task(0)
    assert method.teacher is None
    method.before_task(1)
    assert all(not p.requires_grad for p in method.teacher.parameters())
    calls.clear()
    method.teacher(torch.randn(2, 8))
    assert calls == []  # the copy does not fire the original's hooks


def test_lwf_teacher_pass_is_a_probe() -> None:
    model = tiny_mlp()
    method = LwF().attach(model, None, seed=0)
    method.before_task(1)
    probing = []
    method.teacher.register_forward_hook(lambda *a: probing.append(is_probing()))
    x = torch.randn(3, 8)
    method.penalty(Batch(x, torch.zeros(3, dtype=torch.long)), model(x))
    assert probing == [True]  # methods watching training passes (MIGU, CBP) ignore it


def test_distillation_fast_path_equals_padded_path() -> None:
    from lifelong.functional import distillation_loss

    student, teacher = torch.randn(5, 3, 4, requires_grad=True), torch.randn(5, 3, 4)
    fast = distillation_loss(student, teacher, 2.0)
    general = distillation_loss(student, teacher, 2.0, padded=True)
    torch.testing.assert_close(fast, general)
    torch.testing.assert_close(fast, kd(student.reshape(15, 4), teacher.reshape(15, 4), 2.0))
    padded_teacher = teacher.clone()
    padded_teacher[:, :, 3] = float("-inf")  # a head with 3 labels padded to 4 units
    padded_student = student.masked_fill(torch.isinf(padded_teacher), float("-inf"))
    value = distillation_loss(padded_student, padded_teacher, 2.0, padded=True)
    expected = kd(student[:, :, :3].reshape(15, 3), teacher[:, :, :3].reshape(15, 3), 2.0)
    torch.testing.assert_close(value, expected)
    (grad,) = torch.autograd.grad(value, student)
    assert torch.isfinite(grad).all() and grad[:, :, 3].eq(0).all()
