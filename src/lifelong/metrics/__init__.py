"""Continual-learning metrics."""

from .continual import average_accuracy, backward_transfer, forgetting, forward_transfer, summarize

__all__ = ["average_accuracy", "backward_transfer", "forgetting", "forward_transfer", "summarize"]
