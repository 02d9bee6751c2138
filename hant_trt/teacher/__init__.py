"""The teacher: a timm model with real weights, cut into replaceable slots."""

from .slot import Slot, merge

__all__ = ["Slot", "merge"]
