"""Checks every registered method must pass, over the rows of tests/method_cases.py (several
configurations per method); a new method is covered by adding its rows there.

- attach/detach leaves no hook behind (optimizer, modules, parameters);
- state_dict() round-trips through torch.save / torch.load(weights_only=True), and a restored
  method continues exactly as the original would have;
- a short two-task run changes the weights and reduces the training loss;
- the method composes with replay (both act);
- every registered method has a row.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario, train_tasks
from method_cases import CASES, MODELS, SUITES, Case, cases_for, each_case, small_cnn

from lifelong.core import Batch, build_method, get_method_class, list_methods
from lifelong.core.compose import method_settings
from lifelong.scenarios import Scenario
from lifelong.scenarios.task import Task

METHODS = sorted(list_methods())
REPLAY = {"memory_size": 24}  # the replay composed with every method
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
              "_state_dict_hooks", "_load_state_dict_pre_hooks")


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


def model_for(case: Case, scenario: Scenario, seed: int = 0) -> torch.nn.Module:
    if case.model == "bert":  # a 2-layer BERT classifier, dropout off (deterministic)
        from lifelong.models.hf import build_hf_model

        torch.manual_seed(seed)
        return build_hf_model("tiny-bert", scenario.num_outputs, generation=False,
                              vocab_size=260, dropout=0.0)
    if case.model == "cnn":
        return small_cnn(scenario.num_outputs, seed=seed)
    return tiny_mlp(outputs=scenario.num_outputs, seed=seed)


def setup(case: Case, kind: str = "task", seed: int = 0, lr: float = 0.05, **extra):
    scenario = toy_scenario(kind)
    if case.needs_transformer:
        scenario = as_tokens(scenario)
    model = model_for(case, scenario, seed)
    if case.needs_transformer:  # SGD barely moves a randomly initialised post-norm BERT
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    method = case.build(**extra)
    return scenario, model, optimizer, method


def test_every_registered_method_has_a_case() -> None:
    covered = {name for case in cases_for("conformance") for name in case.names}
    missing = set(METHODS) - covered
    assert not missing, f"add rows to tests/method_cases.py for: {sorted(missing)}"
    normable = {n for n in METHODS if not get_method_class(n).needs_transformer}
    covered = {name for case in cases_for("batchnorm") for name in case.names}
    assert not normable - covered, f"no BatchNorm row for: {sorted(normable - covered)}"


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_the_table_is_consistent(case: Case) -> None:
    assert [c.label for c in CASES].count(case.label) == 1, "labels name one row each"
    assert case.model in MODELS
    assert case.needs_transformer == (case.model == "bert")
    assert set(case.skip) <= set(SUITES) and all(case.skip.values()), "a skip gives a reason"
    assert set(case.settings) <= set(case.names)
    method = case.build()  # the settings are accepted
    if case.settings and "+" not in case.spec:
        config = method.config.to_dict()
        for key, value in case.settings[case.spec].items():  # and reach the config
            assert config[key] == value, key


@pytest.mark.parametrize("suite", SUITES)
def test_a_suite_runs_each_configuration_once(suite: str) -> None:
    seen: dict[str, str] = {}
    for case in cases_for(suite):
        config = method_settings(case.build())  # every key, defaults included
        key = repr((case.spec, config, case.model, suite == "ddp" and case.rank_seeds))
        assert key not in seen, f"{case.label} repeats {seen.get(key)}"
        seen[key] = case.label


@pytest.mark.parametrize("name", METHODS)
def test_every_method_is_documented(name: str) -> None:
    cls = type(build_method(name))
    assert cls.__doc__ or cls.__module__ and __import__(cls.__module__, fromlist=["x"]).__doc__
    for key, _, _, help_text in cls.Config.describe():
        assert help_text, f"{name}.{key} has no help text"


@each_case("conformance")
def test_attach_detach_leaves_no_hooks(case: Case) -> None:
    scenario, model, optimizer, method = setup(case)
    before = hooks(model, optimizer)
    method.attach(model, optimizer, scenario.readout, seed=0)
    run_tasks(method, model, optimizer, scenario, tasks=(0, 1), epochs=1)
    method.detach()
    assert hooks(model, optimizer) == before
    assert method.model is None


@each_case("conformance")
def test_two_tasks_change_weights_and_reduce_loss(case: Case) -> None:
    scenario, model, optimizer, method = setup(case)
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


@each_case("conformance")
def test_state_dict_round_trip_continues_identically(case: Case) -> None:
    scenario, model, optimizer, method = setup(case)
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
    scenario2, model2, optimizer2, method2 = setup(case, seed=1)
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


@each_case("conformance", where=lambda case: "+" not in case.spec
           and case.spec not in ("naive", "joint", "replay"))
def test_composes_with_replay(case: Case) -> None:
    # class-incremental, the hardest, unless the method supports task-incremental only
    kind = "class" if "class" in get_method_class(case.spec).scenarios else "task"
    composed = dataclasses.replace(case, spec=f"{case.spec}+replay")
    # lr 0.01: at 0.05, LoRA's adapters (scaled by α/r = 16) diverge to NaN in class-IL, which
    # made the last assertion hold trivially (NaN equals nothing); a divergence now stops
    scenario, model, optimizer, method = setup(composed, kind=kind, lr=0.01, replay=REPLAY)
    fresh = case.build()
    other = model_for(case, scenario)
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
