"""Cost model: FLOPs (as ``torch.utils.flop_counter`` counts them) or parameters, as a sum of
monomials in the kept widths of the prunable groups.

Each traced node's FLOPs were measured during capture. A rule states which dimensions a node's
FLOPs scale with (a conv: its weight's out and in channels), so after pruning the node costs
``flops * prod(kept(d) / size(d))``. FLOPs of nodes no rule claimed stay constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .groups import PruneGroup
from .ir import Coupling, CostTerm

__all__ = ["CostModel", "METRICS"]

METRICS = ("flops", "params", "latency")  # latency: a measured model, surgeon.latency.LatencyCost


@dataclass
class _Slot:
    group: int  # index into the group list
    counts: np.ndarray  # elements of this dim per unit
    size: int


class CostModel:
    """``total(keep)`` for a list of boolean keep-masks, one per group."""

    def __init__(self, traced, coupling: Coupling, groups: list[PruneGroup], metric: str):
        if metric not in ("flops", "params"):
            raise ValueError(f"unknown metric {metric!r} for a counted cost model; use 'flops' or 'params' "
                             f"(metric='latency' is measured: surgeon.shrink(..., metric='latency', runtime=...))")
        self.metric = metric
        self.groups = groups
        terms = coupling.costs if metric == "flops" else _param_terms(traced, coupling)
        base = traced.total_flops() if metric == "flops" else _param_total(traced.model)
        self.base = float(base)
        self.const = self.base - sum(t.flops for t in terms)
        # one slot per distinct unit structure: dims of one eq-class share their unit_of array
        slot_of: dict[int, int] = {}
        self.slots: list[_Slot] = []
        where = {m.key: (gi, m) for gi, g in enumerate(groups) for m in g.members}
        idx_rows, flops = [], []
        for t in terms:
            row = []
            for key in t.dims:
                if key not in where:
                    continue
                gi, m = where[key]
                sid = id(m.unit_of)
                if sid not in slot_of:
                    slot_of[sid] = len(self.slots)
                    self.slots.append(_Slot(gi, np.bincount(m.unit_of, minlength=groups[gi].n_units),
                                            len(m.unit_of)))
                row.append(slot_of[sid])
            idx_rows.append(row)
            flops.append(t.flops)
        width = max((len(r) for r in idx_rows), default=0)
        one = len(self.slots)  # index of a constant 1.0 ratio
        self.idx = np.full((len(idx_rows), max(width, 1)), one, dtype=np.int64)
        for i, r in enumerate(idx_rows):
            self.idx[i, : len(r)] = r
        self.flops = np.asarray(flops, dtype=np.float64)
        # kept(slot) = sum over units u of counts[slot, u] * keep[u], as one sparse product over
        # the concatenated keep-masks of all groups
        offsets = np.cumsum([0] + [g.n_units for g in groups])
        rows, cols, vals = [], [], []
        for si, s in enumerate(self.slots):
            nz = np.nonzero(s.counts)[0]
            rows.append(np.full(len(nz), si))
            cols.append(offsets[s.group] + nz)
            vals.append(s.counts[nz] / s.size)
        cat = (lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t))
        self._rows, self._cols = cat(rows, np.int64), cat(cols, np.int64)
        self._vals = cat(vals, np.float64)

    def total(self, keep: list[np.ndarray]) -> float:
        """Cost with one boolean keep-mask per group."""
        return self.total_flat(np.concatenate(keep) if keep else np.zeros(0, dtype=bool))

    def total_flat(self, flat: np.ndarray) -> float:
        """Cost with the keep-masks of all groups concatenated."""
        r = np.ones(len(self.slots) + 1)
        r[:-1] = np.bincount(self._rows, weights=self._vals * flat[self._cols], minlength=len(self.slots))
        return self.const + float(self.flops @ np.prod(r[self.idx], axis=1))

    def marginal(self) -> list[np.ndarray]:
        """Cost removed by each single unit, at full width, per group."""
        out = [np.zeros(g.n_units) for g in self.groups]
        for row, f in zip(self.idx, self.flops):
            for si in row:
                if si < len(self.slots):
                    s = self.slots[si]
                    out[s.group] += f * s.counts / s.size
        return out


def _param_total(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _param_terms(traced, c: Coupling) -> list[CostTerm]:
    seen = set()
    terms = []
    for name, p in traced.model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        dims = tuple(("p", name, d) for d in range(p.dim()) if ("p", name, d) in c.sizes)
        layer = next((k for n, k in c.layer_keys.items() if name.startswith(n + ".")), None)
        if layer is not None:
            dims += (layer,)
        terms.append(CostTerm(float(p.numel()), dims, name))
    return terms
