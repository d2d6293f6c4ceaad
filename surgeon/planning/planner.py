"""Choose which units to remove so the measured cost lands on the target.

Every removable unit gets a priority: its score (normalised by its group's mean) divided by
``cost ** cost_weight``, the cost it saves. The default ``cost_weight=0`` ranks by score alone,
so every group thins where its own units score low. Ranking by score per FLOP saved
(``cost_weight=1``) crushed the widest, most expensive dims first -- a residual CNN's first
stage from 16 to 2 channels, a Llama's hidden size before any MLP unit -- and measured worse
both in accuracy before fine-tuning (Fashion-MNIST ResCNN at half the FLOPs, l2: 0.10 against
0.36; with compensate=True 0.76 against 0.83) and in onnxruntime latency. Units are removed in
priority order, each group keeping at least ``min_keep`` of its units (a fraction, 10% by
default, or a count, rounded up to whole ``round_to`` steps; never fewer than one unit or one
step), and the number removed is found by bisection on the exact cost model, so the planned
cost lands on the target to within one unit.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import _walks
from ..analysis import Analysis
from ..errors import PlanError
from ..graph.cost import CostModel
from ..analysis.realise import attr_updates, slices_for
from .plan import AttrUpdate, Decision, Plan, Slice, fingerprint_of
from .._gc import own_loop


__all__ = ["solve", "build_plan"]


def _step(group, round_to) -> int:
    if group.layers:
        return 1  # whole layers are never rounded
    per_unit = None
    if hasattr(round_to, "for_group"):  # round_to="auto": a step per group (surgeon.latency.rounding)
        per_unit = _per_unit(group)
        round_to = round_to.for_group(group.n_units * per_unit)  # the group's width in channels
    if not round_to:
        return group.step
    return math.lcm(group.step, _round_step(group, round_to, per_unit))


def _per_unit(group) -> int:
    per_unit = max((len(m.unit_of) for m in group.tensors), default=group.n_units) / group.n_units
    return max(1, int(round(per_unit)))


def _round_step(group, round_to: int, per_unit: int | None = None) -> int:
    return round_to // math.gcd(round_to, _per_unit(group) if per_unit is None else per_unit)


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
        self.left = self.counts.sum(axis=1).tolist()
        # per unit, (dim, count) of the dims it holds indices of: take() is a few integer steps
        self.holds = [[(r, c) for r, c in enumerate(col) if c] for col in self.counts.T.tolist()]

    @staticmethod
    def needed(group) -> bool:
        """Only groups where some member does not hold every unit can lose a member early."""
        arrays = {id(m.unit_of): m.unit_of for m in group.members}  # members of a class share one
        return any(u.size != group.n_units or np.bincount(u, minlength=group.n_units).min() == 0
                   for u in arrays.values())

    def take(self, u: int) -> bool:
        holds, left = self.holds[u], self.left
        if any(left[r] - c < 1 for r, c in holds):
            return False
        for r, c in holds:
            left[r] -= c
        return True


class _Order:
    """Removal order over every removable unit, with per-group caps and rounding.

    Removal is described by ``n``: units removed per group. Within a group units go in
    priority order, so a group's kept set is determined by its count alone."""

    def __init__(self, a: Analysis, scores: Sequence[np.ndarray], cost: CostModel,
                 round_to: int | None, min_keep: int | float, cost_weight: float = 0.0,
                 bundles: Sequence[Sequence[int]] = (), per: CostModel | None = None,
                 bundle_units: Sequence[Sequence[int]] = (), group_weight: Sequence[float] | None = None):
        self.a = a
        groups = a.groups
        self.n_groups = len(groups)
        marg = cost.marginal()
        live = [gi for gi, g in enumerate(groups) if g.prunable]
        mean_cost = np.mean(np.concatenate([marg[gi] for gi in live])) if live else 1.0
        self.steps = np.ones(len(groups), dtype=np.int64)
        self.floor = np.zeros(len(groups), dtype=np.int64)
        cap = np.zeros(len(groups), dtype=np.int64)
        frozen = np.concatenate([groups[gi].frozen_units for gi in live]) if live else np.zeros(0, bool)
        sizes = np.array([groups[gi].n_units for gi in live], dtype=np.int64)
        if live:  # Python ints per group, written into the arrays at once
            steps, floors = [], []
            for gi in live:
                g = groups[gi]
                step = _step(g, round_to)  # the floor on a whole block too, where the group has one
                least = max(_min_units(g.n_units, min_keep), g.min_units)
                steps.append(step)
                floors.append(min(max(-(-least // step) * step, step), g.n_units))
            self.steps[live] = steps
            self.floor[live] = floors
            ends = np.r_[0, np.cumsum(frozen, dtype=np.int64)][np.cumsum(sizes)]
            n_frozen = np.diff(np.r_[0, ends])  # frozen units per group
            cap[live] = sizes - np.maximum(self.floor[live], n_frozen)
        prio = _priorities(groups, live, sizes, scores, marg, mean_cost, cost_weight, per)
        if group_weight is not None and live:  # a searched allocation: group g's units rank w[g] times higher
            prio = prio * np.repeat(np.asarray(group_weight, dtype=np.float64)[live], sizes)
        at = np.flatnonzero(~frozen & np.isfinite(prio))
        first = np.cumsum(sizes) - sizes
        group_of = np.repeat(np.arange(len(live)), sizes)[at]
        # entries are in (group, unit) order, so a stable sort by priority breaks ties by group, unit
        gs = np.asarray(live, dtype=np.int64)[group_of]
        us = at - first[group_of]
        idx = _stable_argsort(prio[at])
        gs, us, prio = gs[idx], us[idx], prio[at][idx]
        # rank of each entry within its group; drop entries beyond the cap
        rank = _rank_in_group(gs)
        ok = rank < cap[gs]
        gs, us, prio = gs[ok], us[ok], prio[ok]
        guarded = [gi for gi in live if not groups[gi].layers and _Leftover.needed(groups[gi])]
        if guarded:  # drop units whose removal would empty a member, in order
            left = {gi: _Leftover(groups[gi]) for gi in guarded}
            keep_entry = np.ones(len(gs), dtype=bool)
            for e in np.flatnonzero(np.isin(gs, guarded)).tolist():
                keep_entry[e] = left[int(gs[e])].take(int(us[e]))
            gs, us, prio = gs[keep_entry], us[keep_entry], prio[keep_entry]
            rank = _rank_in_group(gs)
            ok = rank < cap[gs]
            gs, us, prio = gs[ok], us[ok], prio[ok]
        units = bundle_units or [(1,) * len(b) for b in bundles]  # units each group loses per step
        self.bundles = [np.asarray(b, dtype=np.int64) for b in bundles if len(b) > 1]
        self.per_step = [np.asarray(m, dtype=np.int64) for b, m in zip(bundles, units) if len(b) > 1]
        self.joint = any((m > 1).any() for m in self.per_step)
        if self.joint:
            gs, us = _bundled_joint(gs, us, prio, self.bundles, self.per_step)
        elif self.bundles:
            gs, us = _bundled(gs, us, prio, self.bundles)
        self.gs = gs  # group of each entry, in removal order
        self.offsets = np.cumsum([0] + [g.n_units for g in groups])
        # position of each unit in its group's removal order (inf: never removed)
        self.flat_rank = np.full(self.offsets[-1], np.iinfo(np.int64).max, dtype=np.int64)
        self.flat_rank[self.offsets[gs] + us] = _rank_in_group(gs)
        self.flat_group = np.repeat(np.arange(len(groups)), [g.n_units for g in groups])
        self.n_units = np.array([g.n_units for g in groups], dtype=np.int64)
        self.removable = np.bincount(gs, minlength=len(groups))

    def __len__(self) -> int:
        return len(self.gs)

    def counts(self, k: int) -> np.ndarray:
        return np.bincount(self.gs[:k], minlength=self.n_groups)

    def flat_keep(self, n: np.ndarray) -> np.ndarray:
        """Keep-mask over all units (concatenated by group) when ``n[g]`` units go from group g."""
        return self.flat_rank >= self._removed(n)[self.flat_group]

    def kept_counts(self, n: np.ndarray) -> np.ndarray:
        """Units each group keeps under :meth:`flat_keep` (its first ``removed`` units in removal
        order go, and a group's removal ranks run 0, 1, ...): without the mask over every unit."""
        return self.n_units - self._removed(n)

    def _removed(self, n: np.ndarray) -> np.ndarray:
        """Units removed per group: ``n`` rounded, capped and bundled."""
        kept = self.n_units - n
        step = self.steps
        rounded = np.maximum(self.floor, np.round(kept / step).astype(np.int64) * step)
        kept = np.where((step > 1) & (n > 0), rounded, kept)
        n = np.clip(self.n_units - kept, 0, self.removable)
        if self.joint:  # a joint bundle's groups lose units in proportion, whole steps at a time
            for b, m in zip(self.bundles, self.per_step):
                n[b] = (n[b] // m).min() * m
        else:
            for b in self.bundles:  # bundled groups lose the same number of units
                n[b] = n[b].min()
        return n

    def keep(self, n: np.ndarray) -> list[np.ndarray]:
        flat = self.flat_keep(n)  # one slice per group (np.split is slower)
        return [flat[a:b] for a, b in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist())]


def _priorities(groups, live: list[int], sizes: np.ndarray, scores, marg, mean_cost: float, cost_weight: float,
                per: CostModel | None) -> np.ndarray:
    """The priority of every unit of the live groups, concatenated in group order (lowest goes
    first): its normalised score over the cost it saves to the power ``cost_weight``."""
    s = _normalised([scores[gi] for gi in live], sizes)
    if mean_cost > 0:
        c = np.concatenate([marg[gi] for gi in live]) / mean_cost if live else np.zeros(0)
    else:
        c = np.ones(int(sizes.sum()))
    if per is not None and live:  # cost per unit of ``per`` saved; a unit that saves none of it is neutral
        per_marg = per.marginal()
        d = np.concatenate([per_marg[gi] for gi in live])
        mean_d = d[d > 0].mean() if (d > 0).any() else 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(d > 0, c / (d / mean_d), 1.0)
    c = np.where(c > 0, np.abs(c) ** cost_weight, 0.0)  # a unit that saves nothing stays
    # a layer is not cheap to lose because it is big: rank by score
    c[np.repeat([groups[gi].kind.value == "layer" for gi in live], sizes).astype(bool)] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        prio = np.where(c > 0, s / np.maximum(c, 1e-300), np.inf)
    return prio


def _bundled(gs: np.ndarray, us: np.ndarray, prio: np.ndarray, bundles) -> tuple[np.ndarray, np.ndarray]:
    """Re-order so that the groups of a bundle lose units together: the r-th removal of a bundle
    takes the r-th unit of each of its groups, at the mean priority of those units."""
    bundled = np.zeros(int(gs.max(initial=-1)) + 1, dtype=bool)
    for b in bundles:
        bundled[b[b < len(bundled)]] = True
    free = ~bundled[gs] if len(gs) else np.zeros(0, dtype=bool)
    pr_l, g_l, u_l, t_l = [prio[free]], [gs[free]], [us[free]], [np.zeros(free.sum())]
    for b in bundles:
        per = [(us[gs == g], prio[gs == g]) for g in b]
        m = min(len(u) for u, _ in per)
        if m == 0:
            continue
        mean = np.mean([p[:m] for _, p in per], axis=0)
        for j, (g, (u, _)) in enumerate(zip(b, per)):
            pr_l.append(mean)
            g_l.append(np.full(m, g))
            u_l.append(u[:m])
            t_l.append(np.full(m, j + 1.0))
    pr, g, u, t = (np.concatenate(x) for x in (pr_l, g_l, u_l, t_l))
    idx = np.lexsort((t, pr))
    return g[idx].astype(np.int64), u[idx].astype(np.int64)


def _bundled_joint(gs: np.ndarray, us: np.ndarray, prio: np.ndarray, bundles,
                   per_step) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_bundled` for bundles whose groups lose ``per_step[g]`` units per step: the r-th
    removal of a bundle takes units ``r*m .. (r+1)*m`` of each group's order (one head of each
    layer, head_dim residual channels), at the mean priority of those units."""
    bundled = np.zeros(int(gs.max(initial=-1)) + 1, dtype=bool)
    for b in bundles:
        bundled[b[b < len(bundled)]] = True
    free = ~bundled[gs] if len(gs) else np.zeros(0, dtype=bool)
    pr_l, g_l, u_l, t_l = [prio[free]], [gs[free]], [us[free]], [np.zeros(free.sum())]
    for b, ms in zip(bundles, per_step):
        per = [(us[gs == g], prio[gs == g]) for g in b]
        n = min(len(u) // m for (u, _), m in zip(per, ms.tolist()))
        if n == 0:
            continue
        mean = np.mean([p[: n * m].reshape(n, m).mean(axis=1) for (_, p), m in zip(per, ms.tolist())], axis=0)
        for j, (g, (u, _), m) in enumerate(zip(b, per, ms.tolist())):
            pr_l.append(np.repeat(mean, m))
            g_l.append(np.full(n * m, g))
            u_l.append(u[: n * m])
            t_l.append(np.full(n * m, j + 1.0))
    pr, g, u, t = (np.concatenate(x) for x in (pr_l, g_l, u_l, t_l))
    idx = np.lexsort((t, pr))
    return g[idx].astype(np.int64), u[idx].astype(np.int64)


def _min_units(n_units: int, min_keep: int | float) -> int:
    """Units a group keeps at least: a fraction of its units (float) or a count (int), >= 1."""
    if isinstance(min_keep, float):
        return max(1, math.ceil(min_keep * n_units - 1e-9))
    return max(1, min(int(min_keep), n_units))


def _describe_min(min_keep: int | float) -> str:
    if isinstance(min_keep, float):
        return f"{min_keep:.0%} of its units, at least one"
    return f"{max(min_keep, 1)} unit(s)"


def _normalised(scores: Sequence, sizes: np.ndarray) -> np.ndarray:
    """Each group's scores divided by their mean (all ones where that is not positive), concatenated."""
    scores = [np.asarray(s, dtype=np.float64) for s in scores]
    out = np.empty(int(sizes.sum()))
    first = np.cumsum(sizes) - sizes
    by_size: dict[int, list[int]] = {}  # groups with one score per unit, by size
    for k, (s, n) in enumerate(zip(scores, sizes.tolist())):
        if s.shape == (n,):
            by_size.setdefault(n, []).append(k)
        else:  # a score to broadcast
            s = s / s.mean() if s.mean() > 0 else np.ones_like(s)
            out[first[k]: first[k] + n] = np.broadcast_to(s, (n,))
    for n, ks in by_size.items():  # groups of one size at once, each mean summed as alone
        rows = np.stack([scores[k] for k in ks])
        mean = rows.mean(axis=1)[:, None]
        out[first[ks][:, None] + np.arange(n)] = np.divide(rows, mean, out=np.ones_like(rows), where=mean > 0)
    return out


def _stable_argsort(x: np.ndarray) -> np.ndarray:
    """``np.argsort(x, kind="stable")``: a faster unstable sort, then each run of equal values
    (NaNs included) put back in index order."""
    idx = np.argsort(x)
    v = x[idx]
    tie = (v[1:] == v[:-1]) | (np.isnan(v[1:]) & np.isnan(v[:-1]))
    if tie.any():
        run = np.cumsum(np.r_[True, ~tie])  # the run of equal values of each sorted position
        tied = np.flatnonzero(np.r_[tie, False] | np.r_[False, tie])
        idx[tied] = idx[tied][np.lexsort((idx[tied], run[tied]))]
    return idx


def _rank_in_group(gs: np.ndarray) -> np.ndarray:
    """For a sequence of group ids, how many earlier entries share each entry's group."""
    # a stable sort of small unsigned keys is a radix sort
    order = np.argsort(gs.astype(np.uint16) if gs.size and gs.max() < 2 ** 16 else gs, kind="stable")
    sorted_g = gs[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_g))[0] + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(gs)]))
    rank = np.empty(len(gs), dtype=np.int64)
    rank[order] = np.arange(len(gs)) - first
    return rank


@own_loop
def solve(a: Analysis, scores: Sequence[np.ndarray], metric: str, target: float,
          round_to: int | None = None, min_keep: int | float = 0.1, rank_by: str | None = None,
          cost_weight: float = 0.0, bundles: Sequence[Sequence[int]] = (),
          per_target: bool = False, group_weight: Sequence[float] | None = None) -> list[np.ndarray]:
    """Keep-masks, one per group, whose cost is as close as possible to ``target`` x base.

    Units are ranked by score / cost_per_unit ** ``cost_weight``, the cost being ``rank_by``'s
    (``metric`` unless given: a FLOPs target ranked by measured latency removes what is slow,
    not only what is counted); ``cost_weight=0`` (the default) ranks by score alone. With
    ``per_target`` the cost is ``rank_by``'s per unit of ``metric``'s (milliseconds per FLOP,
    each relative to its mean): at a fixed FLOPs count, what runs slowest for its FLOPs goes first.
    Groups of one bundle (repeated layers that must keep one width) lose units in step.
    ``group_weight`` (one positive factor per group) multiplies the priorities of a group's units,
    so that group keeps more (> 1) or less (< 1): how :mod:`surgeon.search` imposes an allocation."""
    cost = a.cost(metric)
    goal = target * cost.base
    order = _Order(a, scores, a.cost(rank_by) if rank_by else cost, round_to, min_keep, cost_weight,
                   bundles or a.bundles, cost if per_target and rank_by else None,
                   () if bundles else a.bundle_units, group_weight)
    n = len(order)
    if target >= 1.0:
        return a.full_keep()
    if cost.base <= 0:
        raise PlanError(f"{type(a.model).__name__} has no {metric} to remove on this input (the traced "
                        f"graph counts 0): the lowest reachable {metric} ratio is 1.0000. "
                        f"Ask for target >= 1.0, or pass an input that exercises the model.")

    totals: dict[bytes, float] = {}  # the search asks for some removal counts more than once

    by_counts = isinstance(cost, CostModel) and cost.by_counts  # no mask over every unit needed

    def total(counts: np.ndarray) -> float:
        key = np.asarray(counts, dtype=np.int64).tobytes()
        if key not in totals:
            totals[key] = (cost.total_kept(order.kept_counts(counts)) if by_counts
                           else cost.total_flat(order.flat_keep(counts)))
        return totals[key]

    floor = total(order.counts(n))  # everything removable removed (nothing, if n == 0)
    if goal < floor * (1 - 1e-9) - 0.5:
        raise PlanError(
            f"target {target} is below what the prunable part of {type(a.model).__name__} can reach: "
            f"the lowest reachable {metric} ratio is {floor / cost.base:.4f} "
            f"({len([g for g in a.groups if g.prunable])} prunable groups, each keeping at least "
            f"{_describe_min(min_keep)}). Ask for target >= {min(1.0, math.ceil(floor / cost.base * 1000 - 1e-6) / 1000)}."
            + _kept_whole(a)
        )
    if n == 0:
        return a.full_keep()
    counts = _refine(order.gs, order.n_groups, total, goal)
    if abs(total(counts) - goal) > 1e-3 * cost.base:  # coarse landing: small models
        counts = _polish(counts, order.removable, order.steps, total, goal)
    return order.keep(counts)


def _polish(n: np.ndarray, removable: np.ndarray, steps: np.ndarray, total, goal: float,
            rounds: int = 32, pairs_up_to: int = 24) -> np.ndarray:
    """Nudge the removal counts, one step of one group (or, with few groups, one step of one
    group against one of another), while that lands nearer the goal. Removal orders are coarse
    on small models, where prefixes of one order cannot reach every mix of widths."""
    live = np.nonzero(removable > 0)[0]
    best, err = n.copy(), abs(total(n) - goal)

    def ok(m):
        return bool(((m >= 0) & (m <= removable)).all())

    for _ in range(rounds):
        moves = [(g, d * steps[g]) for g in live for d in (-1, 1)]
        cands = []
        for g, d in moves:
            m = best.copy()
            m[g] += d
            cands.append(m)
        if len(live) <= pairs_up_to:  # trade units between two groups (up to 3 steps each on few)
            span = (1, 2, 3) if len(live) <= 12 else (1,)
            for g in live:
                for h in live:
                    if g < h:
                        for dg in span:
                            for dh in span:
                                for sg, sh in ((1, -1), (-1, 1)):
                                    m = best.copy()
                                    m[g] += sg * dg * steps[g]
                                    m[h] += sh * dh * steps[h]
                                    cands.append(m)
        improved = False
        for m in cands:
            if ok(m):
                e = abs(total(m) - goal)
                if e < err * (1 - 1e-9):
                    best, err, improved = m, e, True
        if not improved:
            break
    return best


def _kept_whole(a: Analysis, most: int = 3) -> str:
    """The reasons of the costliest groups that are kept whole (what stops the target), if any."""
    whole = sorted((g for g in a.groups if not g.prunable and g.n_units > 1),
                   key=lambda g: -g.flops_per_unit * g.n_units)
    reasons = list(dict.fromkeys(g.reason for g in whole if g.reason))[:most]
    return (" Kept whole: " + "; ".join(reasons) + ".") if reasons else ""


def _refine(seq: np.ndarray, n_groups: int, total, goal: float, rounds: int = 24) -> np.ndarray:
    """Removal counts per group landing nearest the goal.

    Bisect the removal order for the shortest prefix at or below the goal. To land closer than
    one coarse unit, skip the unit that crossed, block its group, and bisect the rest of the
    order again from the last prefix above the goal; after a few rounds the candidate nearest
    the goal wins."""
    base = np.zeros(n_groups, dtype=np.int64)
    best, best_err = None, np.inf
    for _ in range(rounds):
        prefix = lambda j: base + np.bincount(seq[:j], minlength=n_groups)  # noqa: E731
        lo, hi = 0, len(seq)
        while lo < hi:
            mid = (lo + hi) // 2
            if total(prefix(mid)) <= goal:
                hi = mid
            else:
                lo = mid + 1
        for cand in (prefix(lo), prefix(max(lo - 1, 0))):
            err = abs(total(cand) - goal)
            if err < best_err:
                best, best_err = cand, err
        if lo == 0 or lo > len(seq) or best_err <= 2e-4 * goal:  # 0.02% of the target is plenty
            break
        base = prefix(lo - 1)
        blocked = seq[lo - 1]
        rest = seq[lo - 1:]
        seq = rest[rest != blocked]
    return best


def _param_counts(model, slices: list[Slice], drops: tuple[str, ...]) -> tuple[int, int]:
    """Parameter counts before and after ``slices`` and the layer ``drops``, each tensor once (as
    ``model.parameters()`` counts them): read off the plan, so no second cost model is built
    for figures that only the plan reports."""
    kept: dict[str, dict[int, int]] = {}
    for s in slices:
        kept.setdefault(s.tensor, {})[s.dim] = len(s.keep)
    tensors: dict[int, list] = {}  # id -> [tensor, kept size per sliced dim, every name under a dropped layer]
    prefixes = tuple(d + "." for d in drops)
    for name, p in _walks.parameters(model).items():
        entry = tensors.get(id(p))
        if entry is None:
            entry = tensors[id(p)] = [p, {}, bool(prefixes)]
        dims = kept.get(name)
        if dims:
            entry[1].update(dims)
        if entry[2]:
            entry[2] = name.startswith(prefixes)
    before = after = 0
    for p, dims, dropped in tensors.values():
        n = p.numel()
        before += n
        if dropped:
            continue
        for d, k in dims.items():
            n = n // p.shape[d] * k if p.shape[d] else 0
        after += n
    return before, after


@own_loop
def build_plan(a: Analysis, keep: list[np.ndarray], *, target: float, metric: str, criterion: str,
               round_to: int | None) -> Plan:
    """Turn keep-masks into the slices and attribute updates that realise them."""
    model = a.model
    decisions = [Decision(g.id, g.kind.value, g.n_units, int(mask.sum()), tuple(sorted({m.name for m in g.tensors})),
                          g.reason) for g, mask in zip(a.groups, keep)]
    slices, shapes = slices_for(a.groups, keep, lambda name: tuple(a.traced.tensor(name).shape))
    attrs = attr_updates(model, a.coupling.attr_fixes, lambda key: a.kept_width(key, keep))
    drops = tuple(name for gi, g in enumerate(a.groups) if g.layers
                  for u, name in enumerate(g.layers) if not keep[gi][u])
    flops = a.cost("flops")
    params_before, params_after = _param_counts(model, slices, drops)
    after = {"flops": flops.total(keep), "params": params_after}
    extra = (("flops_before", flops.base), ("flops_after", after["flops"]),
             ("params_before", params_before), ("params_after", params_after))
    if a.traced.parts:  # a partial capture: say what was captured and what was left to opaque code
        extra += (("captured_parts", ", ".join(a.traced.parts)),
                  ("opaque", ", ".join(a.traced.opaque) or "no module with parameters"))
    c = a.cost(metric)
    config = ()
    if a.config_model is not None:
        from ..analysis.hf import config_updates, invalid
        config = tuple(AttrUpdate("config", f, old, new) for f, old, new in config_updates(a, a.config_model, keep))
        problem = invalid(a.config_model.config, {u.attr: u.new for u in config})
        if problem:
            raise PlanError(f"the pruned widths would not make a valid {type(a.config_model.config).__name__} "
                            f"({problem}); try another target or uniform=False")
    return Plan(type(model).__name__, float(target), metric, criterion, round_to, c.base,
                after[metric] if metric in after else c.total(keep),
                tuple(slices), tuple(attrs), tuple(decisions), tuple(sorted(shapes.items())), extra, config,
                drops, fingerprint=fingerprint_of(model))

