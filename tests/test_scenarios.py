"""Scenario builders and readouts: labels, units, masks, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import blobs

from lifelong.core import Readout
from lifelong.errors import ConfigError
from lifelong.scenarios import permuted_inputs, permuted_labels, split_by_classes


def data(num_classes=6):
    x, y = blobs(num_classes, per_class=5)
    xt, yt = blobs(num_classes, per_class=2, seed=1)
    return x, y, xt, yt


def test_split_task_incremental_multi_head() -> None:
    s = split_by_classes(*data(), classes_per_task=2, scenario="task")
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3), (4, 5)]
    task = s.tasks[1].train_data()
    assert set(task.y.tolist()) == {0, 1} and task.task_ids.eq(1).all()
    assert s.readout.units(1) == [2, 3] and s.num_outputs == 6
    out = torch.arange(12.0).reshape(2, 6)
    picked = s.readout.select(out, torch.tensor([0, 2]))
    assert picked.tolist() == [[0.0, 1.0], [10.0, 11.0]]


def test_split_class_incremental_masks_unseen_classes() -> None:
    s = split_by_classes(*data(), classes_per_task=2, scenario="class",
                         class_order=[5, 4, 3, 2, 1, 0])
    assert s.tasks[0].classes == (5, 4)
    first = s.tasks[0].train_data()
    assert set(first.y.tolist()) == {0, 1}  # unit = position of the class in class order
    readout = s.readout
    readout.begin_task(0)
    logits = readout.select(torch.zeros(1, 6))
    assert torch.isinf(logits[0, 2:]).all() and torch.isfinite(logits[0, :2]).all()
    readout.begin_task(1)
    assert torch.isfinite(readout.select(torch.zeros(1, 6))[0, :4]).all()


def test_split_domain_incremental_shares_labels() -> None:
    s = split_by_classes(*data(), classes_per_task=2, scenario="domain")
    assert s.num_outputs == 2
    for task in s.tasks:
        assert set(task.test_data().y.tolist()) == {0, 1}
    out = torch.randn(3, 2)
    assert torch.equal(s.readout.select(out, torch.tensor([0, 1, 2])), out)


def test_uneven_tasks_pad_the_head_with_minus_infinity() -> None:
    s = split_by_classes(*data(5), task_classes=[[0, 1, 2], [3, 4]], scenario="task")
    out = torch.zeros(1, 5)
    logits = s.readout.select(out, torch.tensor([1]))
    assert logits.shape == (1, 3) and torch.isinf(logits[0, 2])


def test_numpy_input_and_uint8_images_are_scaled() -> None:
    x = np.full((8, 2, 2), 255, dtype=np.uint8)
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    s = split_by_classes(x, y, x, y, classes_per_task=2)
    assert s.input_shape == (2, 2)
    assert s.tasks[0].train_data().x.max().item() == 1.0


@pytest.mark.parametrize("kwargs,message", [
    ({"classes_per_task": 4}, "6 classes do not split into tasks of 4"),
    ({"task_classes": [[0, 1], [1, 2]]}, "more than one task"),
    ({"task_classes": [[0, 9]]}, r"classes \[9\] have no training samples"),
    ({"scenario": "online"}, "unknown scenario 'online'; accepted: task, domain, class"),
    ({"class_order": "shuffled"}, "class_order 'shuffled' is not accepted"),
])
def test_split_errors(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        split_by_classes(*data(), **kwargs)


def test_mismatched_lengths_are_refused() -> None:
    x, y, xt, yt = data()
    with pytest.raises(ConfigError, match="x_train has 30 samples but y_train has 29"):
        split_by_classes(x, y[:-1], xt, yt)


def test_permuted_inputs_apply_one_fixed_permutation_per_task() -> None:
    x, y, xt, yt = data(3)
    s = permuted_inputs(x, y, xt, yt, num_tasks=3, scenario="class", seed=1)
    first, second = s.tasks[0].train_data(), s.tasks[1].train_data()
    assert torch.equal(first.x, x)  # the first task is the original data
    perm = [int((x[0] == v).nonzero()[0]) for v in second.x[0]]  # recover the permutation
    assert torch.equal(second.x, x[:, perm])
    assert torch.equal(s.tasks[1].test_data().x, xt[:, perm])  # same permutation for the test set
    assert torch.equal(second.y, y + 3)  # class-IL: task t's labels are units t·C + c
    assert s.num_outputs == 9


def test_permuted_labels_task_incremental_heads() -> None:
    x, y, xt, yt = data(3)
    s = permuted_labels(x, y, xt, yt, num_tasks=2, scenario="task", seed=0)
    a, b = s.tasks[0].train_data().y, s.tasks[1].train_data().y
    mapping = {int(o): int(n) for o, n in zip(y, b)}
    assert len(mapping) == 3 and sorted(mapping.values()) == [0, 1, 2]  # a relabelling
    assert sorted(set(a.tolist())) == [0, 1, 2]
    assert s.readout.units(1) == [3, 4, 5]


def test_identity_readout() -> None:
    readout = Readout.identity()
    out = torch.randn(2, 3)
    assert readout.select(out) is out


def test_cumulative_tasks_train_on_every_class_so_far() -> None:
    x, y, xt, yt = data()
    order = [5, 4, 3, 2, 1, 0]
    s = split_by_classes(x, y, xt, yt, classes_per_task=2, scenario="class", class_order=order,
                         cumulative=True)
    assert [t.name for t in s.tasks] == ["classes 5,4", "classes 3,2 + 2 earlier",
                                         "classes 1,0 + 4 earlier"]
    for t, task in enumerate(s.tasks):
        seen = order[:2 * (t + 1)]
        train = task.train_data()
        rows = np.isin(y.numpy(), seen)  # an independent selection of the training rows
        assert torch.equal(train.x, x[rows])
        assert train.y.tolist() == [order.index(c) for c in y[rows].tolist()]  # class-IL units
        test = task.test_data()  # tested on its new classes only
        new = order[2 * t:2 * t + 2]
        assert torch.equal(test.x, xt[np.isin(yt.numpy(), new)])
        assert set(test.y.tolist()) == {2 * t, 2 * t + 1}
    assert s.tasks[2].train_data() is not s.tasks[2].train_data()  # rebuilt, not kept
    with pytest.raises(ConfigError, match="cumulative tasks need the class-incremental scenario"):
        split_by_classes(x, y, xt, yt, scenario="task", cumulative=True)


def test_split_scenario_from_array_splits() -> None:
    from lifelong.data import ArraySplits
    from lifelong.scenarios import split_scenario

    x, y, xt, yt = data(4)
    splits = ArraySplits(x.numpy(), y.numpy(), xt.numpy(), yt.numpy(),
                         class_names=("a", "b", "c", "d"))
    s = split_scenario(splits, classes_per_task=2, scenario="class")
    direct = split_by_classes(x, y, xt, yt, classes_per_task=2, scenario="class")
    assert s.class_names == ["a", "b", "c", "d"] and s.kind == "class"
    for mine, theirs in zip(s.tasks, direct.tasks):
        assert torch.equal(mine.train_data().x, theirs.train_data().x)
        assert torch.equal(mine.train_data().y, theirs.train_data().y)
