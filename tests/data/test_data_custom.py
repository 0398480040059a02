"""Bring your own data: arrays, .npz files, image folders and in-memory Hugging Face datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.data import ArraySplits, from_arrays, from_hf_dataset, from_image_folder, from_npz
from lifelong.errors import ConfigError, DataError

# --- from_arrays --------------------------------------------------------------------------------


def test_given_test_split_is_kept_as_is() -> None:
    rng = np.random.default_rng(0)
    x, xt = rng.random((6, 4)), rng.random((3, 4))
    got = from_arrays(x, [0, 1, 2, 0, 1, 2], torch.from_numpy(xt), torch.tensor([2, 1, 0]))
    np.testing.assert_array_equal(got.x_train, x)
    np.testing.assert_array_equal(got.x_test, xt)
    np.testing.assert_array_equal(got.y_test, [2, 1, 0])
    assert got.y_train.dtype == np.int64 and got.class_names is None


def test_held_out_test_set_is_stratified_and_seeded() -> None:
    y = np.repeat([0, 1, 2], [10, 20, 5])
    x = np.arange(len(y) * 2, dtype=np.float32).reshape(-1, 2)  # row i is (2i, 2i + 1)
    got = from_arrays(x, y, test_fraction=0.2, seed=3)
    counts = {c: int((got.y_test == c).sum()) for c in (0, 1, 2)}
    assert counts == {0: 2, 1: 4, 2: 1}  # round(0.2 * n) of each class
    rows = np.concatenate([got.x_train[:, 0], got.x_test[:, 0]]) / 2
    assert sorted(rows.tolist()) == list(range(len(y)))  # every sample exactly once
    for xs, ys in ((got.x_train, got.y_train), (got.x_test, got.y_test)):
        np.testing.assert_array_equal(ys, y[(xs[:, 0] / 2).astype(int)])  # labels follow rows
        assert (np.diff(xs[:, 0]) > 0).all()  # original order kept
    again = from_arrays(x, y, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again.x_test, got.x_test)
    other = from_arrays(x, y, test_fraction=0.2, seed=4)
    assert not np.array_equal(other.x_test, got.x_test)


def test_string_labels_are_numbered_in_sorted_order() -> None:
    x = np.zeros((4, 3), np.uint8)
    got = from_arrays(x, ["dog", "cat", "dog", "bird"], x[:2], np.array(["cat", "bird"]))
    assert got.class_names == ("bird", "cat", "dog")
    np.testing.assert_array_equal(got.y_train, [2, 1, 2, 0])
    np.testing.assert_array_equal(got.y_test, [1, 0])
    assert got.x_train.dtype == np.uint8  # images stay uint8 (the builders scale them)


@pytest.mark.parametrize("args,kwargs,message", [
    ((np.zeros(4), [0, 1, 0, 1]), {}, r"x_train has shape \(4,\); expected one row per sample"),
    ((np.zeros((4, 2)), [0, 1, 0]), {}, "x_train has 4 samples but y_train has 3 labels"),
    ((np.zeros((4, 2)), [0, 1, -1, 1]), {}, "y_train has label -1"),
    ((np.zeros((4, 2)), [0, 1.5, 0, 1]), {}, "y_train holds non-integer values"),
    ((np.zeros((4, 2)), np.zeros((4, 3))), {}, r"y_train has shape \(4, 3\).*argmax"),
    ((np.array([[1.0], [np.nan], [0], [1]]), [0, 1, 0, 1]), {}, "1 NaN or infinite"),
    ((np.array([["a"], ["b"]]), [0, 1]), {}, "x_train has dtype <U1; expected numbers"),
    ((np.zeros((4, 2)), [0, 1, 0, 1], np.zeros((2, 3)), [0, 1]), {},
     r"x_test samples have shape \(3,\) but x_train samples \(2,\)"),
    ((np.zeros((4, 2)), [0, 1, 0, 1], np.zeros((2, 2)), [0, 7]), {},
     r"y_test has classes \[7\] that y_train lacks"),
    ((np.zeros((4, 2)), [0, 1, 0, 1], np.zeros((2, 2))), {}, "give both x_test and y_test"),
    ((np.zeros((3, 2)), [0, 1, 0]), {}, "class 1 has 1 sample"),
    ((np.zeros((4, 2)), [0, 1, 0, 1]), {"class_names": ["a"]}, "1 class names for labels up to 1"),
    ((np.zeros((4, 2)), ["a", 1, "b", 2]), {}, "y_train mixes strings with other values"),
    ((np.zeros((4, 2)), np.array([True, False] * 2)), {}, "expected integer class labels"),
])
def test_bad_arrays_are_refused_with_a_clear_message(args, kwargs, message) -> None:
    with pytest.raises(DataError, match=message):
        from_arrays(*args, **kwargs)


def test_test_fraction_must_be_a_fraction() -> None:
    with pytest.raises(ConfigError, match="test_fraction must be between 0 and 1"):
        from_arrays(np.zeros((4, 2)), [0, 1, 0, 1], test_fraction=1.0)


def test_npz_file_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.random((6, 2, 2)), "y_train": np.array([0, 1, 0, 1, 0, 1]),
              "x_test": rng.random((2, 2, 2)), "y_test": np.array([1, 0]),
              "class_names": np.array(["no", "yes"])}
    np.savez(tmp_path / "mine.npz", **arrays)
    got = from_npz(tmp_path / "mine.npz")
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(got, key), arrays[key])
    assert got.class_names == ("no", "yes")

    np.savez(tmp_path / "bad.npz", x=arrays["x_train"], y=arrays["y_train"])
    with pytest.raises(DataError, match=r"bad.npz holds x, y; expected x_train and y_train"):
        from_npz(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="does not exist"):
        from_npz(tmp_path / "missing.npz")


# --- from_image_folder ------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # PNG: lossless, so pixels can be compared exactly


def _pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_image_folder_with_train_and_test(tmp_path: Path) -> None:
    images = {("train", "cat", "b.png"): _pixels(0, (5, 4, 3)),
              ("train", "cat", "a.png"): _pixels(1, (5, 4, 3)),
              ("train", "ant", "x.png"): _pixels(2, (5, 4, 3)),
              ("test", "cat", "t.png"): _pixels(3, (5, 4, 3))}
    for parts, array in images.items():
        _save(tmp_path.joinpath(*parts), array)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    _save(tmp_path / "train" / "ant" / ".hidden.png", _pixels(9, (5, 4, 3)))
    got = from_image_folder(tmp_path)
    assert got.class_names == ("ant", "cat")
    np.testing.assert_array_equal(got.y_train, [0, 1, 1])
    np.testing.assert_array_equal(got.y_test, [1])
    assert got.x_train.shape == (3, 3, 5, 4) and got.x_train.dtype == np.uint8  # N, C, H, W
    order = [("train", "ant", "x.png"), ("train", "cat", "a.png"), ("train", "cat", "b.png")]
    for x, key in zip(got.x_train, order):
        np.testing.assert_array_equal(x, images[key].transpose(2, 0, 1))
    test_image = images[("test", "cat", "t.png")]
    np.testing.assert_array_equal(got.x_test[0], test_image.transpose(2, 0, 1))


def test_image_folder_grayscale_resize_and_held_out_test(tmp_path: Path) -> None:
    from PIL import Image

    for c in ("zero", "one"):
        for i in range(5):
            _save(tmp_path / c / f"{i}.png", _pixels(10 * len(c) + i, (6, 6)))  # mode L
    got = from_image_folder(tmp_path, size=(3, 4), test_fraction=0.4, seed=0)
    assert got.x_train.shape == (6, 1, 3, 4) and got.x_test.shape == (4, 1, 3, 4)
    assert got.class_names == ("one", "zero")
    with Image.open(tmp_path / "one" / "0.png") as img:
        expected = np.asarray(img.resize((4, 3), Image.Resampling.BILINEAR))
    everything = np.concatenate([got.x_train, got.x_test])[:, 0]
    assert any(np.array_equal(e, expected) for e in everything)
    rgb = from_image_folder(tmp_path, size=3, mode="RGB")
    assert rgb.x_train.shape[1:] == (3, 3, 3)


def test_image_folder_separate_test_folder_and_errors(tmp_path: Path) -> None:
    _save(tmp_path / "tr" / "a" / "0.png", _pixels(0, (4, 4)))
    _save(tmp_path / "tr" / "b" / "0.png", _pixels(1, (4, 4)))
    _save(tmp_path / "te" / "b" / "0.png", _pixels(2, (4, 4)))
    got = from_image_folder(tmp_path / "tr", test_folder=tmp_path / "te")
    np.testing.assert_array_equal(got.y_train, [0, 1])
    np.testing.assert_array_equal(got.y_test, [1])

    _save(tmp_path / "te" / "c" / "0.png", _pixels(3, (4, 4)))
    with pytest.raises(DataError, match=r"has classes \['c'\] that .* lacks"):
        from_image_folder(tmp_path / "tr", test_folder=tmp_path / "te")
    _save(tmp_path / "tr" / "b" / "1.png", _pixels(4, (5, 4)))
    with pytest.raises(DataError, match=r"1.png is 4x5 but .*0.png is 4x4.*pass size="):
        from_image_folder(tmp_path / "tr")
    (tmp_path / "tr" / "b" / "2.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read image .*2.png"):
        from_image_folder(tmp_path / "tr", size=4)
    (tmp_path / "tr" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty holds no images"):
        from_image_folder(tmp_path / "tr")
    with pytest.raises(DataError, match="has no class subfolders"):
        from_image_folder(tmp_path / "tr" / "a")
    with pytest.raises(DataError, match="does not exist"):
        from_image_folder(tmp_path / "nowhere")


# --- from_hf_dataset ----------------------------------------------------------------------------


def test_hf_image_dataset_dict_with_class_labels() -> None:
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    train_px = [_pixels(i, (4, 4, 3)) for i in range(4)]
    test_px = [_pixels(10 + i, (4, 4, 3)) for i in range(2)]
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["cat", "dog"])})

    def split(pixels, labels):
        return datasets.Dataset.from_dict(
            {"img": [Image.fromarray(p) for p in pixels], "label": labels}, features=features)

    dd = datasets.DatasetDict(train=split(train_px, [0, 1, 1, 0]), test=split(test_px, [1, 0]))
    got = from_hf_dataset(dd)
    assert got.class_names == ("cat", "dog")
    np.testing.assert_array_equal(got.y_train, [0, 1, 1, 0])
    np.testing.assert_array_equal(got.y_test, [1, 0])
    np.testing.assert_array_equal(got.x_train, np.stack(train_px).transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(got.x_test, np.stack(test_px).transpose(0, 3, 1, 2))
    gray = from_hf_dataset(dd, mode="L", size=2)
    assert gray.x_train.shape == (4, 1, 2, 2)


def test_hf_single_tabular_dataset_with_string_labels() -> None:
    datasets = pytest.importorskip("datasets")
    features = [[float(i), float(-i)] for i in range(10)]
    labels = ["spam" if i % 2 else "ham" for i in range(10)]
    ds = datasets.Dataset.from_dict({"features": features, "target": labels})
    got = from_hf_dataset(ds, label_column="target", test_fraction=0.4, seed=1)
    assert got.class_names == ("ham", "spam")
    assert len(got.y_train) == 6 and len(got.y_test) == 4
    for x, y in ((got.x_train, got.y_train), (got.x_test, got.y_test)):
        np.testing.assert_array_equal(x[:, 1], -x[:, 0])
        np.testing.assert_array_equal(y, x[:, 0].astype(int) % 2)  # odd rows are spam (1)


def test_hf_errors_name_the_columns() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"a": [[1.0]] * 4, "b": [[2.0]] * 4, "label": [0, 1] * 2})
    with pytest.raises(DataError, match=r"which column holds the inputs \(a, b\)"):
        from_hf_dataset(ds)
    with pytest.raises(DataError, match="no label column 'y'; its columns are a, b, label"):
        from_hf_dataset(ds, image_column="a", label_column="y")
    with pytest.raises(DataError, match="no split 'training'"):
        from_hf_dataset(datasets.DatasetDict(train=ds), "a", split_train="training")
    got = from_hf_dataset(datasets.DatasetDict(train=ds), "b")  # no test split: held out
    assert isinstance(got, ArraySplits) and len(got.y_test) == 2


def test_hf_without_datasets_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match=r"pip install lifelong\[hf\]"):
        from_hf_dataset("mnist")
