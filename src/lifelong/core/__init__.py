"""The method protocol, its registry and composition."""

from .batch import Batch, as_batch, iter_batches
from .compose import Composite, build_method, check_compatible, parse_method_spec
from .config import Config, option
from .method import Method
from .readout import Readout
from .registry import get_method_class, list_methods, register_method

__all__ = ["Batch", "Composite", "Config", "Method", "Readout", "as_batch", "build_method",
           "check_compatible", "get_method_class", "iter_batches", "list_methods", "option",
           "parse_method_spec", "register_method"]
