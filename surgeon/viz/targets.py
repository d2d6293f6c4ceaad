"""The page's target slider: plans for a range of targets from one analysis, and why groups stay whole.

The scores are computed once and the planner is called once per target (as
:class:`surgeon.api.Planner` is used by ``plan`` and ``shrink``), so seven targets cost about one
plan. :func:`surgeon.viz.explain.explain` says why a group stays whole, in plain words.

>>> TARGETS[0], TARGETS[-1]
(0.9, 0.3)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from ..analysis import Analysis
from ..errors import SurgeonError
from ..planning.plan import Plan
from .graphdata import _runs, kept_units

__all__ = ["TARGETS", "target_plans", "plan_record"]

TARGETS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
_MAX_RUNS = 64  # removed-unit runs sent per group and target

def plan_record(a: Analysis, plan: Plan) -> dict:
    """What the slider shows for ``plan``: figures, and per group the kept count and removed runs."""
    extra = dict(plan.extra)
    groups, whole = {}, []
    for g in a.groups:
        if not g.prunable:
            continue
        kept = kept_units(g, plan)
        if kept is None or kept.all():
            whole.append(g.id)
            continue
        runs = _runs(np.nonzero(~kept)[0])
        groups[str(g.id)] = [int(kept.sum()), runs[:_MAX_RUNS], len(runs)]
    return {"target": float(plan.target), "metric": str(plan.metric), "ratio": float(f"{plan.ratio:.4g}"),
            "flops": [float(extra.get("flops_before", 0)), float(extra.get("flops_after", 0))],
            "params": [float(extra.get("params_before", 0)), float(extra.get("params_after", 0))],
            "round_to": plan.round_to if isinstance(plan.round_to, int) else None,
            "groups": groups, "whole": whole, "error": None}


def target_plans(model: nn.Module, example_input: Any, analysis: Analysis, targets=TARGETS,
                 criterion: str = "l2", metric: str = "flops") -> list[dict]:
    """One :func:`plan_record` per target (or ``{"target", "error"}`` where no plan reaches it),
    planned from ``analysis`` with the scores computed once."""
    from .. import _walks
    from ..analysis import capture_input
    from ..api import Planner
    from ..options import ShrinkConfig

    example_input = capture_input(model, example_input)
    with _walks.shared():
        try:  # scores once; a page whose planning fails still draws the groups, and says why
            cfg = ShrinkConfig.of(target=float(targets[0]), metric=metric, criterion=criterion)
            planner = Planner.prepare(model, example_input, cfg, analysis)
        except (SurgeonError, ValueError, RuntimeError) as e:
            return [{"target": float(t), "error": f"{type(e).__name__}: {e}"} for t in targets]
        return [_one(planner, float(t)) for t in targets]


def _one(planner, target: float) -> dict:
    try:
        return plan_record(planner.analysis, planner(target))
    except (SurgeonError, ValueError, RuntimeError) as e:  # e.g. a target the prunable part cannot reach
        return {"target": target, "error": f"{type(e).__name__}: {e}"}
