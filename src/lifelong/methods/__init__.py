"""The built-in methods; importing this package registers them all."""

from .agem import AGEM
from .cbp import CBP
from .das import DAS
from .der import DER, DERPP
from .ewc import EWC
from .gem import GEM
from .inc_lora import IncLoRA
from .joint import Joint
from .l1 import L1
from .l2 import L2
from .lora import LoRA
from .lottery import Lottery
from .lwf import LwF
from .mas import MAS
from .migu import MIGU
from .naive import Naive
from .ncl import NCL
from .o_lora import OLoRA
from .replay import Replay
from .shrink_perturb import ShrinkPerturb
from .si import SI
from .spg import SPG
from .upgd import UPGD

__all__ = [
    "AGEM",
    "CBP",
    "DAS",
    "DER",
    "DERPP",
    "EWC",
    "GEM",
    "IncLoRA",
    "Joint",
    "L1",
    "L2",
    "LoRA",
    "Lottery",
    "LwF",
    "MAS",
    "MIGU",
    "NCL",
    "OLoRA",
    "Naive",
    "Replay",
    "SI",
    "ShrinkPerturb",
    "SPG",
    "UPGD",
]
