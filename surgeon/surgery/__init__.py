"""Apply a Plan: check it against the model, then slice tensors and fix the attributes modules
read in ``forward``.

This is the only place surgeon mutates a model, and it works on a deep copy unless the caller
passes ``inplace=True``. The result keeps the user's own classes, so its methods and
``state_dict`` names still work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import PlanError
from ..planning.plan import Plan
from ..slicing.edits import Modules, slice_model
from ..slicing.fixers import FIXERS, NAMED_FIXERS, has_fixer, register_fixer

__all__ = ["apply", "FIXERS", "NAMED_FIXERS", "register_fixer", "has_fixer"]


def apply(model: nn.Module, plan: Plan, inplace: bool = False) -> nn.Module:
    """Physically remove what ``plan`` says from ``model`` (a deep copy unless ``inplace``).

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
    found: dict[str, Any] = {}
    for name, shape in plan.shapes:
        t = found[name] = source.tensor(name, None)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else None
            raise PlanError(f"the plan was made for a model where '{name}' has shape {tuple(shape)}, "
                            f"this one has {got}; build a new plan for this model")
    return slice_model(model, plan.slices, plan.attrs, plan.drops, plan.config, inplace, source, found)
