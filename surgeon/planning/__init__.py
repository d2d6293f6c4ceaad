"""Planning: scores and an analysis in, a frozen :class:`Plan` out (see :mod:`.planner`)."""

from .plan import AttrUpdate, Decision, Plan, Slice
from .planner import build_plan, solve

__all__ = ["Plan", "Slice", "AttrUpdate", "Decision", "solve", "build_plan"]
