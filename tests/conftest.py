"""Shared fixtures (helpers live in helpers.py, importable as `from helpers import ...`)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch
from cifar_fakes import write_tarball
from helpers import SHARED_DATA, toy_scenario

from lifelong.data import cifar as cifar_mod
from lifelong.data import md5sum
from lifelong.scenarios import Scenario

# the module (lifelong.data.download is also the name of its function)
download_mod = importlib.import_module("lifelong.data.download")

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


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache at a temp dir, clear the data variables and the in-process MD5 cache
    (autouse in tests/data)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LIFELONG_CACHE", str(cache))
    for var in ("LIFELONG_DATA", "LIFELONG_NO_DOWNLOAD", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(download_mod, "_MD5_CACHE", {})
    return cache


@pytest.fixture
def fake_tarball(monkeypatch: pytest.MonkeyPatch):
    """Write a tiny canonical tarball and accept its MD5 as the official one."""

    def make(path: Path, batches: dict[str, dict], raw: dict[str, bytes] | None = None) -> Path:
        write_tarball(path, batches, raw)
        monkeypatch.setattr(cifar_mod, "TARBALL_MD5", md5sum(path))
        return path

    return make
