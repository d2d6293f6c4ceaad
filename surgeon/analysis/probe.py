"""Find out whether widths that an exported graph writes as numbers really are fixed.

``torch.export`` records every reshape with concrete sizes: ``x.reshape(b, kv_heads * n_rep, t, d)``
computed from ``x.shape`` and ``x.reshape(b, 4, t, d)`` written by hand look the same. The
reshape rule therefore freezes such widths (it must never guess) and notes them as *probes*.

A probe asks the model itself: cut one unit from every group that only a probe keeps frozen,
capture the cut copy again, and read the same reshape. Where the number dropped to exactly the
new width, the code computes it from the tensor, so the width follows pruning and the freeze is
lifted; where the number stayed (hard-coded), the capture failed, or the graph changed shape,
the freeze stays. One extra capture answers every probe of the model at once.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from torch import nn

from .graph.groups import build_groups
from .graph.ir import AttrFix, Coupling, DimKey
from .graph.rules.shape import size_spec

log = logging.getLogger(__name__)

__all__ = ["resolve_probes"]


def resolve_probes(model: nn.Module, example_input: Any, traced, c: Coupling) -> list[DimKey]:
    """Lift the freezes of probed dims whose width follows pruning; returns the lifted keys."""
    from .analysis import Analysis
    from .graph.trace import trace
    from .planner import build_plan
    from .surgery import apply

    held = {k: c.frozen.pop(k) for k in c.probes if k in c.frozen}
    if not held:
        return []
    groups = build_groups(c)
    keep, tested, used = [], [], set()
    for g in groups:
        mask = np.ones(g.n_units, dtype=bool)
        probed = [m for m in g.members if m.key in held]
        free = np.nonzero(~g.frozen_units)[0]
        if g.reason is None and probed and len(free) >= 2:
            # cut each group to widths no other group has, so that an attribute holding a number
            # two groups share shows up as claimed by two different widths
            for r in range(1, len(free)):
                trial = mask.copy()
                trial[free[-r:]] = False
                widths = {int(trial[m.unit_of].sum()) for m in probed}
                if not widths & used or r == len(free) - 1:
                    break
            mask, used = trial, used | widths
            tested.append(g)
        keep.append(mask)
    passed: set[DimKey] = set()
    if tested:
        a = Analysis(traced, c, groups)
        attrs = _candidate_attrs(c, held, a, keep)
        try:
            plan = build_plan(a, keep, target=0.0, metric="flops", criterion="probe", round_to=None)
            cut = apply(model, plan)
            for (module, attr), width in attrs.items():
                setattr(cut.get_submodule(module), attr, width)
            cut = trace(cut, example_input)
        except Exception as exc:  # noqa: BLE001 - any failure keeps every probed width frozen
            log.info("surgeon: width probe failed (%s: %s); reshape widths stay frozen",
                     type(exc).__name__, exc)
            cut = None
        if cut is not None and cut.mode == traced.mode:
            nodes = {n.name: n for n in cut.graph.nodes}
            old_nodes = {n.name: n for n in traced.graph.nodes}
            probed: dict[str, set[int]] = {}
            for checks in c.probes.values():
                for name, pos, _, _ in checks:
                    probed.setdefault(name, set()).add(pos)
            for g in tested:
                for m in g.members:
                    checks = c.probes.get(m.key)
                    if checks and m.key in held and all(
                            _follows(old_nodes.get(name), nodes.get(name), pos, probed[name],
                                     a.kept_width(m.key, keep))
                            for name, pos, _, _ in checks):
                        passed.add(m.key)
        for key in passed:  # the attributes that hold these widths follow them from now on
            for _, _, _, candidates in c.probes[key]:
                for module, attr in candidates:
                    if (module, attr) in attrs:
                        fix = AttrFix(module, attr, key)
                        if fix not in c.attr_fixes:
                            c.attr_fixes.append(fix)
    for k, reason in held.items():
        if k not in passed:
            c.frozen[k] = reason
    return sorted(passed)


def _candidate_attrs(c: Coupling, held, a, keep) -> dict[tuple[str, str], int]:
    """Attributes to set in the cut copy: each that holds the number a probed reshape or split
    wrote, set to the width its dim has after the cut. An attribute two different widths claim
    cannot follow both, so it is left alone (and its probes fail unless the code ignores it)."""
    claims: dict[tuple[str, str], set[int]] = {}
    for key, checks in c.probes.items():
        if key not in held:
            continue
        width = a.kept_width(key, keep)
        for _, _, _, candidates in checks:
            for ma in candidates:
                claims.setdefault(tuple(ma), set()).add(width)
    return {ma: next(iter(ws)) for ma, ws in claims.items() if len(ws) == 1}


def _follows(old, new, pos: int, probed: set[int], width: int) -> bool:
    """Does reshape ``new`` (the cut model's) write ``width`` at ``pos``, with every size that
    no probe is about unchanged?"""
    if old is None or new is None or old.target != new.target:
        return False
    spec_old, spec_new = _spec(old), _spec(new)
    if spec_old is None or spec_new is None or len(spec_old) != len(spec_new) or pos >= len(spec_new):
        return False
    same_elsewhere = all(a == b for i, (a, b) in enumerate(zip(spec_old, spec_new)) if i not in probed)
    return same_elsewhere and spec_new[pos] == width


def _spec(node) -> list | None:
    rest = size_spec(node)
    return rest if all(isinstance(v, int) for v in rest) else None
