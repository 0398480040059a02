"""lifelong.optim.UPGD: the same update as the upgd method followed by SGD."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import tiny_mlp

from lifelong.core import Batch
from lifelong.errors import ConfigError
from lifelong.methods.upgd import UPGD as UPGDMethod
from lifelong.optim import UPGD


def batches(count: int, seed: int = 0, dtype=torch.float32) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    return [Batch(torch.randn(5, 8, generator=generator).to(dtype),
                  torch.randint(0, 4, (5,), generator=generator)) for _ in range(count)]


def train(model, optimizer, data, scheduler=None) -> None:
    for batch in data:
        optimizer.zero_grad()
        batch.loss(model(batch.x)).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def with_method(data, dtype=torch.float32, scheduler=False, **options):
    """The reference: the upgd method as a transform, then torch's SGD."""
    model = tiny_mlp().to(dtype)
    sgd = torch.optim.SGD(model.parameters(), lr=0.2)
    UPGDMethod(**options).attach(model, sgd, seed=7)
    train(model, sgd, data, torch.optim.lr_scheduler.StepLR(sgd, 2, 0.5) if scheduler else None)
    return model


def with_optimizer(data, dtype=torch.float32, scheduler=False, **options):
    model = tiny_mlp().to(dtype)
    optimizer = UPGD(model.parameters(), lr=0.2, seed=7, **options)
    train(model, optimizer, data,
          torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5) if scheduler else None)
    return model, optimizer


def assert_same(a, b, tol=1e-6) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)


@pytest.mark.parametrize("options", [
    {"beta_utility": 0.9},
    {"beta_utility": 0.9, "sigma": 0.05},
    {"beta_utility": 0.9, "sigma": 0.05, "protect": False},
    {"beta_utility": 0.5, "sigma": 0.05, "weight_decay": 0.3, "scaling": "local"},
])
def test_the_step_equals_the_method_and_sgd(options) -> None:
    data = batches(6)
    model, optimizer = with_optimizer(data, **options)
    assert_same(model, with_method(data, **options))
    # the optimizer owns the update: the gradients stay the loss's own
    optimizer.zero_grad()
    data[-1].loss(model(data[-1].x)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_pytorch_path_gives_the_same_update(dtype) -> None:
    options = {"beta_utility": 0.9, "sigma": 0.05}
    data = batches(6, dtype=dtype)
    model, optimizer = with_optimizer(data, dtype=dtype, **options)
    assert_same(model, with_method(data, dtype=dtype, **options), tol=0)


def test_learning_rate_schedules_apply() -> None:
    data = batches(6)
    model, optimizer = with_optimizer(data, scheduler=True, beta_utility=0.9)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.5 ** 3)
    assert_same(model, with_method(data, scheduler=True, beta_utility=0.9))
    unscheduled, _ = with_optimizer(data, beta_utility=0.9)
    assert not all(torch.allclose(p, q) for p, q in zip(model.parameters(),
                                                          unscheduled.parameters()))


def test_state_dict_continues_exactly() -> None:
    data = batches(8)
    options = {"beta_utility": 0.9, "sigma": 0.1}
    whole, _ = with_optimizer(data, **options)
    half, optimizer = with_optimizer(data[:4], **options)
    buffer = io.BytesIO()
    torch.save({"model": half.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    model = tiny_mlp()
    model.load_state_dict(saved["model"])
    restored = UPGD(model.parameters(), lr=0.2, seed=123, **options)  # another seed: overwritten
    restored.load_state_dict(saved["optimizer"])
    train(model, restored, data[4:])
    assert_same(model, whole, tol=0)
    with pytest.raises(ValueError, match="'upgd' entry"):
        restored.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


def test_frozen_parameters_take_no_step_noise_or_decay() -> None:
    data = batches(3)
    model = tiny_mlp()
    model[0].bias.requires_grad_(False)
    frozen = model[0].bias.detach().clone()
    optimizer = UPGD(model.parameters(), lr=0.2, seed=7, sigma=1.0, weight_decay=0.5)
    train(model, optimizer, data)
    assert torch.equal(model[0].bias, frozen)
    reference = tiny_mlp()  # the method with SGD: frozen parameters are not the method's
    reference[0].bias.requires_grad_(False)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.2)
    UPGDMethod(sigma=1.0, weight_decay=0.5).attach(reference, sgd, seed=7)
    train(reference, sgd, data)
    assert_same(model, reference)


def test_data_parallel_replicas_share_the_noise_generator(monkeypatch) -> None:
    import lifelong.optim.upgd as optim_module

    broadcast = []
    monkeypatch.setattr(optim_module, "broadcast_generator_", broadcast.append)
    optimizer = UPGD(tiny_mlp().parameters(), lr=0.2, seed=7)
    assert broadcast == [optimizer.generator]  # rank 0's state, before any draw


def test_a_state_from_before_the_functional_core_is_refused_in_one_line() -> None:
    optimizer = UPGD(tiny_mlp().parameters(), lr=0.2)
    old = optimizer.state_dict()
    old["upgd"] = {"utility": old["upgd"]["trace"], "utility_origin": 0, "steps": 3}
    with pytest.raises(ValueError, match="saved by an older lifelong"):
        optimizer.load_state_dict(old)


@pytest.mark.parametrize("make,message", [
    (lambda m: UPGD(m.parameters(), lr=0.0), "lr must be > 0"),
    (lambda m: UPGD([{"params": [m[0].weight]}, {"params": [m[0].bias]}]), "one parameter group"),
    (lambda m: UPGD(m.parameters(), utility="second"), "'utility' is not an option"),
    (lambda m: UPGD(m.parameters(), sigma=-1.0), "sigma"),
    (lambda m: UPGD(m.parameters(), fused=True), "^upgd.fused was removed: the compiled CPU"),
    (lambda m: UPGD(m.parameters(), noise="counter"), "^upgd.noise was removed: the noise is"),
])
def test_bad_arguments_are_refused(make, message) -> None:
    with pytest.raises((ValueError, ConfigError), match=message):
        make(tiny_mlp())
