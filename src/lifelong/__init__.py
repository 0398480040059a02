"""lifelong: continual learning for PyTorch.

Methods against catastrophic forgetting and loss of plasticity as small objects with a few hooks,
usable in lifelong's own loop or attached to any PyTorch training loop; scenarios, benchmarks and
metrics to measure them.
"""

from ._version import __version__
from .core import (
                   Batch,
                   Composite,
                   Config,
                   Method,
                   Readout,
                   build_method,
                   list_methods,
                   register_method,
)
from .errors import ConfigError, DataError, LifelongError

__all__ = ["Batch", "Composite", "Config", "ConfigError", "DataError", "LifelongError", "Method",
           "Readout", "__version__", "build_method", "list_methods", "register_method"]
