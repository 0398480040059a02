"""Text-classification tasks of the continual-learning benchmarks of O-LoRA / MIGU.

Each task is a folder `text/<task>/` with `train.jsonl` and `test.jsonl` (one `{"text", "label"}`
per line, the label a string) and `labels.json` (the label list, in order), found in the data
directory, `$LIFELONG_DATA` or the cache (`lifelong.data.download.data_dirs`). The 15 tasks of
the long benchmark are the published subsets of O-LoRA's benchmark folder; Yahoo Answers is not
available offline here.

`load_text_task(name, source="hub:DATASET_ID")` reads a task from the Hugging Face hub instead
(lifelong[hf]): any dataset with a text column and a class-label column (`text_column`,
`label_column`; label names from the column's `ClassLabel` feature).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .download import data_dirs

# The long-sequence benchmark's 15 tasks (O-LoRA's order); `yahoo` is not in ../shared/data.
TEXT_TASKS = ("yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb", "sst-2", "dbpedia",
              "agnews", "yahoo", "multirc", "boolqa", "wic")

# Hub datasets of the standard benchmark's tasks (text column, label column), for source="hub".
HUB_SOURCES = {
    "agnews": ("fancyzhx/ag_news", "text", "label"),
    "yelp": ("Yelp/yelp_review_full", "text", "label"),
    "dbpedia": ("fancyzhx/dbpedia_14", "content", "label"),
    "yahoo": ("community-datasets/yahoo_answers_topics", "question_content", "topic"),
}


@dataclasses.dataclass
class TextTaskData:
    """One task's texts and labels (indices into `labels`)."""

    name: str
    labels: list[str]
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray

    def subset(self, train: int | None, test: int | None, seed: int) -> TextTaskData:
        """At most `train` / `test` samples of each split, drawn at random with `seed` (the
        same for every method, so runs compare on the same samples)."""
        rng = np.random.default_rng(seed)

        def pick(texts: list[str], labels: np.ndarray, count: int | None
                 ) -> tuple[list[str], np.ndarray]:
            if count is None or count >= len(texts):
                return texts, labels
            index = np.sort(rng.choice(len(texts), size=count, replace=False))
            return [texts[i] for i in index], labels[index]

        train_texts, train_labels = pick(self.train_texts, self.train_labels, train)
        test_texts, test_labels = pick(self.test_texts, self.test_labels, test)
        return TextTaskData(self.name, self.labels, train_texts, train_labels, test_texts,
                            test_labels)


def load_text_task(name: str, data_dir: str | None = None, *, source: str = "local",
                   text_column: str | None = None, label_column: str | None = None
                   ) -> TextTaskData:
    """Task `name` from `text/<name>/` (source "local") or from the hub ("hub" for the known
    tasks of `HUB_SOURCES`, or "hub:DATASET_ID")."""
    if source == "local":
        return _load_local(name, data_dir)
    if source == "hub" or source.startswith("hub:"):
        known = HUB_SOURCES.get(name, (None, "text", "label"))
        dataset_id = source[4:] if source.startswith("hub:") else known[0]
        if dataset_id is None:
            raise ConfigError(f"no hub dataset is known for text task '{name}'; pass "
                              f"source='hub:DATASET_ID' (known: {', '.join(HUB_SOURCES)})")
        return _load_hub(name, dataset_id, text_column or known[1], label_column or known[2])
    raise ConfigError(f"text source '{source}' is not accepted; use local, hub or hub:DATASET_ID")


def _load_local(name: str, data_dir: str | None) -> TextTaskData:
    searched = [d / "text" / name for d in data_dirs(data_dir)]
    folder = next((f for f in searched if (f / "labels.json").is_file()), None)
    if folder is None:
        where = ", ".join(str(f) for f in searched)
        raise ConfigError(f"text task '{name}' not found: no labels.json in {where}. Fix: pass "
                          "--data-dir DIR or set LIFELONG_DATA=DIR, where DIR/text/<task>/ holds "
                          "train.jsonl, test.jsonl and labels.json; or load it from the hub "
                          "(source='hub')")
    labels = json.loads((folder / "labels.json").read_text())
    train_texts, train_labels = _read_jsonl(folder / "train.jsonl", labels)
    test_texts, test_labels = _read_jsonl(folder / "test.jsonl", labels)
    return TextTaskData(name, labels, train_texts, train_labels, test_texts, test_labels)


def _read_jsonl(path: Path, labels: list[str]) -> tuple[list[str], np.ndarray]:
    index = {label: i for i, label in enumerate(labels)}
    texts, ids = [], []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                texts.append(str(record["text"]))
                ids.append(index[record["label"]])
            except (json.JSONDecodeError, KeyError) as error:
                raise ConfigError(f"{path}:{number}: expected a JSON object with 'text' and a "
                                  f"'label' among {labels}; {type(error).__name__}: {error}"
                                  ) from None
    if not texts:
        raise ConfigError(f"{path} holds no samples")
    return texts, np.asarray(ids, dtype=np.int64)


def _load_hub(name: str, dataset_id: str, text_column: str, label_column: str) -> TextTaskData:
    try:
        import datasets
    except ImportError:
        raise ConfigError("hub text tasks need the extra: pip install 'lifelong[hf]'") from None
    loaded = datasets.load_dataset(dataset_id)
    splits = {}
    for split in ("train", "test"):
        if split not in loaded:
            raise ConfigError(f"hub dataset {dataset_id} has no '{split}' split "
                              f"(it has {', '.join(loaded)})")
        part = loaded[split]
        for column in (text_column, label_column):
            if column not in part.column_names:
                raise ConfigError(f"hub dataset {dataset_id} has no column '{column}' "
                                  f"(it has {', '.join(part.column_names)}); pass "
                                  "text_column / label_column")
        splits[split] = part
    feature: Any = splits["train"].features[label_column]
    names = getattr(feature, "names", None)
    if names is None:
        raise ConfigError(f"column '{label_column}' of {dataset_id} is not a ClassLabel, so its "
                          "label names are unknown")
    texts = {s: [str(t) for t in splits[s][text_column]] for s in splits}
    labels = {s: np.asarray(splits[s][label_column], dtype=np.int64) for s in splits}
    return TextTaskData(name, list(names), texts["train"], labels["train"], texts["test"],
                        labels["test"])
