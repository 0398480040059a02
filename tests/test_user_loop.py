"""A lifelong method attached to a plain PyTorch loop behaves exactly as in lifelong's own loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario

from lifelong.core import Batch, build_method
from lifelong.training.lifecycle import fit_task


def plain_loop(spec: str, scenario, orders):
    """Ten lines of ordinary PyTorch; the method adds its penalty and consolidates."""
    model = tiny_mlp(outputs=scenario.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method = build_method(spec).attach(model, optimizer, scenario.readout, seed=0)
    for task, order in zip(scenario.tasks, orders):
        scenario.readout.begin_task(task.id)
        method.before_task(task.id)
        data = task.train_data()
        for start in range(0, len(order), 8):
            i = order[start:start + 8]
            batch = method.prepare_batch(Batch(data.x[i], data.y[i], data.task_ids[i]))
            output = model(batch.x)
            loss = F.cross_entropy(scenario.readout.select(output, batch.task_ids), batch.y)
            loss = method.add_penalty(loss, batch, output)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # gradient hooks (A-GEM's projection) run inside step()
        method.after_task(task.id, data)
    return model


@pytest.mark.parametrize("spec", ["ewc", "agem", "lwf", "replay+ewc"])
def test_plain_loop_equals_lifelong_loop(spec: str) -> None:
    scenario = toy_scenario("task")
    model = tiny_mlp(outputs=scenario.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    method = build_method(spec).attach(model, optimizer, scenario.readout, seed=0)
    generator = torch.Generator().manual_seed(4)
    orders = []
    for task in scenario.tasks:
        state = generator.get_state()
        orders.append(torch.randperm(len(task.train_data()), generator=generator))
        generator.set_state(state)  # train_task draws the same order
        fit_task(model, optimizer, method, scenario.readout, task.id, task.train_data(),
                 batch_size=8, epochs=1, generator=generator)
    reference = plain_loop(spec, toy_scenario("task"), orders)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    moved = tiny_mlp(outputs=scenario.num_outputs)
    assert any(not torch.equal(a, b) for a, b in zip(moved.parameters(), model.parameters()))


def test_readme_example_runs_and_shows_what_it_claims() -> None:
    """The README's plain-PyTorch example, executed as written, then with naive for contrast."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    example = next(b for b in blocks if "attach(model, optimizer)" in b)
    kept = {}
    for spec in ("agem", "naive"):
        namespace: dict = {}
        code = example.replace('build_method("agem")', f'build_method("{spec}")')
        exec(compile(code, "README.md", "exec"), namespace)
        kept[spec] = namespace["accuracy_on_first_task"]
    assert kept["agem"] > 0.88  # the README says 0.93
    assert kept["naive"] < 0.75  # the README says 0.63
