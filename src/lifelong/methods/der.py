"""Dark experience replay, DER and DER++ (Buzzega et al. 2020).

A reservoir memory keeps stream samples together with the logits the model gave them when they
arrived. Each step adds, on memory samples drawn at random,

    DER:    α · MSE(f(x'), z')                          (z' the stored logits)
    DER++:  α · MSE(f(x'), z') + β · CE(f(x''), y'')    (x'' a second, independent draw)

The model's full output (every unit) is stored and matched, as in the authors' code; the CE term
reads each sample's own task. Memory samples are drawn before the new ones are stored.

BatchNorm: the memory passes are part of the training objective, so they run in train mode and,
as in the authors' code, update the running statistics (the way replayed samples inside the
batch would); the stored logits are those of the training pass, with the batch's statistics.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor

from ..core.batch import Batch
from ..core.config import option
from ..core.registry import register_method
from ..errors import ConfigError
from .memory import MemoryConfig, MemoryMethod


@dataclasses.dataclass
class DERConfig(MemoryConfig):
    alpha: float = option(0.3, "weight α of the logit-matching (MSE) term", low=0)
    beta: float = option(0.0, "weight β of the cross-entropy on memory labels (DER++)", low=0)
    replay_batch_size: int | None = option(
        None, "memory samples per term and step (None: as many as the new batch)", low=1)

    def validate(self) -> None:
        super().validate()
        if self.buffer != "reservoir":
            raise ConfigError(f"{self._owner} stores logits as the stream passes: it needs "
                              "buffer=reservoir")


@dataclasses.dataclass
class DERPPConfig(DERConfig):
    beta: float = option(0.5, "weight β of the cross-entropy on memory labels", low=0)


@register_method
class DER(MemoryMethod):
    name = "der"
    description = "dark experience replay: match the logits stored with past samples"
    Config = DERConfig

    def penalty(self, batch: Batch, output: Tensor) -> Tensor | None:
        cfg = self.config
        count = cfg.replay_batch_size or batch.num_new
        term = None
        matched = self.memory.sample(count)
        if matched is not None:
            term = cfg.alpha * F.mse_loss(self.model(matched.x), matched.extras["logits"])
            if cfg.beta > 0:
                labelled = self.memory.sample(count)
                term = term + cfg.beta * F.cross_entropy(self.forward(labelled), labelled.y)
        new = batch.select(slice(0, batch.num_new))
        new.extras = {"logits": output[: batch.num_new].detach()}
        self.memory.add(new)
        return term


@register_method
class DERPP(DER):
    name = "derpp"
    description = "DER++: DER plus cross-entropy on the labels of other memory samples"
    Config = DERPPConfig
