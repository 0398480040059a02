"""Continual-learning metrics on hand-made accuracy matrices."""

from __future__ import annotations

import pytest

from lifelong.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    summarize,
)

# after task 0: task 0 learned; after task 1: task 0 partly forgotten; after 2: more forgotten
R = [[0.9, 0.3, 0.1],
     [0.6, 0.8, 0.2],
     [0.5, 0.7, 0.95]]
BASELINE = [0.1, 0.25, 0.15]


def test_average_accuracy_is_the_mean_of_the_last_row() -> None:
    assert average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_backward_transfer() -> None:
    # ((0.5 - 0.9) + (0.7 - 0.8)) / 2
    assert backward_transfer(R) == pytest.approx(-0.25)


def test_forward_transfer_against_the_random_model() -> None:
    # ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.3 - 0.25) + (0.2 - 0.15)) / 2
    assert forward_transfer(R, BASELINE) == pytest.approx(0.05)


def test_forgetting_uses_the_best_earlier_accuracy_after_learning() -> None:
    # task 0: max(0.9, 0.6) - 0.5 = 0.4; task 1: max(0.8) - 0.7 = 0.1
    assert forgetting(R) == pytest.approx(0.25)
    improving = [[0.5, 0.0], [0.7, 0.9]]  # accuracy on task 0 rose: negative forgetting
    assert forgetting(improving) == pytest.approx(-0.2)
    assert backward_transfer(improving) == pytest.approx(0.2)


def test_single_task_and_bad_shapes() -> None:
    assert summarize([[0.7]], [0.1]) == {"acc": 0.7, "bwt": None, "fwt": None,
                                         "forgetting": None}
    with pytest.raises(ValueError, match="square"):
        average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError, match="one baseline accuracy per task"):
        forward_transfer(R, [0.1])


def test_forgetting_takes_the_best_row_not_the_diagonal() -> None:
    # task 0 improved while task 1 was learned (0.6 -> 0.8), then dropped to 0.5
    rising = [[0.6, 0.1, 0.1],
              [0.8, 0.9, 0.1],
              [0.5, 0.9, 0.9]]
    assert forgetting(rising) == pytest.approx(((0.8 - 0.5) + (0.9 - 0.9)) / 2)
    assert backward_transfer(rising) == pytest.approx(((0.5 - 0.6) + (0.9 - 0.9)) / 2)
