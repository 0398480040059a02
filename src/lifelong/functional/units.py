"""The units of a transformer and the parameter entries each unit owns (for DAS).

DAS (Ke et al., "Continual Pre-training of Language Models", ICLR 2023) soft-masks *units*:
attention heads and the neurons of the feed-forward network (FFN). Per transformer layer there
are three groups of units:

- `head`: one unit per attention head. It owns the rows of q, k and v that compute it (and their
  bias entries) and the columns of the attention output projection that read from it; its gate
  multiplies the head's slice of the output projection's input.
- `intermediate`: one unit per FFN hidden neuron. It owns its row (and bias entry) of the
  up-projection (both gate_proj and up_proj in a gated FFN) and its column of the
  down-projection; its gate multiplies the down-projection's input.
- `output`: one unit per FFN output feature. It owns its row and bias entry of the
  down-projection; its gate multiplies the down-projection's output.

The groups are found from the module structure, for three families:

========================  =================================  ==================================
family                    attention                          FFN
========================  =================================  ==================================
BERT-like (BERT, MiniLM,  `attention.self.{query,key,value}` `intermediate.dense`,
RoBERTa)                  + `attention.output.dense`         `output.dense`
Llama-like (Llama,        `{q,k,v,o}_proj`                   `{gate,up,down}_proj`
Mistral, Qwen2)
GPT-2                     fused `c_attn` + `c_proj` (Conv1D:  `c_fc`, `c_proj` (Conv1D)
                          weight [in, out], transposed)
========================  =================================  ==================================

Grouped-query attention (fewer k/v heads than query heads): a k/v head serves several query
heads, so its rows are scaled by the largest importance among them (`Slice.pool`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.introspection import is_conv1d

UnitKind = Literal["head", "intermediate", "output"]


@dataclasses.dataclass(frozen=True)
class Slice:
    """Entries of `param` along `axis` owned by units: entry j belongs to unit `owner[j]`.

    `pool` consecutive units share each entry (grouped-query k/v heads): `owner` indexes the
    pooled units, whose importance is the max over the pool."""

    param: nn.Parameter
    axis: int
    owner: Tensor
    pool: int = 1


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """The units of one kind in one layer, where their gate acts and what they own."""

    kind: UnitKind
    layer: int
    size: int  # number of units
    module: nn.Module  # the gate multiplies this module's input (`gate_input`) or output
    gate_input: bool
    width: int  # features per unit along the gated axis (head_dim for heads, else 1)
    slices: tuple[Slice, ...]
    name: str  # the gated module's path, for messages


def _is_linear(module: Any) -> bool:
    return isinstance(module, nn.Linear)


def _owner(count: int, width: int) -> Tensor:
    return torch.arange(count * width) // width


def _rows_of(linear: nn.Module, owner: Tensor, pool: int = 1) -> list[Slice]:
    """Output rows of a Linear (weight [out, in]) and its bias."""
    found = [Slice(linear.weight, 0, owner, pool)]
    if linear.bias is not None:
        found.append(Slice(linear.bias, 0, owner, pool))
    return found


def _config_value(module: nn.Module, config: Any, *names: str) -> int | None:
    for source in (module, config):
        for name in names:
            value = getattr(source, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _heads(module: nn.Module, config: Any, width_out: int, path: str) -> tuple[int, int]:
    """(number of heads, head dimension) of an attention module whose q has `width_out` rows."""
    heads = _config_value(module, config, "num_attention_heads", "num_heads", "n_head")
    if heads is None:
        raise ConfigError(f"cannot tell the number of attention heads of '{path}': neither the "
                          "module nor the model's config has num_attention_heads")
    head_dim = _config_value(module, config, "attention_head_size", "head_dim")
    head_dim = head_dim or width_out // heads
    if heads * head_dim != width_out:
        raise ConfigError(f"'{path}': {heads} heads of size {head_dim} do not match the "
                          f"{width_out} query features")
    return heads, head_dim


def _attention(path: str, module: nn.Module, config: Any, layer: int) -> UnitGroup | None:
    """The head group of an attention block of a known family, else None."""
    inner = getattr(module, "self", None)
    output = getattr(getattr(module, "output", None), "dense", None)
    if inner is not None and all(_is_linear(getattr(inner, n, None))
                                 for n in ("query", "key", "value")) and _is_linear(output):
        heads, dim = _heads(inner, config, inner.query.out_features, path)
        owner = _owner(heads, dim)
        slices = [*_rows_of(inner.query, owner), *_rows_of(inner.key, owner),
                  *_rows_of(inner.value, owner), Slice(output.weight, 1, owner)]
        return UnitGroup("head", layer, heads, output, True, dim, tuple(slices),
                         f"{path}.output.dense")
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    if all(_is_linear(getattr(module, n, None)) for n in names):
        heads, dim = _heads(module, config, module.q_proj.out_features, path)
        kv_heads = module.k_proj.out_features // dim
        if kv_heads * dim != module.k_proj.out_features or heads % kv_heads:
            raise ConfigError(f"'{path}': {module.k_proj.out_features} key features are not a "
                              f"whole number of {dim}-wide heads dividing {heads} query heads")
        owner, kv_owner = _owner(heads, dim), _owner(kv_heads, dim)
        pool = heads // kv_heads  # query head h reads k/v head h // pool (repeat_kv)
        slices = [*_rows_of(module.q_proj, owner), *_rows_of(module.k_proj, kv_owner, pool),
                  *_rows_of(module.v_proj, kv_owner, pool), Slice(module.o_proj.weight, 1, owner)]
        return UnitGroup("head", layer, heads, module.o_proj, True, dim, tuple(slices),
                         f"{path}.o_proj")
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    if is_conv1d(c_attn) and is_conv1d(c_proj) and not hasattr(module, "q_attn"):
        hidden = c_attn.weight.shape[1] // 3
        heads, dim = _heads(module, config, hidden, path)
        owner = _owner(heads, dim).repeat(3)  # columns: q | k | v, each [heads × head_dim]
        slices = [Slice(c_attn.weight, 1, owner), Slice(c_attn.bias, 0, owner),
                  Slice(c_proj.weight, 0, _owner(heads, dim))]
        return UnitGroup("head", layer, heads, c_proj, True, dim, tuple(slices),
                         f"{path}.c_proj")
    return None


def _ffn(path: str, module: nn.Module, layer: int) -> list[UnitGroup]:
    """The intermediate and output groups of an FFN of a known family, else []."""
    up = getattr(getattr(module, "intermediate", None), "dense", None)
    down = getattr(getattr(module, "output", None), "dense", None)
    if _is_linear(up) and _is_linear(down):  # BERT layer
        ups, down_path = [up], f"{path}.output.dense"
    elif all(_is_linear(getattr(module, n, None)) for n in ("gate_proj", "up_proj", "down_proj")):
        ups, down, down_path = [module.gate_proj, module.up_proj], module.down_proj, \
            f"{path}.down_proj"
    elif is_conv1d(getattr(module, "c_fc", None)) and is_conv1d(getattr(module, "c_proj", None)):
        fc, proj = module.c_fc, module.c_proj  # Conv1D: weight [in, out]
        inner, hidden = fc.weight.shape[1], proj.weight.shape[1]
        owner, out_owner = _owner(inner, 1), _owner(hidden, 1)
        middle = (Slice(fc.weight, 1, owner), Slice(fc.bias, 0, owner),
                  Slice(proj.weight, 0, owner))
        outer = (Slice(proj.weight, 1, out_owner), Slice(proj.bias, 0, out_owner))
        name = f"{path}.c_proj"
        return [UnitGroup("intermediate", layer, inner, proj, True, 1, middle, name),
                UnitGroup("output", layer, hidden, proj, False, 1, outer, name)]
    else:
        return []
    inner, hidden = down.in_features, down.out_features
    if any(u.out_features != inner for u in ups):
        raise ConfigError(f"'{path}': the FFN's up-projection has {ups[0].out_features} "
                          f"features but its down-projection reads {inner}")
    owner, out_owner = _owner(inner, 1), _owner(hidden, 1)
    middle = tuple(s for u in ups for s in _rows_of(u, owner)) + (Slice(down.weight, 1, owner),)
    outer = tuple(_rows_of(down, out_owner))
    return [UnitGroup("intermediate", layer, inner, down, True, 1, middle, down_path),
            UnitGroup("output", layer, hidden, down, False, 1, outer, down_path)]


def find_units(model: nn.Module) -> list[UnitGroup]:
    """Every layer's head, intermediate and output groups, in module order.

    Raises `ConfigError` for a model without recognisable attention and FFN blocks."""
    config = getattr(model, "config", None)
    attention: list[UnitGroup] = []
    ffn: list[UnitGroup] = []
    for path, module in model.named_modules():
        found = _attention(path, module, getattr(module, "config", config), len(attention))
        if found is not None:
            attention.append(found)
            continue
        ffn += _ffn(path, module, len(ffn) // 2)
    if not attention or not ffn:
        raise ConfigError(
            f"found no transformer units in {type(model).__name__} ({len(attention)} attention "
            f"blocks, {len(ffn) // 2} FFN blocks): das needs a transformer with BERT-like "
            "(attention.self.query/key/value, intermediate.dense, output.dense), Llama-like "
            "(q/k/v/o_proj, gate/up/down_proj) or GPT-2 (c_attn, c_proj, c_fc) blocks")
    groups = attention + ffn
    return sorted(groups, key=lambda g: (g.layer, ("head", "intermediate", "output").index(
        g.kind)))


# --- virtual gates -----------------------------------------------------------------------------
def _gate(x: Tensor, gate: Tensor, width: int) -> Tensor:
    gate = gate.to(x.dtype)
    if width == 1:
        return x * gate
    return (x.unflatten(-1, (-1, width)) * gate.unsqueeze(-1)).flatten(-2)


@contextlib.contextmanager
def gated(groups: Sequence[UnitGroup], gates: Sequence[Tensor]) -> Iterator[None]:
    """Within the block, every unit's output is multiplied by its entry of `gates` (one vector
    per group): all ones requiring grad give ∂L/∂gate, the units' importance; an importance
    vector gives DAS's importance-masked view. The hooks exist only inside the block."""
    handles = []

    def before(gate: Tensor, width: int) -> Any:
        def hook(module: nn.Module, args: tuple) -> tuple:
            if not args:
                raise RuntimeError("a gated module must be called with its input positionally")
            return (_gate(args[0], gate, width), *args[1:])
        return hook

    def after(gate: Tensor) -> Any:
        return lambda module, args, output: _gate(output, gate, 1)

    try:
        for group, gate in zip(groups, gates, strict=True):
            if group.gate_input:
                handles.append(group.module.register_forward_pre_hook(before(gate, group.width)))
            else:
                handles.append(group.module.register_forward_hook(after(gate)))
        yield
    finally:
        for handle in handles:
            handle.remove()


