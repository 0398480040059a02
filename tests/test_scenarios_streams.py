"""Stream generators against independent computations of their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.scenarios import (
    LTUTarget,
    label_permuted_images,
    permuted_images,
    slowly_changing_regression,
)


def test_ltu_target_matches_the_papers_definition() -> None:
    target = LTUTarget(20, 100, 0.7, torch.Generator().manual_seed(3))
    w, b = target.weight.numpy(), target.bias.numpy()
    v, c = target.out_weight.numpy(), target.out_bias.numpy()
    assert set(np.unique(w)) == {-1.0, 1.0} and set(np.unique(v)) <= {-1.0, 1.0}
    x = np.random.default_rng(0).integers(0, 2, (500, 20)).astype(np.float32)
    negatives = (w < 0).sum(1) + (b < 0)  # S_i over the m + 1 weights, bias included
    tau = 0.7 * 21 - negatives
    features = (x @ w.T + b > tau).astype(np.float32)
    expected = features @ v + c
    np.testing.assert_allclose(target(torch.from_numpy(x)).squeeze(1).numpy(), expected)
    assert 0.02 < features.mean() < 0.98  # β = 0.7 keeps the units neither always on nor off


def test_slowly_changing_regression_flips_one_slow_bit_per_task() -> None:
    stream = slowly_changing_regression(num_tasks=6, samples_per_task=300, seed=1)
    segments = [stream.segment(t) for t in range(6)]
    for t, seg in enumerate(segments):
        assert seg.x.shape == (300, 20) and seg.y.shape == (300, 1)
        assert set(seg.x.unique().tolist()) == {0.0, 1.0}
        slow = seg.x[:, :15]
        assert torch.equal(slow, slow[:1].expand_as(slow))  # constant within a task
        fast = seg.x[:, 15:]
        assert 0.4 < fast.mean() < 0.6 and fast.std(0).min() > 0.3  # i.i.d. fair bits
        if t:
            assert int((slow[0] != segments[t - 1].x[0, :15]).sum()) == 1
    again = slowly_changing_regression(num_tasks=6, samples_per_task=300, seed=1)
    assert torch.equal(again.segment(4).x, segments[4].x)  # any segment rebuilds alone
    assert torch.equal(again.segment(4).y, segments[4].y)
    other = slowly_changing_regression(num_tasks=6, samples_per_task=300, seed=2)
    assert not torch.equal(other.segment(0).y, segments[0].y)
    probe = stream.probe(3, 50)
    assert torch.equal(probe.x[:, :15], segments[3].x[:50, :15])  # same task distribution


def test_permuted_images_permute_pixels_per_task_and_show_each_image_once() -> None:
    # pixel p of image i holds 1000 i + p: each value names its image and its position
    n, side = 30, 4
    images = (np.arange(n)[:, None] * 1000 + np.arange(side * side)).reshape(n, side, side)
    images = images.astype(np.float32)
    labels = np.arange(n) % 3
    stream = permuted_images(images, labels, name="p", num_tasks=3, samples_per_task=n, seed=0,
                             permute_first=False)
    permutations = []
    for t in range(3):
        seg = stream.segment(t)
        which = (seg.x // 1000).long()
        assert torch.equal(which, which[:, :1].expand_as(which))  # a row is one image
        assert sorted(which[:, 0].tolist()) == list(range(n))  # each image once per task
        assert torch.equal(seg.y, torch.from_numpy(labels)[which[:, 0]])
        positions = (seg.x - 1000 * which).long()
        assert torch.equal(positions, positions[:1].expand_as(positions))  # one permutation
        permutations.append(positions[0].tolist())
    assert permutations[0] == list(range(side * side))  # permute_first=False
    assert permutations[1] != permutations[2] and sorted(permutations[1]) == permutations[0]


def test_label_permuted_images_relabel_consistently_within_a_task() -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (50, 4, 4), dtype=np.uint8), np.arange(50) % 5
    stream = label_permuted_images(images, labels, name="l", num_tasks=3, samples_per_task=120,
                                   seed=4)
    flat = {images[i].tobytes(): int(labels[i]) for i in range(50)}
    mappings = []
    for t in range(3):
        seg = stream.segment(t)
        assert seg.x.shape == (120, 4, 4) and seg.x.max() <= 1.0
        mapping: dict[int, int] = {}
        for x, y in zip(seg.x, seg.y):
            original = flat[(x.reshape(4, 4) * 255).round().to(torch.uint8).numpy().tobytes()]
            assert mapping.setdefault(original, int(y)) == int(y)
        assert sorted(mapping.values()) == list(range(5))  # a permutation of the labels
        mappings.append(mapping)
    assert mappings[0] != mappings[1] or mappings[1] != mappings[2]


def test_out_of_range_task_is_refused() -> None:
    stream = slowly_changing_regression(num_tasks=2, samples_per_task=10)
    with pytest.raises(IndexError, match="outside"):
        stream.segment(2)
