"""The task lifecycle (lifelong.training.lifecycle): the order of the hooks and the data each
gets, wherever a method runs."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_mlp, toy_scenario

from lifelong.core import Batch, Method, build_method
from lifelong.errors import ConfigError
from lifelong.training.lifecycle import (
    begin_task,
    check_trains_on_given_data,
    end_task,
    fit_task,
)


class Recorder(Method):
    """Records each lifecycle hook; `extra` is added to the task's data by training_data."""

    name = "recorder"

    def __init__(self, extra: Batch | None = None) -> None:
        super().__init__()
        self.extra = extra
        self.calls: list[tuple] = []

    def before_task(self, task: int) -> None:
        super().before_task(task)
        self.calls.append(("before", task, self.readout.active.tolist()))

    def training_data(self, task: int, data: Batch) -> Batch:
        self.calls.append(("training_data", task, len(data)))
        return data if self.extra is None else Batch.cat(self.extra, data)

    def after_task(self, task: int, data) -> None:
        self.calls.append(("after", task, len(data)))


def test_fit_task_begins_trains_on_the_chosen_data_and_ends_with_the_tasks_own() -> None:
    scenario = toy_scenario("class")  # 4 classes, 2 per task
    model = tiny_mlp(outputs=scenario.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = scenario.tasks[1].train_data()
    # extra samples of task 1's classes: task 0's labels would be masked out (an infinite loss,
    # which now stops training as a divergence)
    extra = data.select(slice(0, 11))
    method = Recorder(extra).attach(model, optimizer, scenario.readout)
    stats = fit_task(model, optimizer, method, scenario.readout, 1, data, batch_size=8, epochs=1)
    # the readout's units of task 1 were active before before_task ran
    assert method.calls == [("before", 1, [False, False, True, True]),
                            ("training_data", 1, len(data)), ("after", 1, len(data))]
    assert stats.steps == math.ceil((len(extra) + len(data)) / 8)  # what training_data chose


def test_the_phases_alone_serve_a_loop_lifelong_does_not_own() -> None:
    scenario = toy_scenario("task")
    method = Recorder().attach(tiny_mlp(outputs=scenario.num_outputs), None, scenario.readout)
    data = scenario.tasks[0].train_data()
    assert begin_task(method, 0) is None  # no data: training_data is not asked
    assert begin_task(method, 1, data, readout=scenario.readout, fixed_data=True) is data
    end_task(method, 1, data)

    def read_data() -> Batch:  # a Trainer's dataloader is read after before_task
        method.calls.append(("read", 2))
        return data

    assert begin_task(method, 2, read_data) is data
    assert [call[:2] for call in method.calls] == [
        ("before", 0), ("before", 1), ("training_data", 1), ("after", 1), ("before", 2),
        ("read", 2), ("training_data", 2)]


def test_a_loop_with_fixed_data_refuses_a_method_that_chooses_other_data() -> None:
    scenario = toy_scenario("task")
    data = scenario.tasks[0].train_data()
    method = Recorder(extra=data).attach(tiny_mlp(outputs=scenario.num_outputs))
    with pytest.raises(ConfigError, match="recorder trains on other data than the task's"):
        begin_task(method, 0, data, fixed_data=True)
    with pytest.raises(ConfigError, match="as it is given; give the Trainer that data instead$"):
        begin_task(method, 0, data, fixed_data=True, remedy="give the Trainer that data instead")
    with pytest.raises(ConfigError, match="joint trains on the stored samples .* a stream"):
        check_trains_on_given_data(build_method("joint"), "a stream", "use lifelong run")
    check_trains_on_given_data(build_method("ncl"), "a stream", "")  # reads, keeps nothing
