"""Exceptions raised by surgeon. Each message says what failed, where, and what to do."""

from __future__ import annotations

__all__ = ["SurgeonError", "TraceError", "SurgeryError", "PlanError"]


class SurgeonError(Exception):
    """Base class for every error surgeon raises on purpose."""


class TraceError(SurgeonError):
    """The model could not be captured as a graph by torch.fx nor by torch.export."""


class SurgeryError(SurgeonError):
    """Physical surgery produced a model that fails to run or changed its output shape."""


class PlanError(SurgeonError, ValueError):
    """A plan cannot be built (target unreachable) or does not fit the model it is applied to."""
