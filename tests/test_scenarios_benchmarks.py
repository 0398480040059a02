"""The image benchmarks (on small fake datasets) and benchmarks on a user's own files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import lifelong.data
from lifelong.data import ArraySplits
from lifelong.data.cifar import CLASSES as CIFAR10_CLASSES
from lifelong.errors import ConfigError, DataError
from lifelong.runs.config import RunConfig
from lifelong.runs.experiment import run_experiment
from lifelong.scenarios import BENCHMARKS, get_benchmark


def _fake(shape: tuple[int, ...], classes: int, per_class: int = 2, test_per_class: int = 1,
          seed: int = 0) -> ArraySplits:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    yt = np.repeat(np.arange(classes), test_per_class)
    return ArraySplits(rng.integers(0, 256, (len(y), *shape), dtype=np.uint8), y,
                       rng.integers(0, 256, (len(yt), *shape), dtype=np.uint8), yt)


@pytest.fixture
def fake_loaders(monkeypatch: pytest.MonkeyPatch) -> dict[str, ArraySplits]:
    """Replace the file loaders by tiny datasets of the right shapes (CIFAR's are HWC)."""
    fakes = {"load_mnist": _fake((28, 28), 10, seed=1),
             "load_fashion_mnist": _fake((28, 28), 10, seed=2),
             "load_kmnist": _fake((28, 28), 10, seed=3),
             "load_cifar10": _fake((32, 32, 3), 10, seed=4),
             "load_cifar100": _fake((32, 32, 3), 100, seed=5)}
    for name, fake in fakes.items():
        monkeypatch.setattr(lifelong.data, name, lambda data_dir=None, _f=fake, **kw: _f)
    return fakes


@pytest.mark.parametrize("name,loader,kind,scenario,model,tasks", [
    ("split-fashion-mnist", "load_fashion_mnist", "split", "task", "mlp", 5),
    ("permuted-fashion-mnist", "load_fashion_mnist", "permuted", "domain", "mlp", 10),
    ("split-kmnist", "load_kmnist", "split", "task", "mlp", 5),
    ("rotated-mnist", "load_mnist", "rotated", "domain", "mlp", 10),
    ("split-cifar10", "load_cifar10", "split", "task", "cnn", 5),
    ("split-cifar100", "load_cifar100", "split", "task", "resnet18", 10),
    ("cifar100-incremental", "load_cifar100", "split", "class", "resnet18", 20),
])
def test_image_benchmarks(fake_loaders, name, loader, kind, scenario, model, tasks) -> None:
    bench = BENCHMARKS[name]
    assert (bench.kind, bench.default_scenario, bench.protocol.model) == (kind, scenario, model)
    assert bench.needs_files
    s = bench.build(bench.default_scenario)
    assert s.num_tasks == tasks
    fake = fake_loaders[loader]
    images = fake.x_train.transpose(0, 3, 1, 2) if "cifar" in name else fake.x_train
    assert s.input_shape == images.shape[1:]  # CIFAR as (C, H, W), MNIST-like as (H, W)
    first = s.tasks[0].train_data()
    rows = np.isin(fake.y_train, s.tasks[0].classes)
    expected = torch.from_numpy(images[rows]).float() / 255  # uint8 scaled to [0, 1], like MNIST
    assert torch.equal(first.x, expected)


def test_split_cifar100_in_20_tasks_and_cifar10_class_names(fake_loaders) -> None:
    s = BENCHMARKS["split-cifar100"].build("task", options={"classes_per_task": 5})
    assert s.num_tasks == 20 and s.tasks[3].classes == (15, 16, 17, 18, 19)
    assert BENCHMARKS["split-cifar10"].build("class").class_names == list(CIFAR10_CLASSES)


def test_cifar100_incremental_is_dohare_et_al(fake_loaders) -> None:
    bench = BENCHMARKS["cifar100-incremental"]
    p = bench.protocol
    assert (p.optimizer, p.lr, p.batch_size, p.epochs) == ("sgd", 0.1, 90, 200)
    s = bench.build("class")
    order = np.random.default_rng(0).permutation(100).tolist()  # class_order random, seed 0
    assert [list(t.classes) for t in s.tasks] == [order[i:i + 5] for i in range(0, 100, 5)]
    y = fake_loaders["load_cifar100"].y_train
    for t in (0, 7, 19):
        train = s.tasks[t].train_data()
        seen = order[:5 * (t + 1)]
        assert len(train.y) == int(np.isin(y, seen).sum())  # all classes so far
        assert sorted(set(train.y.tolist())) == list(range(5 * (t + 1)))  # their units
        assert set(s.tasks[t].test_data().y.tolist()) == set(range(5 * t, 5 * t + 5))
    with pytest.raises(ConfigError, match="class-incremental"):
        bench.build("task")


def test_rotated_mnist_angles_option(fake_loaders) -> None:
    s = BENCHMARKS["rotated-mnist"].build("domain", options={"angles": "0,90"})
    assert [t.name for t in s.tasks] == ["rotation 0°", "rotation 90°"]
    x = fake_loaders["load_mnist"].x_test
    expected = torch.from_numpy(np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2)))).float() / 255
    assert torch.equal(s.tasks[1].test_data().x, expected)
    with pytest.raises(ConfigError, match="num_tasks is 3 but 2 angles"):
        BENCHMARKS["rotated-mnist"].build("domain", options={"angles": "0,90", "num_tasks": 3})


