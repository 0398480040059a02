"""One view of a model's structure, so that every method asks the same question the same way.

- `is_linear_like` / `linear_features`: an `nn.Linear`, or transformers' `Conv1D` (GPT-2's
  projections: a Linear whose weight is stored transposed, [in, out]);
- `output_layer`: the layer that holds the output units (the model's `head`, else a Hugging Face
  model's output embeddings, else its last linear-like layer); `is_language_model_head`;
- `hidden_units`: the hidden layers of a plain chain and the layer that reads each one's units
  (for unit-level methods: continual backprop's replacements);
- `linear_layers`: every linear-like layer with its name; `trailing_linear_chain`: the run of Linear
  and elementwise modules that ends a model (the diagonal-Hessian recursion of UPGD's second order).

Nothing here changes a model: each function reads its registered modules.
"""

from __future__ import annotations

import dataclasses
import sys

from torch import nn

from ..errors import ConfigError


def conv1d_class() -> type | None:
    """transformers' `Conv1D`, if transformers is loaded (a model holding one has loaded it)."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def is_conv1d(module: object) -> bool:
    """Whether `module` is transformers' GPT-2 `Conv1D` (a Linear with the weight [in, out])."""
    conv1d = conv1d_class()
    return conv1d is not None and isinstance(module, conv1d)


def is_linear_like(module: object) -> bool:
    """`nn.Linear` or transformers' `Conv1D`."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a linear-like layer."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every linear-like layer, in registration order."""
    return [(name, m) for name, m in model.named_modules() if is_linear_like(m)]


def output_layer(model: nn.Module, name: str = "auto") -> tuple[str, nn.Module]:
    """(name, layer) of the layer that holds the output units: the module called `name`, or with
    "auto" the model's `head` module, else a Hugging Face model's output embeddings, else its last
    linear-like layer. `ConfigError` when there is none."""
    modules = dict(model.named_modules())
    if name != "auto":
        if name not in modules:
            raise ConfigError(f"the model has no module '{name}'; its modules are: "
                              f"{', '.join(n for n in modules if n)}")
        return name, modules[name]
    found = find_output_layer(model)
    if found is None:
        raise ConfigError("cannot find the output layer (no `head` module, no nn.Linear); "
                          "name it with head=...")
    return found


