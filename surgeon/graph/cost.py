"""Cost model: FLOPs (as ``torch.utils.flop_counter`` counts them) or parameters, as a sum of
monomials in the kept widths of the prunable groups.

Each traced node's FLOPs were measured during capture. A rule states which dimensions a node's
FLOPs scale with (a conv: its weight's out and in channels), so after pruning the node costs
``flops * prod(kept(d) / size(d))``. FLOPs of nodes no rule claimed stay constant.
"""

from __future__ import annotations

import numpy as np

from .. import _walks
from .groups import PruneGroup
from .ir import Coupling
from .._gc import own_loop

__all__ = ["CostModel", "METRICS"]

METRICS = ("flops", "params", "latency")  # latency: a measured model, surgeon.latency.LatencyCost


class CostModel:
    """``total(keep)`` for a list of boolean keep-masks, one per group."""

    @own_loop
    def __init__(self, traced, coupling: Coupling, groups: list[PruneGroup], metric: str):
        if metric not in ("flops", "params"):
            raise ValueError(f"unknown metric {metric!r} for a counted cost model; use 'flops' or 'params' "
                             f"(metric='latency' is measured: surgeon.shrink(..., metric='latency', runtime=...))")
        self.metric = metric
        self.groups = groups
        # one slot per distinct unit structure: dims of one eq-class share their unit_of array
        member = {m.key: (gi, m) for gi, g in enumerate(groups) for m in g.members}
        slot_of_array: dict[int, int] = {}
        slot_group, slot_units = [], []  # per slot: its group and the unit of each of its indices

        def slot(key) -> int:  # -1 for a dim no group holds
            hit = member.get(key)
            if hit is None:
                return -1
            gi, m = hit
            si = slot_of_array.get(id(m.unit_of))
            if si is None:
                si = slot_of_array[id(m.unit_of)] = len(slot_group)
                slot_group.append(gi)
                slot_units.append(m.unit_of)
            return si

        if metric == "flops":
            flops = [t.flops for t in coupling.costs]
            idx_rows = [[si for si in map(slot, t.dims) if si >= 0] for t in coupling.costs]
            base = traced.total_flops()
        else:
            flops, idx_rows, base = _param_rows(traced, coupling, slot)
        self.base = float(base)
        self.const = self.base - sum(flops)
        self.n_slots = one = len(slot_group)  # ``one``: the index of a constant 1.0 ratio
        width = max(1, max(map(len, idx_rows), default=0))
        self.idx = np.array([r + [one] * (width - len(r)) for r in idx_rows], dtype=np.int64).reshape(-1, width)
        self.flops = np.array(flops, dtype=np.float64)
        n = self._index_units(groups, slot_group, slot_units, one)
        held = self._nnz > 0
        self._even_tables(n, held)
        uneven = ~self._even[self._rows] | ~held[self._rows]
        self._uneven = self._rows[uneven], self._cols[uneven], self._vals[uneven]
        self._marginal: np.ndarray | None = None  # per unit, all groups concatenated

    def _index_units(self, groups, slot_group: list[int], slot_units: list[np.ndarray], one: int) -> np.ndarray:
        """The sparse (slot, unit) -> count entries; returns the number of units of each slot's group."""
        # kept(slot) = sum over units u of counts[slot, u] * keep[u] / size[slot] (counts: how many
        # of the slot's indices unit u holds), as one sparse product over the concatenated
        # keep-masks of all groups; entries ordered by slot, then unit
        self._offsets = np.cumsum([0] + [g.n_units for g in groups])
        self._slot_group = np.array(slot_group, dtype=np.int64)
        self._sizes = np.array([len(u) for u in slot_units], dtype=np.int64)
        n = np.diff(self._offsets)[self._slot_group]  # units of each slot's group
        start = np.cumsum(n) - n  # each slot's units, one after another
        flat = (np.concatenate(slot_units).astype(np.int64, copy=False) + np.repeat(start, self._sizes)
                if slot_units else np.zeros(0, np.int64))
        counts = np.bincount(flat, minlength=int(n.sum()))
        nz = np.flatnonzero(counts)
        self._rows = np.repeat(np.arange(one, dtype=np.int64), n)[nz]
        self._cols = self._offsets[self._slot_group[self._rows]] + nz - start[self._rows]
        self._counts = counts[nz]
        self._vals = self._counts / self._sizes[self._rows]
        self._nnz = np.bincount(self._rows, minlength=one)
        self._start = np.cumsum(self._nnz) - self._nnz  # each slot's first entry
        return n

    def _even_tables(self, n: np.ndarray, held: np.ndarray) -> None:
        # A slot is even when every unit of its group holds the same, non-zero, number of its
        # indices. Its kept ratio, a running sum of one value per kept unit (a removed unit adds
        # 0.0), depends only on how many units are kept: it is read from a table of running sums.
        self._even = self._nnz == n
        if held.any():
            self._even[held] &= (np.minimum.reduceat(self._counts, self._start[held])
                                 == np.maximum.reduceat(self._counts, self._start[held]))
        self._even_slots = np.flatnonzero(self._even & held)
        tables: dict[tuple[float, int], int] = {}  # (value, units) -> where its running sums start
        parts, size = [], 0
        self._table_at = np.zeros(len(self._even_slots), dtype=np.int64)
        for i, si in enumerate(self._even_slots.tolist()):
            key = (float(self._vals[self._start[si]]), int(n[si]))
            if key not in tables:
                tables[key] = size
                parts.append(np.cumsum(np.full(key[1], key[0])))
                size += key[1]
            self._table_at[i] = tables[key]
        self._tables = np.concatenate(parts) if parts else np.zeros(0)

    def total(self, keep: list[np.ndarray]) -> float:
        """Cost with one boolean keep-mask per group."""
        return self.total_flat(np.concatenate(keep) if keep else np.zeros(0, dtype=bool))

    def total_flat(self, flat: np.ndarray) -> float:
        """Cost with the keep-masks of all groups concatenated."""
        r = np.ones(self.n_slots + 1)
        if flat.dtype == bool:
            rows, cols, vals = self._uneven
            r[:-1] = np.bincount(rows, weights=vals * flat[cols], minlength=self.n_slots)
            return self._with_even(r, self._kept_per_group(flat))
        r[:-1] = np.bincount(self._rows, weights=self._vals * flat[self._cols], minlength=self.n_slots)
        return self._from_ratios(r)

    @property
    def by_counts(self) -> bool:
        """Whether the cost depends only on how many units each group keeps (every slot's
        indices spread evenly over its group's units), so :meth:`total_kept` gives it."""
        return len(self._uneven[0]) == 0

    def total_kept(self, kept: np.ndarray) -> float:
        """:meth:`total_flat` from the units each group keeps, where :attr:`by_counts`."""
        r = np.ones(self.n_slots + 1)
        r[:-1] = 0.0  # what the bincount of no uneven entries gives
        return self._with_even(r, kept)

    def _with_even(self, r: np.ndarray, kept_per_group: np.ndarray) -> float:
        kept = kept_per_group[self._slot_group[self._even_slots]]  # units kept per slot
        r[self._even_slots] = np.where(kept > 0, self._tables[self._table_at + np.maximum(kept - 1, 0)], 0.0)
        return self._from_ratios(r)

    def _from_ratios(self, r: np.ndarray) -> float:
        per_term = r[self.idx[:, 0]]
        for j in range(1, self.idx.shape[1]):  # each row's ratios multiplied left to right
            per_term = per_term * r[self.idx[:, j]]
        return self.const + float(self.flops @ per_term)

    def _kept_per_group(self, flat: np.ndarray) -> np.ndarray:
        """Units each group keeps under the boolean ``flat`` (every group's mask, concatenated):
        one integer sum per group of units, not a running sum over every unit."""
        offsets = self._offsets
        if len(flat) != offsets[-1]:
            raise ValueError(f"a keep-mask of {len(flat)} units for groups of {offsets[-1]} units in all")
        out = np.zeros(len(offsets) - 1, dtype=np.int64)
        starts = offsets[:-1]
        nonempty = np.flatnonzero(offsets[1:] > starts)
        if len(nonempty):  # a group's sum runs up to the next nonempty one
            out[nonempty] = np.add.reduceat(flat.view(np.uint8), starts[nonempty], dtype=np.int64)
        return out

    def marginal(self) -> list[np.ndarray]:
        """Cost removed by each single unit, at full width, per group."""
        if not self.groups:
            return []
        flat = self._marginal_flat().copy()  # one slice per group (np.split is slower)
        return [flat[a:b] for a, b in zip(self._offsets[:-1].tolist(), self._offsets[1:].tolist())]

    def mean_marginal(self) -> np.ndarray:
        """The mean of :meth:`marginal` per group (0.0 for a group without units)."""
        flat = self._marginal_flat()
        n_units = np.diff(self._offsets)
        out = np.zeros(len(self.groups))
        for n in np.unique(n_units[n_units > 0]):  # groups of one size at once, each row summed as alone
            gs = np.flatnonzero(n_units == n)
            out[gs] = flat[self._offsets[gs][:, None] + np.arange(n)].mean(axis=1)
        return out

    def _marginal_flat(self) -> np.ndarray:
        if self._marginal is None:
            self._marginal = self._marginals()
        return self._marginal

    def _marginals(self) -> np.ndarray:
        # Each (term, slot) pair adds flops * counts[u] / size to every unit u of the slot's group,
        # summed in term order, then slot order within a term (as a loop over the terms would).
        groups = self.groups
        term, pos = np.nonzero(self.idx < self.n_slots)
        slot = self.idx[term, pos]
        # in a group of even slots every unit adds the same numbers: sum them once
        start = self._start
        even_group = np.ones(len(groups), dtype=bool)
        even_group[self._slot_group[~self._even]] = False
        flat_group = np.repeat(np.arange(len(groups)), np.diff(self._offsets))
        one = even_group[self._slot_group[slot]] & (self._nnz[slot] > 0)
        s1 = slot[one]
        per_group = np.bincount(self._slot_group[s1], weights=self.flops[term[one]] * self._counts[start[s1]]
                                / self._sizes[s1], minlength=len(groups))
        flat = per_group[flat_group]
        # the other groups: one entry per (pair, unit the slot holds)
        term, slot = term[~one], slot[~one]
        if len(slot):
            lens = self._nnz[slot]
            entry = np.repeat(start[slot] - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
            w = np.repeat(self.flops[term], lens) * self._counts[entry] / np.repeat(self._sizes[slot], lens)
            uneven = np.bincount(self._cols[entry], weights=w, minlength=len(flat))
            flat = np.where(even_group[flat_group], flat, uneven)
        return flat


def _param_rows(traced, c: Coupling, slot) -> tuple[list[float], list[list[int]], int]:
    """Element counts and slot rows (``slot`` of each dim a group holds) of every parameter, each
    counted once as ``model.parameters()`` does, and the total count."""
    sizes = c.sizes
    first_layer = {n: i for i, n in enumerate(c.layer_keys)}
    flops, rows, total = [], [], 0
    seen: set[int] = set()
    for name, p in _walks.parameters(traced.model).items():  # each tensor once, as named_parameters()
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        row = []
        for d in range(p.dim()):
            key = ("p", name, d)
            if key in sizes and (si := slot(key)) >= 0:
                row.append(si)
        if first_layer:  # the first removable layer (in layer_keys order) that holds it
            parts = name.split(".")
            holders = [h for h in (".".join(parts[:k]) for k in range(1, len(parts))) if h in first_layer]
            if holders and (si := slot(c.layer_keys[min(holders, key=first_layer.get)])) >= 0:
                row.append(si)
        flops.append(float(n))
        rows.append(row)
    return flops, rows, total
