"""Choose which units to remove so the measured cost lands on the target.

Every removable unit gets a priority: its score divided by the cost it saves (both normalised),
so cheap-but-important units stay and expensive-but-unimportant ones go. Units are removed in
priority order, each group keeping at least ``min_keep`` units (or ``round_to`` widths), and the
number removed is found by bisection on the exact cost model, so the planned cost lands on the
target to within one unit.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .analysis import Analysis
from .errors import PlanError
from .graph.cost import CostModel
from .plan import AttrUpdate, Decision, Plan, Slice

__all__ = ["solve", "build_plan"]


def _step(group, round_to: int | None) -> int:
    if not round_to:
        return 1
    tensors = group.tensors
    per_unit = max((len(m.unit_of) for m in tensors), default=group.n_units) / group.n_units
    per_unit = max(1, int(round(per_unit)))
    return round_to // math.gcd(round_to, per_unit)


class _Leftover:
    """Tracks how many indices each distinct member dim of a group still has, so that no
    dimension is ever emptied (with cat/split, a unit may own all of one member's indices)."""

    def __init__(self, group):
        seen, rows = set(), []
        for m in group.members:
            if id(m.unit_of) not in seen:
                seen.add(id(m.unit_of))
                rows.append(np.bincount(m.unit_of, minlength=group.n_units))
        self.counts = np.stack(rows)
        self.left = self.counts.sum(axis=1)

    def take(self, u: int) -> bool:
        after = self.left - self.counts[:, u]
        if (after[self.counts[:, u] > 0] < 1).any():
            return False
        self.left = after
        return True


class _Order:
    """Removal order over every removable unit, with per-group caps and rounding."""

    def __init__(self, a: Analysis, scores: Sequence[np.ndarray], cost: CostModel,
                 round_to: int | None, min_keep: int):
        self.a, self.round_to = a, round_to
        groups = a.groups
        marg = cost.marginal()
        live = [gi for gi, g in enumerate(groups) if g.prunable]
        mean_cost = np.mean(np.concatenate([marg[gi] for gi in live])) if live else 1.0
        self.steps = {gi: _step(groups[gi], round_to) for gi in live}
        self.min_keep = {gi: max(min_keep, self.steps[gi]) for gi in live}
        entries = []
        for gi in live:
            g = groups[gi]
            s = np.asarray(scores[gi], dtype=np.float64)
            s = s / s.mean() if s.mean() > 0 else np.ones_like(s)
            c = marg[gi] / mean_cost if mean_cost > 0 else np.ones(g.n_units)
            with np.errstate(divide="ignore"):
                prio = np.where(c > 0, s / np.maximum(c, 1e-300), np.inf)
            for u in np.nonzero(~g.frozen_units & np.isfinite(prio))[0]:
                entries.append((prio[u], gi, int(u)))
        entries.sort(key=lambda e: (e[0], e[1], e[2]))
        removed = {gi: 0 for gi in live}
        cap = {gi: groups[gi].n_units - max(self.min_keep[gi], int(groups[gi].frozen_units.sum()))
               for gi in live}
        left = {gi: _Leftover(groups[gi]) for gi in live}
        self.order: list[tuple[int, int]] = []
        for _, gi, u in entries:
            if removed[gi] < cap[gi] and left[gi].take(u):
                removed[gi] += 1
                self.order.append((gi, u))
        # within-group removal order, for rounding
        self.per_group: dict[int, list[int]] = {gi: [] for gi in live}
        for gi, u in self.order:
            self.per_group[gi].append(u)

    def counts(self, k: int) -> dict[int, int]:
        """Units removed per group by the first ``k`` entries of the order."""
        counts: dict[int, int] = {}
        for gi, _ in self.order[:k]:
            counts[gi] = counts.get(gi, 0) + 1
        return counts

    def keep(self, k: int | dict[int, int]) -> list[np.ndarray]:
        counts = self.counts(k) if isinstance(k, int) else k
        keep = self.a.full_keep()
        for gi, n_removed in counts.items():
            g = self.a.groups[gi]
            step = self.steps[gi]
            if step > 1:
                kept = g.n_units - n_removed
                kept = max(self.min_keep[gi], int(round(kept / step)) * step)
                n_removed = min(len(self.per_group[gi]), max(0, g.n_units - kept))
            keep[gi][self.per_group[gi][:n_removed]] = False
        return keep


def solve(a: Analysis, scores: Sequence[np.ndarray], metric: str, target: float,
          round_to: int | None = None, min_keep: int = 1) -> list[np.ndarray]:
    """Keep-masks, one per group, whose cost is as close as possible to ``target`` x base."""
    cost = a.cost(metric)
    goal = target * cost.base
    order = _Order(a, scores, cost, round_to, min_keep)
    n = len(order.order)
    if target >= 1.0 or n == 0:
        return a.full_keep()
    floor = cost.total(order.keep(n))
    if goal < floor * (1 - 1e-9) - 0.5:
        raise PlanError(
            f"target {target} is below what the prunable part of {type(a.model).__name__} can reach: "
            f"the lowest reachable {metric} ratio is {floor / cost.base:.4f} "
            f"({len([g for g in a.groups if g.prunable])} prunable groups, each keeping at least "
            f"{max(min_keep, 1)} unit(s)). Ask for target >= {math.ceil(floor / cost.base * 1000) / 1000}."
        )
    lo, hi = 0, n  # smallest k with cost(k) <= goal
    while lo < hi:
        mid = (lo + hi) // 2
        if cost.total(order.keep(mid)) <= goal:
            hi = mid
        else:
            lo = mid + 1
    return order.keep(_refine(order, cost, goal, lo))


def _refine(order: _Order, cost: CostModel, goal: float, k: int, rounds: int = 8) -> dict[int, int]:
    """Land closer than one coarse unit. The unit that crossed the goal is skipped, its group
    blocked, and the rest of the order is bisected again from the last prefix above the goal;
    a few rounds, then whichever candidate is nearest the goal wins."""

    def total(counts):
        return cost.total(order.keep(counts))

    def plus(counts, seq):
        out = dict(counts)
        for gi, _ in seq:
            out[gi] = out.get(gi, 0) + 1
        return out

    base: dict[int, int] = {}
    seq = order.order
    best, best_err = order.counts(k), abs(total(order.counts(k)) - goal)
    for _ in range(rounds):
        lo, hi = 0, len(seq)
        while lo < hi:  # smallest j with cost(base + seq[:j]) <= goal
            mid = (lo + hi) // 2
            if total(plus(base, seq[:mid])) <= goal:
                hi = mid
            else:
                lo = mid + 1
        for cand in (plus(base, seq[:lo]), plus(base, seq[: max(lo - 1, 0)])):
            err = abs(total(cand) - goal)
            if err < best_err:
                best, best_err = cand, err
        if lo == 0 or lo > len(seq):
            break
        base = plus(base, seq[: lo - 1])
        blocked = seq[lo - 1][0]
        seq = [e for e in seq[lo - 1:] if e[0] != blocked]
    return best


def build_plan(a: Analysis, keep: list[np.ndarray], *, target: float, metric: str, criterion: str,
               round_to: int | None) -> Plan:
    """Turn keep-masks into the slices and attribute updates that realise them."""
    model = a.model
    slices, decisions, shapes = [], [], {}
    for gi, g in enumerate(a.groups):
        mask = keep[gi]
        decisions.append(Decision(g.id, g.kind.value, g.n_units, int(mask.sum()),
                                  tuple(sorted({m.name for m in g.tensors})), g.reason))
        if mask.all():
            continue
        for m in g.tensors:
            idx = np.nonzero(mask[m.unit_of])[0]
            if len(idx) == len(m.unit_of):
                continue
            if len(idx) == 0:
                raise PlanError(f"plan would empty dim {m.dim} of '{m.name}' (group {g.id})")
            slices.append(Slice(m.name, m.dim, len(m.unit_of), tuple(int(i) for i in idx)))
            shapes[m.name] = tuple(_tensor_shape(model, m.name))
    attrs = []
    seen = set()
    pending: dict[tuple[str, str], tuple] = {}
    for fix in a.coupling.attr_fixes:
        width = a.kept_width(fix.dim, keep) * fix.scale // fix.divisor
        mod = model.get_submodule(fix.module) if fix.module else model
        old = getattr(mod, fix.attr)
        if fix.index is None:
            new = width
        else:  # one element of a tuple attribute; several fixes may touch one tuple
            base = pending.get((fix.module, fix.attr), (old, tuple(old)))[1]
            new = tuple(width if i == fix.index else v for i, v in enumerate(base))
            pending[(fix.module, fix.attr)] = (old, new)
            continue
        if new != old and (fix.module, fix.attr) not in seen:
            seen.add((fix.module, fix.attr))
            attrs.append(AttrUpdate(fix.module, fix.attr, int(old), int(new)))
    for (module, attr), (old, new) in pending.items():
        if tuple(new) != tuple(old):
            attrs.append(AttrUpdate(module, attr, list(old), list(new)))
    flops, params = a.cost("flops"), a.cost("params")
    extra = (("flops_before", flops.base), ("flops_after", flops.total(keep)),
             ("params_before", params.base), ("params_after", params.total(keep)))
    c = a.cost(metric)
    return Plan(type(model).__name__, float(target), metric, criterion, round_to, c.base, c.total(keep),
                tuple(slices), tuple(attrs), tuple(decisions), tuple(sorted(shapes.items())), extra)


def _tensor_shape(model, qualname: str):
    mod_name, _, leaf = qualname.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    return getattr(mod, leaf).shape