def _blobs(classes: int = 4, per_class: int = 30, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, 5))
    y = np.repeat(np.arange(classes), per_class)
    return (centres[y] + rng.normal(0, 0.5, (len(y), 5))).astype(np.float32), y


def test_arrays_npz_benchmark_runs_end_to_end(tmp_path) -> None:
    x, y = _blobs()
    xt, yt = _blobs(seed=1)
    np.savez(tmp_path / "mine.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    result = run_experiment(RunConfig.from_dict(
        {"benchmark": f"arrays:{tmp_path / 'mine.npz'}", "epochs": 1, "hidden": [8]}),
        progress=False)
    assert len(result.accuracy_matrix) == 2 and len(result.accuracy_matrix[0]) == 2


def test_folder_benchmark_and_relative_paths(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    for c in range(4):
        for i in range(3):
            path = tmp_path / "imgs" / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (6, 5), 60 * c + i).save(path)
    monkeypatch.chdir(tmp_path / "imgs")  # not where the folder is: found in the data dir
    bench = get_benchmark("folder:imgs")
    s = bench.build("class", data_dir=str(tmp_path), options={"classes_per_task": 2})
    assert s.num_tasks == 2 and s.input_shape == (1, 5, 6)
    assert s.class_names == ["class0", "class1", "class2", "class3"]
    batch = s.tasks[1].train_data()
    assert set(batch.y.tolist()) == {2, 3}
    pixels = (batch.x * 255).round().flatten(1)  # each image is one grey level, 60·class + i
    assert (pixels == pixels[:, :1]).all()
    assert set((pixels[:, 0] - 60 * batch.y).tolist()) <= {0.0, 1.0, 2.0}
    with pytest.raises(DataError) as err:
        get_benchmark("folder:elsewhere").build("class", data_dir=str(tmp_path))
    assert str(tmp_path / "elsewhere") in str(err.value)


def test_unknown_benchmark_mentions_own_data() -> None:
    with pytest.raises(ConfigError, match=r"unknown benchmark 'split-cifar'.*folder:PATH"):
        get_benchmark("split-cifar")
    with pytest.raises(ConfigError, match="names no path"):
        get_benchmark("arrays:")


def test_real_mnist_files_rotated_and_fashion_split(shared_data: str) -> None:
    from lifelong.data import load_fashion_mnist, load_mnist

    s = BENCHMARKS["rotated-mnist"].build("domain", data_dir=shared_data,
                                          options={"angles": [0, 90]})
    x = load_mnist(shared_data).x_test
    expected = torch.from_numpy(np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2)))).float() / 255
    assert torch.equal(s.tasks[1].test_data().x, expected)
    fashion = BENCHMARKS["split-fashion-mnist"].build("task", data_dir=shared_data)
    y = load_fashion_mnist(shared_data).y_train
    assert len(fashion.tasks[2].train_data().y) == int(np.isin(y, [4, 5]).sum()) == 12000


def test_cifar100_incremental_runs_end_to_end_with_resnet18(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dohare's class-incremental CIFAR-100 through run_experiment on a tiny tarball in the
    real format (2 train and 1 test image per class): 20 tasks, cumulative training data,
    the reduced ResNet-18 with BatchNorm and the protocol's SGD with momentum."""
    from cifar_fakes import cifar100_batch, write_cifar100_tarball

    from lifelong.data import cifar100 as cifar100_mod
    from lifelong.data import md5sum
    from lifelong.runs.config import RunConfig
    from lifelong.runs.experiment import run_experiment

    classes = list(range(100))
    batches = {"train": cifar100_batch(200, 1, fine_labels=classes * 2),
               "test": cifar100_batch(100, 2, fine_labels=classes)}
    tarball = write_cifar100_tarball(tmp_path / "data" / cifar100_mod.TARBALL, batches)
    monkeypatch.setattr(cifar100_mod, "TARBALL_MD5", md5sum(tarball))
    monkeypatch.setenv("LIFELONG_NO_DOWNLOAD", "1")
    result = run_experiment(RunConfig(benchmark="cifar100-incremental", epochs=1, width=4,
                                      device="cpu", data_dir=str(tmp_path / "data")),
                            tmp_path / "run", progress=False)
    config = result.config
    assert (config["model"], config["momentum"], config["scenario"]) == ("resnet18", 0.9,
                                                                         "class")
    assert len(result.accuracy_matrix) == 20 and all(len(r) == 20 for r in result.accuracy_matrix)
    assert (tmp_path / "run" / "summary.json").is_file()
