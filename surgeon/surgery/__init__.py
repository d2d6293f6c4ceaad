"""Apply a Plan: check it against the model, then slice tensors and fix the attributes modules
read in ``forward``.

This is the only place surgeon mutates a model, and it works on a deep copy unless the caller
passes ``inplace=True``. The result keeps the user's own classes, so its methods and
``state_dict`` names still work.
"""

from __future__ import annotations

from torch import nn

from ..planning.plan import Plan
from ..slicing.edits import Modules, slice_model
from ..slicing.fixers import FIXERS, NAMED_FIXERS, has_fixer, register_fixer
from .validate import check_plan

__all__ = ["apply", "apply_own", "FIXERS", "NAMED_FIXERS", "register_fixer", "has_fixer"]


def apply(model: nn.Module, plan: Plan, inplace: bool = False) -> nn.Module:
    """Physically remove what ``plan`` says from ``model`` (a deep copy unless ``inplace``).

    The plan is checked against the model first (see :mod:`surgeon.surgery.validate`): a plan
    made for another model, or one whose indices or attributes were edited, raises
    :class:`~surgeon.errors.PlanError` and leaves ``model`` as it was.

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> p = surgeon.plan(net, torch.randn(1, 4), target=0.5)
    >>> small = surgeon.apply(net, p)
    >>> small[0].out_features < 16 and net[0].out_features == 16
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a surgeon.Plan, got {type(plan).__name__}")
    source = Modules(model)
    found = check_plan(model, plan, source)  # before the model is touched or copied
    return slice_model(model, plan.slices, plan.attrs, plan.drops, plan.config, inplace, source, found)


def apply_own(model: nn.Module, plan: Plan, inplace: bool = False) -> nn.Module:
    """:func:`apply` for a plan that this very call's planner just built from ``model`` (the
    landing loop's): it skips the checks that guard against plans from anywhere else."""
    return slice_model(model, plan.slices, plan.attrs, plan.drops, plan.config, inplace)
