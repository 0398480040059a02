"""A lifelong method in a plain Accelerate loop with gradient accumulation trains as lifelong's own
loop on batches twice the size: its gradient hooks run once per real update."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp
from tiny_hf import CountingMethod, collate, lifelong_loop, tiny_bert, token_rows
from torch.utils.data import DataLoader

from lifelong.core import Batch, Composite, build_method
from lifelong.integrations.accelerate import attach, task_batches, training_loss
from lifelong.methods import AGEM, EWC
from lifelong.training.loop import training_step

accelerate = pytest.importorskip("accelerate", reason="the hf extra is not installed")


def reset_accelerate() -> None:
    """Accelerate keeps process-wide state; each loop builds its own Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate()
    yield
    reset_accelerate()


def accelerate_loop(model, method, tasks, *, accumulation: int, micro_batch: int) -> None:
    """The loop of lifelong.integrations.accelerate's docstring."""
    reset_accelerate()
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    method = attach(accelerator, model, optimizer, method, seed=0)
    for task, rows in enumerate(tasks):
        loader = accelerator.prepare(DataLoader(rows, batch_size=micro_batch, collate_fn=collate))
        method.before_task(task)
        for inputs in loader:
            with accelerator.accumulate(model):
                loss, _ = training_loss(method, model, inputs, task=task)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
        method.after_task(task, task_batches(method, loader, task=task))
    method.detach()


def build(name: str) -> Composite:
    first = EWC({"lambda": 100.0}) if name == "ewc" else AGEM(
        {"buffer": "class-balanced", "memory_size": 6, "ref_batch_size": 4})
    return Composite([first, CountingMethod()])


@pytest.mark.parametrize("name", ["ewc", "agem"])
def test_accumulating_two_micro_batches_equals_lifelongs_loop_on_double_batches(name) -> None:
    tasks = [token_rows(0), token_rows(1)]
    model, reference, naive = tiny_bert(), tiny_bert(), tiny_bert()
    method = build(name)
    accelerate_loop(model, method, tasks, accumulation=2, micro_batch=2)
    assert len(method.members[1].grad_norms) == 4  # 8 samples, 4 per update, 2 tasks
    lifelong_loop(reference, build(name), tasks, batch_size=4)
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want)
    lifelong_loop(naive, build_method("naive"), tasks, batch_size=4)
    assert max(float((a - b).detach().abs().max())
               for a, b in zip(model.parameters(), naive.parameters())) > 1e-3  # it acted


def test_transform_acts_on_the_accumulated_gradient_of_the_task_loss() -> None:
    """The gradient a hook sees is the mean over both micro-batches, as for one double batch."""
    rows = token_rows(0, count=4)
    model, reference = tiny_bert(), tiny_bert()
    counter = CountingMethod()
    accelerate_loop(model, counter, [rows], accumulation=2, micro_batch=2)
    loss = F.cross_entropy(
        reference(**{k: v for k, v in collate(rows).items() if k != "labels"}).logits,
        collate(rows)["labels"])
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    expected = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    assert counter.grad_norms == pytest.approx([expected], rel=1e-5)


def test_a_plain_model_adds_the_penalty_in_the_users_own_loop() -> None:
    """No Hugging Face model: the method attaches to the model itself, as the docstring says."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    weights = {}
    for accumulation in (1, 2):
        reset_accelerate()
        accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
        model = tiny_mlp(outputs=2)
        model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        method = attach(accelerator, model, optimizer, build_method("ewc+lwf"), seed=0)
        assert method.model is model
        for task in range(2):
            method.before_task(task)
            size = 8 // accumulation
            for start in range(0, 16, size):
                with accelerator.accumulate(model):
                    batch = method.prepare_batch(Batch(x[start:start + size] + task,
                                                       y[start:start + size]))
                    output = model(batch.x)
                    loss = method.add_penalty(F.cross_entropy(output, batch.y), batch, output)
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
            method.after_task(task, Batch(x + task, y))
        method.detach()
        weights[accumulation] = [p.detach().clone() for p in model.parameters()]
    reference = tiny_mlp(outputs=2)  # lifelong's own loop, batches of 8
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    method = build_method("ewc+lwf").attach(reference, optimizer, seed=0)
    for task in range(2):
        method.before_task(task)
        for start in range(0, 16, 8):
            batch = Batch(x[start:start + 8] + task, y[start:start + 8])
            training_step(reference, optimizer, batch, None, None, method.penalty)
        method.after_task(task, Batch(x + task, y))
    for accumulation in (1, 2):
        for got, want in zip(weights[accumulation], reference.parameters()):
            torch.testing.assert_close(got, want)
