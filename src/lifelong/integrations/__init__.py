"""Run lifelong methods inside other people's training loops (lifelong[hf]).

- `lifelong.integrations.hf`: `attach(trainer, method, task=t)` before `trainer.train()` puts a
  method into a Hugging Face `transformers.Trainer`.
- `lifelong.integrations.accelerate`: `attach(accelerator, model, optimizer, method)` and
  `training_loss(...)` for a plain Accelerate loop.

These modules are the only ones that import transformers / accelerate for integration; importing
them without the extra raises a `ConfigError` that says what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ..errors import ConfigError


def require(package: str) -> Any:
    """Import `package`, or say how to install it."""
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"lifelong's Hugging Face integration needs {package}: "
                          "pip install 'lifelong[hf]'")
    return importlib.import_module(package)
