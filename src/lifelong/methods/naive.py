"""Plain fine-tuning: the lower bound every continual-learning method must beat."""

from __future__ import annotations

from ..core.method import Method
from ..core.registry import register_method


@register_method
class Naive(Method):
    """Train on each task in turn with no protection against forgetting."""

    name = "naive"
    description = "plain fine-tuning on each task in turn (the lower bound)"
