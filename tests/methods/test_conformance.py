"""Checks every registered method must pass; a new method is covered by registering it.

- attach/detach leaves no hook behind (optimizer, modules, parameters);
- state_dict() round-trips through torch.save / torch.load(weights_only=True), and a restored
  method continues exactly as the original would have;
- a short two-task run changes the weights and reduces the training loss;
- the method composes with replay (both act).
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario, train_tasks

from lifelong.core import Batch, build_method, get_method_class, list_methods
from lifelong.scenarios import Scenario
from lifelong.scenarios.task import Task

# Small settings so every check runs in milliseconds; other keys keep their defaults.
SETTINGS = {
    "replay": {"memory_size": 24},
    "agem": {"memory_size": 24, "ref_batch_size": 16},
    "ewc": {"lambda": 10.0},
    "l2": {"lambda": 0.1},
    "der": {"memory_size": 24},
    "derpp": {"memory_size": 24},
    "mas": {"lambda": 1.0},
    "si": {"c": 1.0},
    "gem": {"memory_per_task": 16},
    "lottery": {"rounds": 2, "round_steps": 4},  # prunes at steps 4 and 8 of 6-18 step tasks
    "das": {"general": "none"},  # the proxy KL needs dropout, which the round trip cannot redraw
}
METHODS = sorted(list_methods())
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
              "_state_dict_hooks", "_load_state_dict_pre_hooks")


def make(spec: str):
    names = spec.split("+")
    return build_method(spec, {n: SETTINGS[n] for n in names if n in SETTINGS})


def hooks(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    count = len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)
    for module in model.modules():
        count += sum(len(getattr(module, name, {}) or {}) for name in HOOK_DICTS)
    for p in model.parameters():
        count += len(p._backward_hooks or {}) + len(getattr(p, "_post_accumulate_grad_hooks",
                                                            None) or {})
    return count


def run_tasks(method, model, optimizer, scenario, tasks=(0, 1), epochs=3, seed=0):
    train_tasks(method, model, optimizer, scenario, tasks, epochs=epochs,
                generator=torch.Generator().manual_seed(seed))


def as_tokens(scenario: Scenario) -> Scenario:
    """The toy blobs as token ids for methods that need a transformer (`needs_transformer`):
    feature i of a sample becomes id 4 + 16·i + its value's bucket (16 buckets of 0.5)."""
    def convert(batch: Batch) -> Batch:
        buckets = ((batch.x + 4) * 2).round().clamp(0, 15).long()
        ids = 4 + 16 * torch.arange(batch.x.shape[1]) + buckets
        return Batch(ids, batch.y, batch.task_ids)

    tasks = [Task(t.id, t.name, t.classes, lambda t=t: convert(t.train_data()),
                  lambda t=t: convert(t.test_data())) for t in scenario.tasks]
    return dataclasses.replace(scenario, tasks=tasks)


def needs_transformer(spec: str) -> bool:
    return any(get_method_class(name).needs_transformer for name in spec.split("+"))


def model_for(spec: str, scenario: Scenario, seed: int = 0) -> torch.nn.Module:
    if needs_transformer(spec):  # a 2-layer BERT classifier, dropout off (deterministic)
        from lifelong.models.hf import build_hf_model

        torch.manual_seed(seed)
        return build_hf_model("tiny-bert", scenario.num_outputs, generation=False,
                              vocab_size=260, dropout=0.0)
    return tiny_mlp(outputs=scenario.num_outputs, seed=seed)


def setup(spec: str, kind: str = "task", seed: int = 0):
    scenario = toy_scenario(kind)
    if needs_transformer(spec):
        scenario = as_tokens(scenario)
    model = model_for(spec, scenario, seed)
    if needs_transformer(spec):  # SGD barely moves a randomly initialised post-norm BERT
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method = make(spec)
    return scenario, model, optimizer, method


