"""MIGU, magnitude-based gradient updating (Du, Cheng, Luo et al., "Unlocking Continual Learning
Abilities in Language Models", EMNLP 2024 Findings, arXiv:2406.17245).

For every linear layer (`nn.Linear`, and transformers' `Conv1D` of GPT-2, whose weight is stored
transposed), a forward hook adds up the L1 magnitude of each output dimension i over every token
and sample of the training forward passes since the last update: m_i = Σ_tokens |x·w_i + b_i|.
The bias is part of it, as in the authors' code, which hooks the layer's output. At each optimizer
update, per layer, τ = quantile(m, T) (T = 0.7) and the gradient of every output dimension with
m_i < τ is zeroed (its weight row and its bias entry): only the top 1 − T of the dimensions learn.
The paper's L1 normalisation of m does not change a per-layer quantile mask, so it is left out.

- Gradient accumulation: the masks act once per update (`transform_grads`, the optimizer step
  pre-hook), with the magnitudes of every micro-batch since the last update summed; they are
  reset after each update, and at the start of each task.
- Only training passes count: forward passes in eval mode, without gradients, or inside
  `lifelong.core.probe.probe()` (every pass a method makes to measure the model: A-GEM's and
  GEM's reference gradients inside the optimizer step, per-sample gradients, SPG's and DAS's
  importance, a teacher's targets) do not add to the magnitudes. Passes that are part of the
  training objective (DER's memory passes, DAS's contrastive views) count, and so does a pass of
  your own code in train mode with gradients: wrap a measuring pass in `probe(model)`.
- Layers added after attach (a LoRA method's adapters) are found when the trainable parameters
  change (`Method.parameters_changed`, which a composition calls; call it in your own loop).
- Data parallel: the magnitudes are summed over the replicas before the quantile, so every replica
  applies the same mask.
- LoRA (peft): the A matrix of an adapter (`lora_A`, in → r) is masked by the magnitudes of its own
  output x·A; the B matrix (`lora_B`, r → out) by those of the adapted layer's *total* output
  x·W + (α/r)·x·A·B, as in the authors' LoRA code. The frozen base weight gets no gradient.
  The layers are looked for again when the trainable parameters change (`parameters_changed`,
  which a composition calls), so adapters that `lora` / `inc-lora` add, in either composition
  order, count.
- The output layer (`head`, or the language-model head) is masked too by default, like every
  `nn.Linear` in the authors' code (T5's `lm_head` included); `mask_head=false` leaves it free,
  which a classification head with few units may need (with T = 0.7 and 4 units, one unit learns
  per step). A head tied to the input embeddings (GPT-2) masks the shared matrix's rows.
- First task: the paper describes MIGU as task-label free, with no exception for the first task,
  so every task is masked by default; the authors' scripts train the first task unmasked
  (`--is_first_task True`), which `mask_first_task=false` reproduces (it needs task boundaries).

The mask multiplies the gradient, so an optimizer with momentum or Adam moments still moves masked
rows by their past updates, as in the reference. A step skipped by a `GradScaler` does not reset
the magnitudes: they carry over to the next update.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor, nn

from ..core.config import Config, option
from ..core.method import TRANSFORM, Method
from ..core.probe import is_probing
from ..core.registry import register_method
from ..errors import ConfigError
from ..integrations.distributed import all_reduce_sum_
from ..models.introspection import find_output_layer, is_conv1d

ROWS, COLUMNS, VECTOR = 0, 1, 2  # how a parameter's output dimension is laid out


@dataclasses.dataclass
class MIGUConfig(Config):
    threshold: float = option(0.7, "T: per layer, output dimensions whose magnitude is below "
                              "the T-quantile get no gradient (only the top 1 − T learn, so "
                              "T < 1)", low=0, high=1, high_open=True)
    mask_first_task: bool = option(
        True, "mask the first task too (paper); false: train it unmasked as the authors' "
        "scripts do (needs task boundaries)")
    mask_head: bool = option(True, "mask the output layer (`head` / the LM head) too, as the "
                             "authors' code masks every nn.Linear; false leaves it unmasked")


@dataclasses.dataclass
class _Unit:
    """One magnitude vector: the module whose output it sums, and the parameters it masks."""

    module: nn.Module
    params: list[tuple[Tensor, int]]  # (parameter, ROWS | COLUMNS | VECTOR)
    size: int  # output dimensions


def _trainable(pairs: list[tuple[Tensor | None, int]]) -> list[tuple[Tensor, int]]:
    return [(p, kind) for p, kind in pairs if p is not None and p.requires_grad]


def find_units(model: nn.Module, skip: set[int]) -> list[_Unit]:
    """Every linear layer with trainable parameters; LoRA's B matrices go with their layer's total
    output. Modules whose id is in `skip` (the head) are left out."""
    lora_b: dict[int, nn.Module] = {}  # id(lora_B linear) -> the LoRA layer holding it
    units: list[_Unit] = []
    for module in model.modules():
        bs = getattr(module, "lora_B", None)
        if not isinstance(bs, nn.ModuleDict) or id(module) in skip:
            continue
        linears = [b for b in bs.values() if isinstance(b, nn.Linear)]
        lora_b.update({id(b): module for b in linears})
        params = _trainable([pair for b in linears
                             for pair in ((b.weight, ROWS), (b.bias, VECTOR))])
        if params:
            units.append(_Unit(module, params, linears[0].out_features))
    for module in model.modules():
        if id(module) in skip or id(module) in lora_b:
            continue
        if isinstance(module, nn.Linear):
            params = _trainable([(module.weight, ROWS), (module.bias, VECTOR)])
            size = module.out_features
        elif is_conv1d(module):  # weight [in, out]
            params = _trainable([(module.weight, COLUMNS), (module.bias, VECTOR)])
            size = module.weight.shape[1]
        else:
            continue
        if params:
            units.append(_Unit(module, params, size))
    return units


@register_method
class MIGU(Method):
    """Magnitude-based gradient updating; see the module docstring."""

    name = "migu"
    description = "magnitude-based gradient updating: only high-output rows of linear layers learn"
    Config = MIGUConfig
    gradient_stage = TRANSFORM
    state_attrs = ("magnitudes",)

    def __init__(self, config: MIGUConfig | dict | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        self._buffers: list[Tensor] = []  # magnitudes, one [layers, size] tensor per size

    def capabilities(self) -> dict[str, Any]:
        # the reference's first-task exception needs to know when the first task ends
        return {"needs_task_boundaries": not self.config.mask_first_task}

    # --- set-up --------------------------------------------------------------------------------
    def on_attach(self) -> None:
        self._unit_handles: list[Any] = []
        self._signature: tuple = ()
        self._check_pending = True
        self.build()

    def on_parameters_changed(self, before: list[Tensor]) -> None:
        self.build()  # adapters added (lora attached after migu, inc-lora's per task), or frozen

    def on_detach(self) -> None:
        for handle in self._unit_handles:
            handle.remove()
        self._unit_handles.clear()

    def build(self) -> None:
        """Find the layers and parameters to mask; (re)make the magnitude buffers and hooks when
        they changed."""
        found = None if self.config.mask_head else find_output_layer(self.model)
        head = None if found is None else found[1]
        skip = set() if head is None else {id(m) for m in head.modules()}
        units = find_units(self.model, skip)
        if not units:
            raise ConfigError("migu masks the gradients of linear layers (nn.Linear, "
                              "transformers Conv1D) and the model has none with trainable "
                              "parameters")
        signature = tuple((id(u.module), tuple(id(p) for p, _ in u.params)) for u in units)
        if signature == self._signature:
            return
        self._signature = signature
        self.on_detach()  # the hooks of the layers found before
        groups: dict[tuple[int, torch.device], list[_Unit]] = {}
        for unit in units:
            device = unit.params[0][0].device
            groups.setdefault((unit.size, device), []).append(unit)
        self._buffers, self._keep, self._masks = [], [], []
        self._targets: list[tuple[Tensor, Tensor]] = []  # (parameter, its mask view)
        dtype = units[0].params[0][0].dtype
        for (size, device), members in groups.items():
            buffer = torch.zeros(len(members), size, device=device)
            mask = torch.ones(len(members), size, device=device, dtype=dtype)
            self._buffers.append(buffer)
            self._keep.append(torch.ones(len(members), size, device=device, dtype=torch.bool))
            self._masks.append(mask)
            for row, unit in enumerate(members):
                self._unit_handles.append(
                    unit.module.register_forward_hook(self._hook(buffer[row])))
                views = {ROWS: mask[row].unsqueeze(1), COLUMNS: mask[row].unsqueeze(0),
                         VECTOR: mask[row]}
                self._targets += [(p, views[kind]) for p, kind in unit.params]

    def _hook(self, row: Tensor) -> Callable[[nn.Module, Any, Any], None]:
        def accumulate(module: nn.Module, args: Any, output: Any) -> None:
            if not (module.training and torch.is_grad_enabled()) or is_probing():
                return
            out = output if isinstance(output, Tensor) else output[0]
            # one fused pass over the output: Σ over tokens and samples of |output|, per column
            row.add_(out.detach().abs().reshape(-1, out.shape[-1]).sum(0, dtype=row.dtype))
        return accumulate

    # --- training ------------------------------------------------------------------------------
    def masking(self) -> bool:
        """Whether this update is masked (all tasks, or from the second with mask_first_task
        false)."""
        return self.config.mask_first_task or self.task >= 1

    def before_task(self, task: int) -> None:
        super().before_task(task)
        self.reset()

    def reset(self) -> None:
        """Forget the magnitudes counted so far."""
        torch._foreach_zero_(self._buffers)

    @torch.no_grad()
    def transform_grads(self) -> None:
        if not self.masking():
            self.reset()
            return
        all_reduce_sum_(self._buffers)
        if self._check_pending:
            self._check_counted()
        threshold = Fraction(repr(self.config.threshold))  # 0.6 is 3/5, not 0.6000000238
        for buffer, keep, mask in zip(self._buffers, self._keep, self._masks):
            # m ≥ quantile(m, T) (linear interpolation) ⟺ m ≥ the ⌈T(n − 1)⌉-th smallest value
            rank = math.ceil(threshold * (buffer.shape[1] - 1))
            tau = buffer.kthvalue(rank + 1, dim=1, keepdim=True).values
            torch.ge(buffer, tau, out=keep)
            mask.copy_(keep)
        grads, masks = [], []
        for p, view in self._targets:
            if p.grad is not None:
                grads.append(p.grad)
                masks.append(view)
        if grads:
            torch._foreach_mul_(grads, masks)
        self.reset()

    def _check_counted(self) -> None:
        """Once per attach: a masked update without any counted forward pass would be unmasked."""
        self._check_pending = False
        if not any(bool(buffer.any()) for buffer in self._buffers):
            warnings.warn("migu: an optimizer step came with no counted forward pass, so it is "
                          "not masked; magnitudes count only forward passes in training mode "
                          "with gradients enabled (call model.train())", stacklevel=3)

    # --- state ---------------------------------------------------------------------------------
    @property
    def magnitudes(self) -> list[Tensor]:
        """The magnitudes counted since the last update, one [layers, size] tensor per size."""
        return [buffer.clone() for buffer in self._buffers]

    @magnitudes.setter
    def magnitudes(self, values: list[Tensor]) -> None:
        if len(values) != len(self._buffers) or any(
                v.shape != b.shape for v, b in zip(values, self._buffers)):
            raise ConfigError("migu: the saved magnitudes do not fit this model's linear layers")
        if self._buffers:  # none before attach
            torch._foreach_copy_(self._buffers,
                                 [v.to(b.device) for v, b in zip(values, self._buffers)])
