"""Graph capture, channel coupling and pruning groups."""

from .trace import Traced, trace

__all__ = ["Traced", "trace"]
