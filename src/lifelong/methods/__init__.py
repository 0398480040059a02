"""The built-in methods; importing this package registers them all."""

from .agem import AGEM
from .cbp import CBP
from .der import DER, DERPP
from .ewc import EWC
from .gem import GEM
from .joint import Joint
from .l1 import L1
from .l2 import L2
from .lottery import Lottery
from .lwf import LwF
from .mas import MAS
from .naive import Naive
from .ncl import NCL
from .replay import Replay
from .shrink_perturb import ShrinkPerturb
from .si import SI
from .spg import SPG
from .upgd import UPGD

__all__ = [
    "AGEM",
    "CBP",
    "DER",
    "DERPP",
    "EWC",
    "GEM",
    "Joint",
    "L1",
    "L2",
    "Lottery",
    "LwF",
    "MAS",
    "NCL",
    "Naive",
    "Replay",
    "SI",
    "ShrinkPerturb",
    "SPG",
    "UPGD",
]
