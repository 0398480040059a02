"""The named streaming benchmarks build from real (or test-written) files with their protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from cifar_fakes import fake_batches as _fake_batches

from lifelong.errors import ConfigError
from lifelong.runs.config import RunConfig, RunSettings, StreamConfig
from lifelong.runs.setup import prepare, set_up
from lifelong.runs.stream import run_stream
from lifelong.scenarios import STREAM_BENCHMARKS, get_stream_benchmark


def test_protocols_are_the_papers() -> None:
    regression = STREAM_BENCHMARKS["slowly-changing-regression"].protocol
    assert (regression.hidden, regression.lr, regression.num_tasks, regression.bin_size) == (
        (5,), 0.01, 100, 20_000)
    online = STREAM_BENCHMARKS["online-permuted-mnist"]
    assert online.protocol.hidden == (2000, 2000, 2000) and online.protocol.num_tasks == 800
    assert online.options.from_dict({}).samples_per_task == 60_000
    for name, per_task in [("input-permuted-mnist", 5000), ("label-permuted-mnist", 2500),
                           ("label-permuted-cifar10", 2500)]:
        bench = STREAM_BENCHMARKS[name]
        assert bench.protocol.hidden == (300, 150) and bench.protocol.lr == 0.01
        assert bench.options.from_dict({}).samples_per_task == per_task
        assert bench.protocol.num_tasks * per_task == 1_000_000
    with pytest.raises(ConfigError, match="did you mean"):
        get_stream_benchmark("online-permuted-mnst")


@pytest.mark.parametrize("name", ["online-permuted-mnist", "input-permuted-mnist",
                                  "label-permuted-mnist"])
def test_mnist_streams_from_the_real_files(name: str, shared_data: str) -> None:
    stream = get_stream_benchmark(name).build(num_tasks=2, seed=0, data_dir=shared_data,
                                              options={"samples_per_task": 300})
    first, second = stream.segment(0), stream.segment(1)
    assert first.x.shape == (300, 784) or first.x.shape == (300, 28, 28)
    assert 0.0 <= float(first.x.min()) and float(first.x.max()) <= 1.0
    assert first.y.dtype == torch.long and int(first.y.max()) <= 9
    assert not torch.equal(first.x, second.x)


def test_label_permuted_cifar10_from_a_canonical_tarball(tmp_path, isolated_env,
                                                         fake_tarball) -> None:
    batches = _fake_batches()
    fake_tarball(tmp_path / "cifar-10-python.tar.gz", batches)
    stream = get_stream_benchmark("label-permuted-cifar10").build(
        num_tasks=3, seed=1, data_dir=str(tmp_path), options={"samples_per_task": 8})
    assert stream.input_shape == (3, 32, 32) and stream.num_outputs == 10
    seg = stream.segment(2)
    assert seg.x.shape == (8, 3, 32, 32) and seg.y.dtype == torch.long


def test_a_short_run_on_label_permuted_cifar10_trains(tmp_path, isolated_env,
                                                      fake_tarball) -> None:
    fake_tarball(tmp_path / "cifar-10-python.tar.gz", _fake_batches())
    result = run_stream(StreamConfig(benchmark="label-permuted-cifar10", tasks=2, hidden=[8],
                                     data_dir=str(tmp_path), device="cpu", method="upgd",
                                     benchmark_params={"samples_per_task": 6}), progress=False)
    assert result.samples == 12 and len(result.task_values) == 2
    assert all(0.0 <= v <= 1.0 for v in result.task_values)
    assert np.isfinite(result.bins[-1]["loss"])


def test_run_and_stream_share_their_settings_and_keep_their_config_keys(tmp_path) -> None:
    shared = set(RunSettings.keys())
    assert len(shared) == 18
    assert set(RunConfig.keys()) - shared == {
        "scenario", "epochs", "iterations", "dropout", "width", "batch_norm", "head",
        "mask_unseen", "eval_batch_size", "keep_checkpoint"}
    assert set(StreamConfig.keys()) - shared == {
        "tasks", "steps", "bin_size", "boundaries", "diagnose_every"}
    setup = set_up(*prepare(StreamConfig(optimizer="adamw", tasks=2, device="cpu")))
    assert isinstance(setup.optimizer, torch.optim.AdamW)  # adamw was refused for streams
    setup.method.detach()
    run_stream(StreamConfig(tasks=2, steps=20, device="cpu"), tmp_path, progress=False)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert set(written) == {  # the keys of a stream's config.yaml before the shared settings
        "lifelong_version", "benchmark", "method", "seed", "tasks", "steps", "batch_size", "lr",
        "optimizer", "momentum", "weight_decay", "model", "hidden", "bin_size", "boundaries",
        "diagnostics", "diagnose_every", "probe_size", "device", "flush_denormal", "data_dir",
        "log", "method_params", "benchmark_params"}
    assert (written["momentum"], written["weight_decay"], written["model"]) == (0.0, 0.0, "mlp")
