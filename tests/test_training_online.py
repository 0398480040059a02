"""The online loop: scores before the update, bins, task-free vs announced boundaries, CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lifelong.cli import main
from lifelong.core import build_method
from lifelong.core.batch import Batch
from lifelong.core.method import Method
from lifelong.scenarios import Stream
from lifelong.training.online import train_stream


def toy_stream(regression: bool, num_tasks: int = 3, per_task: int = 7, seed: int = 0) -> Stream:
    """Gaussian inputs; labels (or targets) from a task-specific random linear map."""
    def segment(t: int, n: int | None = None, salt: int = 0) -> Batch:
        g = torch.Generator().manual_seed(100 * seed + 10 * t + salt)
        x = torch.randn(n or per_task, 4, generator=g)
        w = torch.randn(4, 3, generator=torch.Generator().manual_seed(t))
        out = x @ w
        return Batch(x, out[:, :1] if regression else out.argmax(1))

    return Stream("toy", (4,), 1 if regression else 3, num_tasks, per_task, regression,
                  segment, lambda t, n: segment(t, n, 1))


def manual_online(model: nn.Module, stream: Stream, lr: float, batch_size: int = 1):
    """Score each batch with the current weights, then take a plain SGD step."""
    scores, tasks = [], []
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for t in range(stream.num_tasks):
        seg = stream.segment(t)
        for start in range(0, len(seg), batch_size):
            x, y = seg.x[start:start + batch_size], seg.y[start:start + batch_size]
            out = model(x)
            if stream.regression:
                scores += ((out.detach() - y) ** 2).sum(1).tolist()
                loss = ((out - y) ** 2).sum(1).mean()
            else:
                scores += (out.argmax(1) == y).float().tolist()
                loss = nn.functional.cross_entropy(out, y)
            tasks += [t] * len(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return torch.tensor(scores, dtype=torch.float64), torch.tensor(tasks)


@pytest.mark.parametrize("regression", [False, True])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_online_scores_come_before_each_update(regression: bool, batch_size: int) -> None:
    stream = toy_stream(regression)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, stream.num_outputs))
    reference = copy.deepcopy(model)
    expected, tasks = manual_online(reference, stream, lr=0.05, batch_size=batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    # bins of 4 samples cut across the 7-sample tasks
    stats = train_stream(model, optimizer, build_method("naive").attach(model, optimizer),
                         stream, batch_size=batch_size, bin_size=4)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)
    per_task = [float(expected[tasks == t].mean()) for t in range(3)]
    assert stats.task_values == pytest.approx(per_task, rel=1e-5, abs=1e-6)
    ends = [b.end for b in stats.bins]
    assert ends[-1] == 21 and stats.samples == 21
    starts = [0] + ends[:-1]
    for b, start in zip(stats.bins, starts):
        assert b.start == start
        assert b.value == pytest.approx(float(expected[start:b.end].mean()), rel=1e-5, abs=1e-6)
        assert b.task == int(tasks[b.end - 1])


class Recorder(Method):
    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, int]] = []

    def before_task(self, task: int) -> None:
        super().before_task(task)
        self.calls.append(("before", task, 0))

    def after_task(self, task, data) -> None:
        self.calls.append(("after", task, len(data)))


@pytest.mark.parametrize("boundaries", [False, True])
def test_boundaries_are_announced_only_when_asked(boundaries: bool) -> None:
    stream = toy_stream(False)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = Recorder().attach(model, optimizer)
    stats = train_stream(model, optimizer, method, stream, boundaries=boundaries,
                         max_samples=10)
    assert stats.samples == 10 and len(stats.task_values) == 2  # the stream stopped early
    expected = [("before", 0, 0), ("after", 0, 7), ("before", 1, 0), ("after", 1, 3)]
    assert method.calls == (expected if boundaries else [])


def test_announced_boundaries_give_each_segment_to_training_data() -> None:
    """NCL's prior needs the task's sample count, which training_data gives it."""
    stream = toy_stream(False)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ncl = build_method("ncl").attach(model, optimizer)
    train_stream(model, optimizer, ncl, stream, boundaries=True)
    assert ncl.data_size == 7


def test_diagnose_callback_runs_at_the_requested_interval() -> None:
    stream = toy_stream(True)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    train_stream(model, optimizer, build_method("naive").attach(model, optimizer), stream,
                 diagnose_every=5, on_diagnose=lambda t, s: seen.append((t, s)))
    assert seen == [(0, 5), (1, 10), (2, 15), (2, 20), (2, 21)]


def test_stream_command_writes_bins_diagnostics_and_summary(tmp_path) -> None:
    out = tmp_path / "run"
    code = main(["stream", "--tasks", "3", "--set", "benchmark.samples_per_task=40",
                 "--bin-size", "40", "--diagnostics", "--probe-size", "30", "--method",
                 "shrink-perturb", "--out", str(out), "-q", "--device", "cpu"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "error" and len(summary["task_values"]) == 3
    assert [b["end"] for b in summary["bins"]] == [40, 80, 120]
    assert len(summary["diagnostics"]) == 3
    for key in ("dead_units", "effective_rank", "stable_rank", "weight_magnitude",
                "gradient_magnitude", "plasticity"):
        assert key in summary["diagnostics"][0]
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").open()]
    assert events.count("bin") == 3 and events.count("diagnostics") == 3
    assert events.count("task_end") == 3


@pytest.mark.parametrize("argv, message", [
    (["--method", "ewc"], "needs task boundaries"),
    (["--method", "lottery", "--boundaries"], "does not support the domain-incremental"),
    (["--method", "joint", "--boundaries"], "joint trains on the stored samples of earlier"),
    (["--benchmark", "permuted-mnist"], "unknown streaming benchmark"),
    (["--set", "benchmark.beta=2"], "beta"),
    (["--set", "nothing=1"], "no such setting"),
])
def test_stream_command_refuses_bad_input_before_training(argv, message, capsys) -> None:
    assert main(["stream", "-q", *argv]) == 2
    assert message in capsys.readouterr().err