@pytest.mark.parametrize("name", METHODS)
def test_every_method_is_documented(name: str) -> None:
    cls = type(make(name))
    assert cls.__doc__ or cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__
    for key, _, _, help_text in cls.Config.describe():
        assert help_text, f"{name}.{key} has no help text"


@pytest.mark.parametrize("name", METHODS)
def test_attach_detach_leaves_no_hooks(name: str) -> None:
    scenario, model, optimizer, method = setup(name)
    before = hooks(model, optimizer)
    method.attach(model, optimizer, scenario.readout, seed=0)
    run_tasks(method, model, optimizer, scenario, tasks=(0, 1), epochs=1)
    method.detach()
    assert hooks(model, optimizer) == before
    assert method.model is None


@pytest.mark.parametrize("name", METHODS)
def test_two_tasks_change_weights_and_reduce_loss(name: str) -> None:
    scenario, model, optimizer, method = setup(name)
    method.attach(model, optimizer, scenario.readout, seed=0)
    initial = [p.detach().clone() for p in model.parameters()]
    run_tasks(method, model, optimizer, scenario, tasks=(0,))
    data = scenario.tasks[1].train_data()

    def loss() -> float:
        with torch.no_grad():
            return F.cross_entropy(scenario.readout.select(model(data.x), data.task_ids),
                                   data.y).item()

    scenario.readout.begin_task(1)
    before = loss()
    run_tasks(method, model, optimizer, scenario, tasks=(1,))
    assert loss() < 0.5 * before
    assert any(not torch.equal(a, p) for a, p in zip(initial, model.parameters()))


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    scenario, model, optimizer, method = setup(name)
    method.attach(model, optimizer, scenario.readout, seed=0)
    run_tasks(method, model, optimizer, scenario, tasks=(0, 1), epochs=2)

    buffer = io.BytesIO()
    torch.save({"method": method.state_dict(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # no pickled code in a method's state

    # the order of lifelong.training.checkpoint.load_checkpoint: attach first (LoRA methods add
    # adapters to the model and parameter groups to the optimizer), then load model, optimizer,
    # method
    scenario2, model2, optimizer2, method2 = setup(name, seed=1)
    method2.attach(model2, optimizer2, scenario2.readout, seed=123)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    for t in (0, 1):
        scenario2.readout.begin_task(t)
    method2.load_state_dict(saved["method"])
    assert _equal(method2.state_dict(), method.state_dict())

    # both continue with task 2... of the toy (task 1 again with a fresh data order)
    run_tasks(method, model, optimizer, scenario, tasks=(1,), epochs=1, seed=7)
    run_tasks(method2, model2, optimizer2, scenario2, tasks=(1,), epochs=1, seed=7)
    for a, b in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", [m for m in METHODS if m not in ("naive", "joint", "replay")])
def test_composes_with_replay(name: str) -> None:
    # class-incremental, the hardest, unless the method supports task-incremental only
    kind = "class" if "class" in type(make(name)).scenarios else "task"
    scenario, model, optimizer, method = setup(f"{name}+replay", kind=kind)
    fresh = make(name)
    other = model_for(name, scenario)
    fresh.attach(other, torch.optim.SGD(other.parameters(), 0.1), scenario.readout, seed=0)
    method.attach(model, optimizer, scenario.readout, seed=0)
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    run_tasks(method, model, optimizer, scenario, tasks=(0, 1), epochs=2)
    member, replay = method.members
    assert len(replay.memory) > 0
    assert max(sizes) > 8  # replayed samples were added to the batches
    assert not _equal(member.state_dict(), fresh.state_dict())  # the other method acted too


@pytest.mark.parametrize("spec,message", [
    ("naive+ewc", "naive is plain fine-tuning"),
    ("joint+replay", "joint does not combine"),
    ("ewc+ewc", "names ewc twice"),
    ("ewc+", "not valid"),
    ("ewk", "did you mean 'ewc'"),
])
def test_impossible_compositions_are_refused(spec: str, message: str) -> None:
    from lifelong.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        build_method(spec)
