"""Continual-learning metrics."""

from .continual import (
                        average_accuracy,
                        backward_transfer,
                        forgetting,
                        forward_transfer,
                        seed_stats,
                        summarize,
)

__all__ = ["average_accuracy", "backward_transfer", "forgetting", "forward_transfer", "seed_stats",
           "summarize"]
