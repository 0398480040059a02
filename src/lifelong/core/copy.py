"""Frozen copies of a model (teachers, snapshots) without the hooks of the original."""

from __future__ import annotations

import copy

from torch import nn

_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode, with gradients off and no module hooks.

    The copy has the model's buffers too (BatchNorm running statistics, as they are now) and, in
    eval mode, normalises with them without updating them: a teacher or snapshot stays the model
    as it was evaluated, and its forward passes never touch the original's statistics.

    `copy.deepcopy` would also copy hooks that methods registered on the original (a forward hook
    that accumulates statistics, say), which must not fire for a teacher's forward pass.
    """
    clone = copy.deepcopy(model)
    for module in clone.modules():
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, None)
            if hooks:
                hooks.clear()
    clone.eval()
    clone.requires_grad_(False)
    return clone
