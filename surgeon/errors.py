"""Exceptions raised by surgeon. Each message says what failed, where, and what to do."""

from __future__ import annotations

__all__ = ["SurgeonError", "TraceError", "SurgeryError", "PlanError", "SurgeonWarning", "OffTargetWarning"]


class SurgeonError(Exception):
    """Base class for every error surgeon raises on purpose."""


class TraceError(SurgeonError):
    """The model could not be captured as a graph by torch.fx nor by torch.export."""


class SurgeryError(SurgeonError):
    """Physical surgery produced a model that fails to run or changed its output shape."""


class PlanError(SurgeonError, ValueError):
    """A plan cannot be built (target unreachable) or does not fit the model it is applied to."""


class SurgeonWarning(UserWarning):
    """Base class of the warnings surgeon issues: the result works, but is not quite what was asked."""


class OffTargetWarning(SurgeonWarning):
    """The shrunk model's measured cost lands outside 0.01 of the target: the message gives the
    ratio reached, the groups whose unit steps blocked a closer landing, and what may help."""
