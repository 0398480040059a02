"""Optimizers: methods whose whole update is the optimizer step (`UPGD`)."""

from .upgd import UPGD

__all__ = ["UPGD"]
