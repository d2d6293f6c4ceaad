"""A cost model whose per-node terms are measured latencies, with CostModel's interface.

Each conv and linear module of the traced graph gets a :class:`~surgeon.latency.table.Table`
(its latency over kept (in, out) width fractions on the runtime); its term is the table looked up
at the kept fractions. Other nodes with FLOPs (matmuls of attention, functional convs) cost the
layers' mean time per FLOP times their FLOP monomial. The rest (activations, norms, permutes,
pooling: what no table covers) is ``measured dense latency - sum of the terms``, shared among
the other nodes in proportion to the elements they write, and each share shrinks with the
kept fraction of its output's dims (these ops are memory-bound: ConvNeXt's LayerNorms and
permutes are a third of its time on onnxruntime). So ``base`` is the dense model's end-to-end
latency on the runtime. When the layers timed alone add up to more than the whole model
(fusion, caches), they are scaled to 95% of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..graph.groups import PruneGroup
from .table import LayerSig, Table, interp2

__all__ = ["LatencyCost", "layer_sig"]


def layer_sig(module: nn.Module, in_shape: tuple[int, ...] | None) -> LayerSig | None:
    """The signature of a conv or linear module called on ``in_shape``, or None if not tabled."""
    if in_shape is None:
        return None
    bias = getattr(module, "bias", None) is not None
    if isinstance(module, nn.Linear) and len(in_shape) >= 1:
        return LayerSig("linear", module.in_features, module.out_features, tuple(in_shape[:-1]), bias=bias)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and len(in_shape) == module.weight.dim() \
            and isinstance(module.padding, tuple):
        g = module.groups
        kind = "conv" if g == 1 else ("dwconv" if g == module.in_channels == module.out_channels else "gconv")
        return LayerSig(kind, module.in_channels, module.out_channels, (in_shape[0], *in_shape[2:]),
                        tuple(module.kernel_size), tuple(module.stride), tuple(module.padding),
                        tuple(module.dilation), g, bias)
    return None


@dataclass
class _Term:
    rows: list[int]  # dim rows: (out, in) for a tabled term, every dim for the others
    flops: float  # FLOPs, or elements written for an elementwise term
    table: Table | None
    elementwise: bool = False


class LatencyCost:
    """``total(keep)``: latency on one runtime, in units of a reference layer's time; ``base`` is
    the measured dense latency (``base_ms`` in milliseconds)."""

    def __init__(self, groups: list[PruneGroup], terms: list[tuple[list, float, Table | None, bool]],
                 dense: float, metric: str, ms_per_unit: float = 1.0):
        """``terms``: (dims, FLOPs or elements, table or None, elementwise) per node; ``dense``
        the model's time in the tables' unit (a reference layer's time), ``ms_per_unit`` that
        unit in milliseconds when the model was timed (for reports: ``base_ms``)."""
        self.metric = metric
        self.groups = groups
        self.base = float(dense)
        self.base_ms = self.base * ms_per_unit
        where = {m.key: (gi, m) for gi, g in enumerate(groups) for m in g.members}
        offsets = np.cumsum([0] + [g.n_units for g in groups])
        row_of: dict = {}
        rows, cols, vals, self._per_unit = [], [], [], []
        self.terms: list[_Term] = []
        for dims, flops, table, elementwise in terms:
            idx = []
            for key in dims:
                if key not in where:
                    idx.append(-1)  # not prunable: ratio 1
                    continue
                if key not in row_of:
                    gi, m = where[key]
                    counts = np.bincount(m.unit_of, minlength=groups[gi].n_units) / len(m.unit_of)
                    nz = np.nonzero(counts)[0]
                    row_of[key] = len(self._per_unit)
                    rows.append(np.full(len(nz), row_of[key]))
                    cols.append(offsets[gi] + nz)
                    vals.append(counts[nz])
                    self._per_unit.append((gi, counts))
                idx.append(row_of[key])
            self.terms.append(_Term(idx, float(flops), table, bool(elementwise)))
        cat = (lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t))
        self._rows, self._cols, self._vals = cat(rows, np.int64), cat(cols, np.int64), cat(vals, np.float64)
        self._n_rows = len(self._per_unit)
        self._compile()

    def _compile(self) -> None:
        tabled = [t for t in self.terms if t.table is not None]
        one = self._n_rows  # index of a constant ratio 1.0
        pick = (lambda r: one if r < 0 else r)
        self._t_out = np.array([pick(t.rows[0]) for t in tabled], dtype=np.int64)
        self._t_in = np.array([pick(t.rows[1]) for t in tabled], dtype=np.int64)
        grids = [t.table.grid() for t in tabled]
        n = len(grids[0][0]) if grids else 1
        self._fo = np.array([g[0] for g in grids]).reshape(-1, n)
        self._fi = np.array([g[1] for g in grids]).reshape(-1, n)
        self._ms = np.array([g[2] for g in grids]).reshape(-1, n, n)
        table_ms = float(self._ms[:, -1, -1].sum()) if len(self._ms) else 0.0
        table_flops = sum(t.flops for t in tabled)
        flop_terms = [t for t in self.terms if t.table is None and not t.elementwise]
        elem_terms = [t for t in self.terms if t.elementwise]
        rest_flops = sum(t.flops for t in flop_terms)
        # time per FLOP of the measured layers prices the others (attention matmuls, ...)
        if table_flops > 0:
            rate = table_ms / table_flops
        else:  # nothing tabled (a torch.export capture has no modules): latency follows FLOPs
            rate = 0.9 * self.base / rest_flops if rest_flops > 0 else 0.0
        terms_ms = table_ms + rate * rest_flops
        self.scale = 1.0 if terms_ms <= 0.95 * self.base or terms_ms == 0 else 0.95 * self.base / terms_ms
        rest_ms = self.base - self.scale * terms_ms
        elements = sum(t.flops for t in elem_terms)
        per_elem = rest_ms / elements if elements > 0 else 0.0
        self.const = self.base - self.scale * terms_ms - per_elem * elements
        rest = flop_terms + elem_terms
        width = max((len(t.rows) for t in rest), default=1)
        self._r_idx = np.full((len(rest), max(width, 1)), one, dtype=np.int64)
        for i, t in enumerate(rest):
            self._r_idx[i, :len(t.rows)] = [pick(r) for r in t.rows]
        # the rest's terms in ms at full width, already scaled
        self._r_ms = np.array([self.scale * rate * t.flops for t in flop_terms] +
                              [per_elem * t.flops for t in elem_terms], dtype=np.float64)

    def _ratios(self, flat: np.ndarray) -> np.ndarray:
        r = np.ones(self._n_rows + 1)
        r[:-1] = np.bincount(self._rows, weights=self._vals * flat[self._cols], minlength=self._n_rows)
        return r

    def total(self, keep: list[np.ndarray]) -> float:
        return self.total_flat(np.concatenate(keep) if keep else np.zeros(0, dtype=bool))

    def total_flat(self, flat: np.ndarray) -> float:
        """Latency (ms) with the keep-masks of all groups concatenated."""
        r = self._ratios(flat)
        ms = interp2(self._fo, self._fi, self._ms, r[self._t_out], r[self._t_in]).sum() if len(self._ms) else 0.0
        ms = self.scale * float(ms)
        ms += float(self._r_ms @ np.prod(r[self._r_idx], axis=1)) if len(self._r_ms) else 0.0
        return self.const + ms

    def marginal(self) -> list[np.ndarray]:
        """Latency removed by each single unit at full width: the tables' slopes near full width."""
        out = [np.zeros(g.n_units) for g in self.groups]
        for k, (o, i) in enumerate(zip(self._t_out, self._t_in)):
            fo, fi, ms = self._fo[k], self._fi[k], self._ms[k]
            for row, slope in ((o, _slope(fo, ms[:, -1])), (i, _slope(fi, ms[-1, :]))):
                if row < self._n_rows:
                    gi, counts = self._per_unit[row]
                    out[gi] += self.scale * slope * counts
        for idx, f in zip(self._r_idx, self._r_ms):
            for row in idx:
                if row < self._n_rows:
                    gi, counts = self._per_unit[row]
                    out[gi] += f * counts
        return out


def _slope(frac: np.ndarray, ms: np.ndarray) -> float:
    """d latency / d width fraction over the top quarter of the grid (a block-size step wide)."""
    df = frac[-1] - frac[-2]
    return max(float(ms[-1] - ms[-2]) / df, 0.0) if df > 0 else 0.0
