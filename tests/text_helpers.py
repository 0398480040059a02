"""Tiny text tasks in the ../shared/data/text layout, written by the tests themselves."""

from __future__ import annotations

import json
import random
from pathlib import Path

LABELS = {
    "agnews": ["World", "Sports", "Business", "Science or Technology"],
    "amazon": ["very negative", "negative", "neutral", "positive", "very positive"],
    "yelp": ["very negative", "negative", "neutral", "positive", "very positive"],
    "dbpedia": ["Company", "Educational Institution", "Artist", "Athlete"],
}
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def write_text_tasks(root: Path, train: int = 16, test: int = 8, seed: int = 0) -> Path:
    """root/text/<task>/{train,test}.jsonl + labels.json for the four standard tasks. A label's
    texts start with a word that names it, so a model can learn the tasks."""
    rng = random.Random(seed)
    for task, labels in LABELS.items():
        folder = root / "text" / task
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "labels.json").write_text(json.dumps(labels))
        for split, count in (("train", train), ("test", test)):
            lines = []
            for i in range(count):
                label = i % len(labels)
                filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
                lines.append(json.dumps({"text": f"{WORDS[label]} {task} {filler}",
                                         "label": labels[label]}))
            (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root