# --- gradient scales ---------------------------------------------------------------------------
def keep_factors(groups: Sequence[UnitGroup], importance: Sequence[Tensor],
                 params: Sequence[Tensor]) -> list[tuple[Tensor, list[Tensor]]]:
    """For each parameter of `params` that units own: (the parameter, its factors), each factor
    1 − importance of the entry's owner, shaped to broadcast along its axis. A weight owned along
    both axes (the FFN down-projection: output rows, intermediate columns) has two factors, whose
    product scales the gradient."""
    trainable = {id(p) for p in params}
    by_axis: dict[tuple[int, int], Tensor] = {}
    tensors: dict[int, Tensor] = {}
    for group, values in zip(groups, importance, strict=True):
        for piece in group.slices:
            if id(piece.param) not in trainable:
                continue
            pooled = values.view(-1, piece.pool).amax(1) if piece.pool > 1 else values
            keep = 1.0 - pooled[piece.owner.to(pooled.device)]
            if piece.param.dim() == 2:
                keep = keep.unsqueeze(1) if piece.axis == 0 else keep.unsqueeze(0)
            key = (id(piece.param), piece.axis)
            by_axis[key] = by_axis[key] * keep if key in by_axis else keep
            tensors[id(piece.param)] = piece.param
    result: dict[int, list[Tensor]] = {}
    for (pid, _), factor in by_axis.items():
        result.setdefault(pid, []).append(factor.to(tensors[pid].dtype))
    return [(tensors[pid], factors) for pid, factors in result.items()]


__all__ = ["Slice", "UnitGroup", "find_units", "gated", "keep_factors"]
