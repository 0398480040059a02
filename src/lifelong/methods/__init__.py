"""The built-in methods; importing this package registers them all."""

from .agem import AGEM
from .ewc import EWC
from .joint import Joint
from .l2 import L2
from .lwf import LwF
from .naive import Naive
from .replay import Replay

__all__ = ["AGEM", "EWC", "Joint", "L2", "LwF", "Naive", "Replay"]
