"""Saying out loud that a landing missed its target.

The planner moves each group in whole steps (one unit, a head, a ``round_to`` block, at most down
to ``min_keep``), so some targets cannot be met: a narrow group whose units are costly (a shared
module called twice pays each unit twice), coarse rounding, or a floor. When the measured ratio is
more than :data:`OFF_TARGET` from the target, :func:`check_landing` issues an
:class:`~surgeon.errors.OffTargetWarning` naming the ratio reached, the groups whose steps are
too coarse (or that sit on their floor) and what may help, and records the same text in the
plan's ``extra`` under ``"off_target"``, where :meth:`~surgeon.planning.plan.Plan.report` shows it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from .errors import OffTargetWarning
from .planning.plan import Plan

__all__ = ["OFF_TARGET", "Blocker", "blockers", "off_target_message", "check_landing"]

OFF_TARGET = 0.01  # what the API promises: the measured ratio within 0.01 of the target
MOST = 3  # groups named in the message
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


@dataclass(frozen=True)
class Blocker:
    """One group's moves at the landing: ``step`` units at a time, each worth ``step_cost`` of
    the base cost (at full width), and whether it may still lose a step."""

    group: int
    names: tuple[str, ...]
    units: int
    kept: int
    step: int
    rounded: bool  # the step is coarser than the group's own (round_to made it)
    step_cost: float
    at_floor: bool


def _steps(a, plan: Plan, cfg) -> dict[int, tuple[int, int]]:
    """Per group id: (the step the planner moved it in, the units it keeps at least)."""
    from .latency import rounding
    from .planning import planner

    round_to = rounding.resolve(plan.round_to, getattr(cfg, "runtime_name", None))
    out = {}
    for g in a.groups:
        try:  # the planner's own rule for steps and floors
            step = int(planner._step(g, round_to))
            floor = int(planner._min_units(g.n_units, cfg.min_keep))
        except (AttributeError, TypeError):  # the planner changed: fall back to the group's own step
            step, floor = max(1, int(g.step)), 1
        out[g.id] = (step, max(floor, step))
    return out


def blockers(a, plan: Plan, cfg) -> list[Blocker]:
    """The prunable channel/head groups, coarsest step first."""
    cost = a.cost(plan.metric)
    base = float(cost.base) or 1.0
    per_unit = cost.mean_marginal()
    kept = {d.group: d.kept for d in plan.decisions}
    steps = _steps(a, plan, cfg)
    out = []
    for gi, g in enumerate(a.groups):
        if not g.prunable or g.layers:
            continue
        step, floor = steps[g.id]
        k = kept.get(g.id, g.n_units)
        names = tuple(sorted({m.name for m in g.tensors}))
        out.append(Blocker(g.id, names, g.n_units, k, step, step > max(1, int(g.step)),
                           float(per_unit[gi]) * step / base, k - step < floor))
    out.sort(key=lambda b: -b.step_cost)
    return out


def off_target_message(got: float, want: float, metric: str, found: list[Blocker], cfg) -> str:
    """What the landing reached, which groups stood in the way, and what to try."""
    over = got > want
    band = OFF_TARGET
    coarse = [b for b in found if b.step_cost > 2 * band]
    floored = [b for b in found if b.at_floor] if over else []
    named = (coarse or found)[:MOST] + [b for b in floored if b not in coarse][:MOST]
    parts = [f"landed at {got:.4f} of the {metric}, outside target {want:g} +/- {band:g}"]
    if named:
        parts.append("blocked by " + "; ".join(_describe(b, metric, over) for b in named[:2 * MOST]))
    else:
        parts.append("no group can move (every group is kept whole or on its floor)")
    helps = []
    if any(b.rounded for b in found):
        helps.append("round_to=None (steps of single units)")
    if over and floored:
        helps.append(f"a smaller min_keep (now {cfg.min_keep!r})")
    if over and not getattr(cfg, "layers", False):
        helps.append("layers=True (whole residual layers can go)")
    helps.append(f"a target the unit steps can reach (this one lands at {got:.3f})")
    return "; ".join(parts) + ". What may help: " + ", ".join(helps) + "."


def _describe(b: Blocker, metric: str, over: bool) -> str:
    head = ", ".join(b.names[:2]) + (" ..." if len(b.names) > 2 else "")
    unit = f"{b.step} units" if b.step > 1 else "one unit"
    state = ", on its min_keep floor" if over and b.at_floor else ""
    return (f"group {b.group} ({head}: keeps {b.kept} of {b.units}, moves {unit} at a time, "
            f"~{b.step_cost:.3f} of the {metric} per step{state})")


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside surgeon, counted from :func:`check_landing`."""
    level, frame = 2, sys._getframe(2)  # 1 is check_landing, 2 its caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    return level


def check_landing(a, plan: Plan, cfg, got: float, band: float = OFF_TARGET) -> Plan:
    """``plan``, with the off-target text in its ``extra`` and an :class:`OffTargetWarning`
    issued, when ``got`` (the measured ratio) is more than ``band`` from ``cfg.target``."""
    want = float(cfg.target)
    if want >= 1.0 or abs(got - want) <= band + 1e-12:
        return plan
    metric = plan.metric.split(":", 1)[0]
    msg = off_target_message(got, want, metric, blockers(a, plan, cfg), cfg)
    warnings.warn(msg, OffTargetWarning, stacklevel=_caller_level())  # at the user's call
    extra: tuple[tuple[str, Any], ...] = tuple(kv for kv in plan.extra if kv[0] != "off_target")
    return dataclasses.replace(plan, extra=extra + (("off_target", msg),))
