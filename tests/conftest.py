"""Shared fixtures (helpers live in helpers.py, importable as `from helpers import ...`)."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import SHARED_DATA, toy_scenario

from lifelong.scenarios import Scenario

torch.set_num_threads(1)


@pytest.fixture
def scenario() -> Scenario:
    return toy_scenario("task")


@pytest.fixture
def shared_data() -> str:
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(os.path.join(path, "mnist")):
        pytest.skip(f"real MNIST not found at {path} (the ../shared/data folder)")
    return path
