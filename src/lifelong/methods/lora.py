"""LoRA adapters for continual learning, and sequential LoRA ("SeqLoRA", the baseline of O-LoRA and
MIGU: Wang et al. 2023; Du et al. 2024).

LoRA (Hu et al. 2022) freezes a layer's weight W and learns a low-rank update: the layer computes
W·x + (α/r)·B·A·x, with A ∈ R^{r×in} (Kaiming-uniform at the start) and B ∈ R^{out×r} (zero at
the start, so a new adapter changes nothing yet). The adapters are peft's
(`peft.inject_adapter_in_model`).

At `attach`, every targeted Linear layer gets an adapter, every other weight of the model is frozen
except the output layer when it is trained (`head`: a classification head is new and random, so it
is trained; a language model's head is pretrained and stays frozen, as in O-LoRA and MIGU), and
the adapter's parameters are added to the optimizer as a new parameter group (the optimizer was
built before, on the model's parameters; the frozen ones get no gradient and so no update).
`lora` trains this one adapter on every task in turn. `inc-lora` and `o-lora` add one per task.
In a composition (`lora+migu`, `inc-lora+ewc`), the other methods hear of each change of the
trainable parameters and follow it (`Method.parameters_changed`, called by the composite).

Checkpoints: the adapters are part of the model (its `state_dict()` holds them) and of the
method's state. A resumed run builds a fresh model, attaches the method (one adapter), then loads
the model's state: a load pre-hook on the model first adds the adapters the state holds (with
their optimizer groups, in the same order, so the optimizer's state loads next), then the
method's state. `detach()` removes that hook and leaves the adapters in the model, trained.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import warnings
import weakref
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..core.config import Config, option
from ..core.method import Method
from ..core.registry import register_alias, register_method
from ..errors import ConfigError
from ..models.introspection import (
    find_output_layer,
    is_language_model_head,
    is_linear_like,
    linear_features,
)

ADAPTER = "adapter{}"  # name of the k-th adapter; its keys: `<layer>.lora_A.adapter<k>.weight`
_ADAPTER_KEY = re.compile(r"\.lora_A\.adapter(\d+)\.weight$")


@dataclasses.dataclass
class LoRAConfig(Config):
    r: int = option(8, "rank r of each adapter (O-LoRA and MIGU: 8)", low=1)
    alpha: float = option(32.0, "scaling α: an adapter adds (α/r)·B·A·x (O-LoRA: 32)",
                          low=0, low_open=True)
    dropout: float = option(0.0, "dropout on an adapter's input, drawn from torch's global "
                            "generator (O-LoRA's scripts: 0.1)", low=0, high=1, high_open=True)
    target_modules: list[str] = option(
        [], "layers that get adapters: full module names or their last parts (query, v_proj); "
        "empty: every Linear layer except the output layer")
    lr: float | None = option(
        None, "learning rate of the adapters (None: the optimizer's). LoRA wants a larger one "
        "than full fine-tuning: O-LoRA and MIGU use 1e-3", low=0, low_open=True)
    head: Literal["auto", "train", "freeze"] = option(
        "auto", "the output layer: auto trains a classification head (new, random) and freezes "
        "a language model's head (pretrained, as in O-LoRA and MIGU; training it also trains "
        "the input embeddings when the two are tied, as in GPT-2)")


def resolve_targets(model: nn.Module, names: list[str], head: str | None, rank: int) -> list[str]:
    """Full names of the layers to adapt; a ConfigError names any entry that matches no Linear
    layer (listing those that exist), the head, or a layer narrower than the rank."""
    linears = {n: m for n, m in model.named_modules() if is_linear_like(m) and n != head}
    if not names:
        chosen = list(linears)
    else:
        chosen = []
        for entry in names:
            if entry == head:
                raise ConfigError(f"lora.target_modules: '{entry}' is the output layer, which is "
                                  "trained or frozen as a whole (see lora.head), not adapted")
            found = [n for n in linears if n == entry or n.endswith("." + entry)]
            if not found:
                raise ConfigError(f"lora.target_modules: no Linear layer is named '{entry}'; the "
                                  f"model's Linear layers are: {', '.join(linears) or '(none)'}")
            chosen += [n for n in found if n not in chosen]
    if not chosen:
        raise ConfigError("lora found no Linear layer to adapt besides the output layer")
    for name in chosen:
        fan_in, fan_out = linear_features(linears[name])
        if rank > min(fan_in, fan_out):
            raise ConfigError(f"lora.r: rank {rank} exceeds min(in, out) = {min(fan_in, fan_out)} "
                              f"of layer '{name}'; choose r <= {min(fan_in, fan_out)}")
    return chosen


def _peft() -> Any:
    if importlib.util.find_spec("peft") is None:
        raise ConfigError("the LoRA methods need peft: pip install 'lifelong[hf]'")
    import peft

    return peft


class LoRAMethod(Method):
    """Adapter bookkeeping shared by lora, inc-lora and o-lora: adapter k is named `adapter<k>`,
    all adapters are active (their outputs add up) and only the newest is trained."""

    Config = LoRAConfig

    def __init__(self, config: LoRAConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self.num_adapters = 0
        self.layers: list[tuple[str, nn.Module]] = []  # (name, peft LoraLayer) in model order

    # --- attach ------------------------------------------------------------------------------
    def on_attach(self) -> None:
        peft = _peft()
        if self.optimizer is None:
            raise ConfigError(f"{self.name} adds its adapters to the optimizer: "
                              "attach(model, optimizer)")
        if any(isinstance(m, peft.tuners.tuners_utils.BaseTunerLayer)
               for m in self.model.modules()):
            raise ConfigError(f"{self.name}: the model already holds peft adapters (an earlier "
                              "attach?); attach to a fresh model and load the state into it")
        cfg = self.config
        found = find_output_layer(self.model)
        self.head_name, head = found if found is not None else (None, None)
        train = cfg.head == "train" or (cfg.head == "auto" and head is not None
                                         and not is_language_model_head(self.model, head))
        trained_head = head.parameters() if train and head is not None else ()
        self.head_params = {id(p) for p in trained_head}
        targets = resolve_targets(self.model, cfg.target_modules, self.head_name, cfg.r)
        self._target_regex = "(?:" + "|".join(re.escape(n) for n in targets) + ")"
        self.layers, self.num_adapters = [], 0
        self.add_adapter()
        method = weakref.ref(self)  # a plain function: deep copies of the model do not copy us

        def grow(module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
            owner = method()
            if owner is not None:
                owner.grow_to(adapters_in(state_dict, prefix))

        self._handles.append(self.model.register_load_state_dict_pre_hook(grow))

    # --- adapters ----------------------------------------------------------------------------
    def add_adapter(self) -> None:
        """Inject adapter `num_adapters` into every target layer; it becomes the trained one."""
        peft, cfg = _peft(), self.config
        name = ADAPTER.format(self.num_adapters)
        lora = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                               target_modules=self._target_regex, bias="none")
        with warnings.catch_warnings():  # "several adapters" and GPT-2's Conv1D layout: intended
            warnings.filterwarnings("ignore", message=".*(peft_config|fan_in_fan_out).*")
            peft.inject_adapter_in_model(lora, self.model, adapter_name=name)
        if not self.layers:
            self.layers = [(n, m) for n, m in self.model.named_modules()
                           if isinstance(m, peft.tuners.lora.LoraLayer)]
        self.num_adapters += 1
        active = [ADAPTER.format(k) for k in range(self.num_adapters)]
        for _, layer in self.layers:
            layer.set_adapter(active)  # every adapter takes part in the forward pass
        self.set_trainable()
        group: dict[str, Any] = {"params": self.adapter_parameters(self.num_adapters - 1)}
        if self.config.lr is not None:
            group["lr"] = self.config.lr
        self.optimizer.add_param_group(group)
        self.adapters_changed()

    def grow_to(self, count: int) -> None:
        while self.num_adapters < count:
            self.add_adapter()

    def adapter_matrices(self, k: int) -> list[tuple[Tensor, Tensor]]:
        """(A [r, in], B [out, r]) of adapter k in every adapted layer."""
        name = ADAPTER.format(k)
        return [(layer.lora_A[name].weight, layer.lora_B[name].weight) for _, layer in self.layers]

    def adapter_parameters(self, k: int) -> list[Tensor]:
        return [p for pair in self.adapter_matrices(k) for p in pair]

    def set_trainable(self) -> None:
        """Freeze everything but the newest adapter (and the head when trained). A frozen
        parameter's `.grad` is dropped, so no optimizer (momentum, weight decay) moves it."""
        newest = {id(p) for p in self.adapter_parameters(self.num_adapters - 1)}
        for p in self.model.parameters():
            train = id(p) in newest or id(p) in self.head_params
            p.requires_grad_(train)
            if not train:
                p.grad = None
        self.parameters_changed()

    def adapters_changed(self) -> None:
        """Called after adapters were added or loaded (caches of subclasses)."""

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["adapters"] = [
            {f"{layer}.{part}": t.detach().clone() for (layer, _), pair in
             zip(self.layers, self.adapter_matrices(k)) for part, t in zip("AB", pair)}
            for k in range(self.num_adapters)]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = self.Config.from_dict(state["config"]).to_dict()
        for key in ("r", "alpha", "dropout", "target_modules", "head"):
            if saved[key] != self.config.to_dict()[key]:
                raise ConfigError(f"{self.name}: the state was saved with {key}={saved[key]!r}, "
                                  f"this method was attached with {self.config.to_dict()[key]!r}")
        adapters = state["adapters"]
        if len(adapters) < self.num_adapters:
            raise ConfigError(f"{self.name}: the state holds {len(adapters)} adapters and the "
                              f"model already {self.num_adapters}; load into a fresh model")
        super().load_state_dict(state)
        self.grow_to(len(adapters))
        with torch.no_grad():
            for k, weights in enumerate(adapters):
                for (layer, _), pair in zip(self.layers, self.adapter_matrices(k)):
                    for part, tensor in zip("AB", pair):
                        tensor.copy_(weights[f"{layer}.{part}"])
        self.set_trainable()
        self.adapters_changed()


def adapters_in(state_dict: dict[str, Any], prefix: str = "") -> int:
    """How many adapters (`adapter0` … `adapter<k>`) a model state dict holds."""
    indices = [int(m.group(1)) for key in state_dict if key.startswith(prefix)
               and (m := _ADAPTER_KEY.search(key))]
    return max(indices) + 1 if indices else 0


@register_method
class LoRA(LoRAMethod):
    """Sequential LoRA (SeqLoRA): one adapter, trained on every task in turn."""

    name = "lora"
    description = "one LoRA adapter trained on every task in turn (SeqLoRA); base weights frozen"


# `lora-replay` (MIGU's LoRA + replay baseline) is the composition of the two methods.
register_alias("lora-replay", "lora+replay")
