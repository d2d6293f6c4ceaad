"""LAMP: layer-adaptive magnitude scores (Lee et al. 2021), structured per unit.

For each member parameter of a group, every unit ``u`` gets its squared L2 magnitude ``m_u``
(summed over the indices it owns) and the LAMP score

    lamp_u = m_u / sum_{v : m_v >= m_u} m_v

(ties share the denominator of the whole tie), so the largest unit of every member scores 1 and
small units score low relative to what survives above them in the same layer. The members'
LAMP scores are then combined like every criterion's (mean-normalised and summed). No data.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..graph.groups import PruneGroup
from .base import _tensor, combine, per_index

__all__ = ["LAMP", "lamp_scores"]


def lamp_scores(m: np.ndarray) -> np.ndarray:
    """LAMP score of each entry of ``m`` (non-negative magnitudes): ``m_u`` over the sum of all
    ``m_v >= m_u``; 0 where that sum is 0.

    >>> lamp_scores(np.array([1.0, 4.0, 2.0, 3.0])).round(3).tolist()
    [0.1, 1.0, 0.222, 0.429]
    """
    m = np.asarray(m, dtype=np.float64)
    s = np.sort(m)
    suffix = np.cumsum(s[::-1])[::-1]  # suffix[k] = sum of s[k:]
    denom = suffix[np.searchsorted(s, m, side="left")]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, m / np.where(denom > 0, denom, 1.0), 0.0)


class LAMP:
    """Layer-adaptive magnitude: each member's squared unit norms turned into LAMP scores."""

    name = "lamp"

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        out = []
        for g in groups:
            units = np.arange(g.n_units)
            parts = []
            for m in g.tensors:
                t = _tensor(model, m.name)
                if t is not None and t.dim() > m.dim:
                    per_unit = np.bincount(m.unit_of, weights=per_index(t, m.dim, 2), minlength=g.n_units)
                    parts.append((units, lamp_scores(per_unit)))
            out.append(combine(g, parts))
        return out
