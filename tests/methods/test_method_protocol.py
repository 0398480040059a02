"""The parts of the method protocol every method shares: capabilities declared one way, the
registry's rules, and trainable parameters that change while methods are attached."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from helpers import tiny_mlp, toy_scenario, train_tasks

from lifelong.core import Method, build_method, check_compatible, get_method_class, list_methods
from lifelong.core.method import CAPABILITIES, NoConfig
from lifelong.core.registry import register_method
from lifelong.errors import ConfigError


@pytest.mark.parametrize("name", list_methods())
def test_capabilities_are_class_attributes_true_for_the_default_config(name: str) -> None:
    cls = get_method_class(name)
    method = cls()
    for capability in CAPABILITIES:
        declared = inspect.getattr_static(cls, capability)
        assert not isinstance(declared, property), f"{name}.{capability} is a property"
        assert getattr(method, capability) == declared, f"{name}.{capability}"


@pytest.mark.parametrize("name,settings,capability,value", [
    ("migu", {"mask_first_task": False}, "needs_task_boundaries", True),
    ("replay", {"weighting": "tasks"}, "needs_task_boundaries", True),
    ("replay", {"buffer": "class-balanced"}, "needs_task_boundaries", True),
    ("agem", {"buffer": "reservoir"}, "needs_task_boundaries", False),
    ("l2", {"anchor": "zero"}, "needs_task_boundaries", False),
    ("shrink-perturb", {"mode": "task"}, "needs_task_boundaries", True),
])
def test_capabilities_that_depend_on_the_config_follow_it(name, settings, capability,
                                                          value) -> None:
    method = get_method_class(name)(settings)
    assert getattr(method, capability) is value
    assert getattr(type(method), capability) is not value  # the class keeps the default's
    default = get_method_class(name)()
    default.load_state_dict(method.state_dict())  # a loaded config brings its capabilities
    assert getattr(default, capability) is value


def test_a_composite_needs_what_any_member_needs_in_the_scenarios_all_support() -> None:
    method = build_method("replay+lottery")
    assert method.scenarios == ("task",) and method.needs_task_ids_at_test
    assert method.stores_data and method.needs_task_boundaries and method.composable
    assert not method.needs_transformer and build_method("das+ewc").needs_transformer
    task_free = build_method("l2+replay", {"l2": {"anchor": "zero"}})
    assert not task_free.needs_task_boundaries
    check_compatible(task_free, "class", task_boundaries=False)
    twin = build_method("l2+replay", {"l2": {"anchor": "zero"}})
    twin.load_state_dict(build_method("l2+replay", {"l2": {"anchor": "zero"},
                                                    "replay": {"weighting": "tasks"}})
                         .state_dict())
    assert twin.needs_task_boundaries
    with pytest.raises(ConfigError, match="replay needs task boundaries"):
        check_compatible(twin, "class", task_boundaries=False)


def test_a_capability_hook_may_only_name_capabilities() -> None:
    class Odd(Method):
        name = "odd"

        def capabilities(self):
            return {"needs_gpu": True}

    with pytest.raises(TypeError, match="needs_gpu"):
        Odd()


def test_a_method_that_does_not_combine_is_refused_in_a_composition() -> None:
    with pytest.raises(ConfigError, match="joint does not combine with other methods"):
        build_method("joint+ewc")
    with pytest.raises(ConfigError, match="naive is plain fine-tuning"):
        build_method("ewc+naive")


def test_two_methods_cannot_share_a_config_class() -> None:
    @dataclasses.dataclass
    class SharedConfig(NoConfig):
        pass

    class First(Method):
        name, description, Config = "first-test-method", "a test method", SharedConfig

    class Second(Method):
        name, description, Config = "second-test-method", "a test method", SharedConfig

    from lifelong.core import registry
    try:
        register_method(First)
        with pytest.raises(ValueError, match="shares its config class SharedConfig with "
                                             "'first-test-method'"):
            register_method(Second)
    finally:
        registry._METHODS.pop("first-test-method", None)
    assert "unknown key 'x' for joint" in _error(lambda: build_method("joint", {"joint": {"x": 1}}))
    assert "lora.dropout" in _error(lambda: get_method_class("lora")(dropout=1.0))
    assert "inc-lora" not in _error(lambda: get_method_class("lora")(dropout=1.0))


def _error(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


# --- trainable parameters that change (LoRA) ----------------------------------------------------
def trainable_ids(model) -> list[int]:
    return [id(p) for p in model.parameters() if p.requires_grad]


def lasting_state(member) -> tuple[list[torch.Tensor] | None, list[torch.Tensor], list[tuple]]:
    """A member's per-parameter state that lasts over tasks, the parameters it belongs to, and
    the shape each entry has (L1: its first ticket, a row mask per parameter)."""
    if member.name == "l1":
        rows = [(p.shape[0] if p.dim() > 1 else p.numel(),) for p in member.params]
        return (member.tickets[0] if member.tickets else None), member.params, rows
    if member.name == "spg":
        return member.importance, member.shared, [p.shape for p in member.shared]
    name = {"ewc": "precision", "si": "importance", "mas": "importance", "l2": "anchor"}
    return getattr(member, name[member.name]), member.params, [p.shape for p in member.params]


@pytest.mark.parametrize("spec", ["inc-lora+ewc", "ewc+inc-lora", "si+inc-lora", "inc-lora+mas",
                                  "l2+inc-lora", "inc-lora+l1", "inc-lora+spg"])
def test_members_follow_the_adapters_a_lora_method_adds_at_each_task(spec: str) -> None:
    pytest.importorskip("peft", reason="the hf extra is not installed")
    scenario = toy_scenario("task", num_classes=6)
    model = tiny_mlp(outputs=6, seed=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = build_method(spec, {"inc-lora": {"r": 2}})
    method.attach(model, optimizer, scenario.readout, seed=0)
    (other,) = [m for m in method.members if m.name != "inc-lora"]
    carried: dict[int, torch.Tensor] = {}
    for task in range(3):
        method.before_task(task)
        assert [id(p) for p in other.params] == trainable_ids(model)
        assert any(f"adapter{task}" in name for name in other.param_names)
        values, owners, shapes = lasting_state(other)
        if values is not None:  # carried entries stay with their parameters
            assert [v.shape for v in values] == shapes
            kept = [torch.equal(v, carried[id(p)]) for p, v in zip(owners, values)
                    if id(p) in carried]
            assert all(kept)
            if other.name == "spg":  # shared: only the new adapter, important to no past task
                assert not kept and not any(v.any() for v in values)
            else:
                assert kept  # the head's, at least
        train_tasks(method, model, optimizer, scenario, [task], epochs=1)
        values, owners, _ = lasting_state(other)
        carried = {id(p): v.clone() for p, v in zip(owners, values)}


def test_a_frozen_adapter_leaves_ewcs_penalty_and_a_new_one_joins_without_fisher() -> None:
    pytest.importorskip("peft", reason="the hf extra is not installed")
    scenario = toy_scenario("task")
    model = tiny_mlp(seed=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = build_method("inc-lora+ewc", {"inc-lora": {"r": 2}, "ewc": {"lambda": 10.0}})
    method.attach(model, optimizer, scenario.readout, seed=0)
    ewc = method.members[1]
    train_tasks(method, model, optimizer, scenario, [0], epochs=1)
    fisher = {name: f.clone() for name, f in zip(ewc.param_names, ewc.precision)}
    method.before_task(1)
    for name, f in zip(ewc.param_names, ewc.precision):
        if "adapter1" in name:
            assert not f.any()  # no Fisher yet: no penalty
        else:
            assert torch.equal(f, fisher[name])  # the head keeps its Fisher
    assert not any("adapter0" in name for name in ewc.param_names)  # frozen: it cannot move
    with torch.no_grad():  # away from the anchor, so the penalty has a gradient
        model[2].weight.add_(0.5)
    optimizer.zero_grad()
    ewc.transform_grads()
    weight = model[2].weight
    torch.testing.assert_close(weight.grad, 10.0 * fisher["2.weight"] * 0.5)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_a_composite_loads_each_members_state_for_the_parameters_it_was_saved_with() -> None:
    pytest.importorskip("peft", reason="the hf extra is not installed")
    scenario = toy_scenario("task")
    model = tiny_mlp(seed=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = build_method("ewc+inc-lora", {"inc-lora": {"r": 2}})
    method.attach(model, optimizer, scenario.readout, seed=0)
    train_tasks(method, model, optimizer, scenario, [0, 1], epochs=1)
    saved = method.state_dict()
    for model_first in (True, False):
        twin = tiny_mlp(seed=5)
        restored = build_method("ewc+inc-lora", {"inc-lora": {"r": 2}})
        restored.attach(twin, torch.optim.SGD(twin.parameters(), lr=0.1), scenario.readout,
                        seed=1)
        if model_first:  # as a checkpoint does: the model's load adds the adapters first
            twin.load_state_dict(model.state_dict())
        restored.load_state_dict(saved)  # else inc-lora's state adds them, after ewc's loaded
        ewc, twin_ewc = method.members[0], restored.members[0]
        assert twin_ewc.param_names == ewc.param_names
        assert [id(p) for p in twin_ewc.params] == trainable_ids(twin)
        for a, b in zip(twin_ewc.precision, ewc.precision, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("spec", ["ncl+lora", "lottery+lora", "upgd+lora"])
def test_methods_that_cannot_follow_a_change_of_the_parameters_say_so(spec: str) -> None:
    pytest.importorskip("peft", reason="the hf extra is not installed")
    model = tiny_mlp()
    method = build_method(spec, {"lora": {"r": 2}})
    with pytest.raises(ConfigError, match="cannot follow a change of the trainable parameters"):
        method.attach(model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
    model = tiny_mlp()  # after lora, the set no longer changes
    build_method("lora+" + spec.split("+")[0], {"lora": {"r": 2}}).attach(
        model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)


def test_cbp_cannot_follow_lora_in_either_order() -> None:
    pytest.importorskip("peft", reason="the hf extra is not installed")
    model = tiny_mlp()
    with pytest.raises(ConfigError, match="cannot follow a change of the trainable parameters"):
        build_method("cbp+lora", {"lora": {"r": 2}}).attach(
            model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)
    model = tiny_mlp()  # adapters inside the layers: no longer a plain chain of units
    with pytest.raises(ConfigError, match="cbp needs a plain chain"):
        build_method("lora+cbp", {"lora": {"r": 2}}).attach(
            model, torch.optim.SGD(model.parameters(), lr=0.1), seed=0)


def test_shrink_perturb_follows_the_adapters_a_lora_method_adds() -> None:
    pytest.importorskip("peft", reason="the hf extra is not installed")
    model = tiny_mlp(seed=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = build_method("inc-lora+shrink-perturb", {"inc-lora": {"r": 2}})
    method.attach(model, optimizer, seed=0)
    shrink_perturb = method.members[1]
    for task in range(2):
        method.before_task(task)
        trained = trainable_ids(model)
        assert [id(p) for p in shrink_perturb.params] == trained
        assert sorted(id(p) for params, _ in shrink_perturb._shrink_groups for p in params) == \
            sorted(trained)  # grouped by the optimizer's parameter groups
        assert [n.shape for n in shrink_perturb.noise.sample()] == \
            [p.shape for p in shrink_perturb.params]