def find_output_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """`output_layer(model)`, or None for a model without a linear-like layer."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        get = getattr(model, "get_output_embeddings", None)
        head = get() if callable(get) else None
    if isinstance(head, nn.Module):
        return next((n, m) for n, m in model.named_modules() if m is head)
    linears = linear_layers(model)
    return linears[-1] if linears else None


def is_language_model_head(model: nn.Module, head: nn.Module) -> bool:
    """Whether `head` is the output embeddings of a Hugging Face model inside `model` (a
    pretrained language-model head)."""
    for module in model.modules():
        get = getattr(module, "get_output_embeddings", None)
        if callable(get) and module is not model and get() is head:
            return True
    return False


# --- hidden units of a plain chain ----------------------------------------------------------------
WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)
CHAIN_HELP = ("{owner} needs a plain chain of nn.Linear / nn.Conv2d layers (registered in the "
              "order they run, with only activations, dropout, pooling, flatten and "
              "BatchNorm1d/2d or LayerNorm over the units between them), each layer reading all "
              "units of the one before (no residual connections: models such as resnet18 are not "
              "supported)")


@dataclasses.dataclass(eq=False)
class HiddenLayer:
    """One hidden layer of a chain: the weight layer whose output units it holds and the layer
    reading them."""

    name: str
    layer: nn.Module  # Linear or Conv2d: the units' incoming weights
    next: nn.Module  # Linear or Conv2d: the units' outgoing weights
    norms: list[nn.Module]  # BatchNorm/LayerNorm between the two, one entry per unit
    units: int
    units_last: bool  # the next layer reads the units on the input's last axis (Linear)


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}→{module.out_features})"
    if isinstance(module, nn.Conv2d):
        return f"Conv2d({module.in_channels}→{module.out_channels})"
    return type(module).__name__


def _units_in(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _units_out(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def hidden_units(model: nn.Module, owner: str = "the method") -> list[HiddenLayer]:
    """The hidden layers of a model that is a plain chain of Linear/Conv2d layers, in order (the
    last weight layer is the output and holds no hidden units); `ConfigError`, naming `owner`, if
    the model is not such a chain."""
    help_text = CHAIN_HELP.format(owner=owner)
    chain: list[tuple[str, nn.Module, list[nn.Module]]] = []  # weight layer, norms after it
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise ConfigError(f"{owner}: {name} is a grouped Conv2d "
                                  f"(groups={module.groups}); {help_text}")
            if not module.weight.is_contiguous():
                raise ConfigError(f"{owner}: the weight of {name} is not contiguous; call "
                                  f".contiguous() on it ({owner} reads it through views)")
            chain.append((name, module, []))
        elif isinstance(module, NORM_LAYERS):
            if chain:  # a norm on the model's input is not a unit's
                chain[-1][2].append(module)
        elif any(True for _ in module.parameters(recurse=False)):
            raise ConfigError(f"{owner}: {name or 'the model'} is a {type(module).__name__} with "
                              f"parameters, which {owner} cannot follow; {help_text}")
    if len(chain) < 2:
        raise ConfigError(f"{owner}: found {len(chain)} Linear/Conv2d layer(s); it needs at least "
                          f"a hidden layer and an output layer. {help_text}")
    layers = []
    for (name, layer, norms), (next_name, following, _) in zip(chain, chain[1:]):
        units = _units_out(layer)
        reads = _units_in(following)
        found = f"{name}: {_describe(layer)} then {next_name}: {_describe(following)}"
        if isinstance(layer, nn.Linear) and isinstance(following, nn.Conv2d):
            raise ConfigError(f"{owner}: found {found}; a Conv2d after a Linear layer is not "
                              f"supported. {help_text}")
        flatten = isinstance(layer, nn.Conv2d) and isinstance(following, nn.Linear)
        if (reads % units != 0) if flatten else (reads != units):
            need = f"a multiple of {units} inputs (flattened channels)" if flatten else \
                f"{units} inputs"
            raise ConfigError(f"{owner}: found {found}, whose {units} units do not feed {reads} "
                              f"inputs (expected {need}). {help_text}")
        for norm in norms:
            if isinstance(norm, nn.LayerNorm):
                if isinstance(layer, nn.Conv2d) or tuple(norm.normalized_shape) != (units,):
                    raise ConfigError(
                        f"{owner}: a LayerNorm{tuple(norm.normalized_shape)} follows {name}: "
                        f"{_describe(layer)}; only a LayerNorm over the {units} units of a Linear "
                        "layer has one entry per unit")
            elif norm.num_features != units:
                raise ConfigError(f"{owner}: a {type(norm).__name__}({norm.num_features}) "
                                  f"follows {name}: {_describe(layer)} with {units} units")
        layers.append(HiddenLayer(name, layer, following, norms, units,
                                  units_last=isinstance(following, nn.Linear) and not flatten))
    return layers


# --- the Linear chain that ends a model ---------------------------------------------------------
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Flatten, nn.Dropout)


def trailing_linear_chain(model: nn.Module) -> list[nn.Module]:
    """The longest run of leaf modules ending the model that is Linear/elementwise only
    (`ELEMENTWISE`), from its first Linear to the last leaf, which must be a Linear; [] if the
    model does not end so."""
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    chain: list[nn.Module] = []
    for module in reversed(leaves):
        if not isinstance(module, (nn.Linear, *ELEMENTWISE)):
            break
        chain.append(module)
    chain.reverse()
    while chain and not isinstance(chain[0], nn.Linear):
        chain.pop(0)
    if not chain or not isinstance(chain[-1], nn.Linear):
        return []
    return chain


__all__ = ["ELEMENTWISE", "HiddenLayer", "conv1d_class", "find_output_layer", "hidden_units",
           "is_conv1d", "is_language_model_head", "is_linear_like", "linear_features",
           "linear_layers", "output_layer", "trailing_linear_chain"]
