"""Bring your own data as a Hugging Face `datasets` dataset: `from_hf_dataset` (a `DatasetDict`, a
`Dataset` or a hub name). Needs `pip install lifelong[hf]`."""

from __future__ import annotations

from typing import Any

import numpy as np

from lifelong.data.arrays import ArraySplits
from lifelong.data.custom import as_features, from_arrays
from lifelong.data.custom_images import GRAY_MODES, Size, images_to_array
from lifelong.errors import DataError


def from_hf_dataset(
    dataset_or_name: Any,
    image_column: str | None = None,
    label_column: str = "label",
    split_train: str = "train",
    split_test: str = "test",
    *,
    size: Size | None = None,
    mode: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ArraySplits:
    """A Hugging Face `datasets` dataset: a `DatasetDict` (its `split_train` and `split_test`
    splits), a single `Dataset`, or a hub name (`datasets.load_dataset(name)`, which downloads).

    `image_column`: the inputs; by default the one column of `Image` type, else the one column
    besides `label_column`. Image columns become uint8 `[N, C, H, W]` (`size` and `mode` as in
    `from_image_folder`); other columns must hold numbers of one shape. Labels: a `ClassLabel`
    (its names become `class_names`), integers, or strings. Without a test split, a stratified
    `test_fraction` of the training split is held out. Needs `pip install lifelong[hf]`.
    """
    datasets = _import_datasets()
    data = dataset_or_name
    if isinstance(data, str):
        data = datasets.load_dataset(data)
    if isinstance(data, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise DataError("streaming (iterable) datasets are not supported; load the dataset "
                        "without streaming=True")
    if isinstance(data, datasets.DatasetDict):
        if split_train not in data:
            raise DataError(f"the dataset has no split '{split_train}'; it has "
                            f"{', '.join(data)} (pass split_train=)")
        train, test = data[split_train], data.get(split_test)
    elif isinstance(data, datasets.Dataset):
        train, test = data, None
    else:
        raise DataError(f"from_hf_dataset takes a datasets.Dataset, a DatasetDict or a hub "
                        f"name, not {type(data).__name__}")

    columns = list(train.column_names)
    if label_column not in columns:
        raise DataError(f"the dataset has no label column '{label_column}'; its columns are "
                        f"{', '.join(columns)} (pass label_column=)")
    if image_column is None:
        image_column = _input_column(train, label_column, datasets)
    elif image_column not in columns:
        raise DataError(f"the dataset has no column '{image_column}'; its columns are "
                        f"{', '.join(columns)}")
    if test is not None:
        for column in (image_column, label_column):
            if column not in test.column_names:
                raise DataError(f"split '{split_test}' has no column '{column}'")

    splits = {split_train: train} | ({} if test is None else {split_test: test})
    if isinstance(train.features[image_column], datasets.Image):
        images = {name: list(split[image_column]) for name, split in splits.items()}  # decoded once
        if mode is None:
            gray = all(img.mode in GRAY_MODES for imgs in images.values() for img in imgs)
            mode = "L" if gray else "RGB"
        x = {name: images_to_array(imgs, [f"{name}[{i}]" for i in range(len(imgs))], mode, size)
             for name, imgs in images.items()}
    else:
        x = {name: as_features(split.with_format("numpy")[:][image_column],
                             f"column '{image_column}' of split '{name}'")
             for name, split in splits.items()}

    feature = train.features[label_column]
    class_names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    y_test = None if test is None else np.asarray(test[label_column])
    x_test = None if test is None else x[split_test]
    return from_arrays(x[split_train], np.asarray(train[label_column]), x_test, y_test,
                       test_fraction, seed, class_names=class_names)


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError("from_hf_dataset needs the Hugging Face datasets package: "
                        "pip install lifelong[hf] (or pip install datasets)") from None
    return datasets


def _input_column(train: Any, label_column: str, datasets: Any) -> str:
    images = [c for c, f in train.features.items() if isinstance(f, datasets.Image)]
    if len(images) == 1:
        return images[0]
    others = [c for c in train.column_names if c != label_column]
    if not images and len(others) == 1:
        return others[0]
    candidates = images or others
    raise DataError(f"cannot tell which column holds the inputs ({', '.join(candidates)}); "
                    "pass image_column=")
