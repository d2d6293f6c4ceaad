"""Config widths that are products of several fields, solved together.

A footprint (:mod:`surgeon.analysis.hf`) records how one parameter dim moves when one field
moves, the others held. Most widths depend on one field (``intermediate_size``), and each
field is solved alone from its dims. Some are products: Swin's MLP is ``int(mlp_ratio *
embed_dim * 2**stage)`` wide, so a cut MLP with the same ``embed_dim`` is a new ``mlp_ratio``,
and a cut ``embed_dim`` with the same MLP is a new ``embed_dim`` *and* a new ``mlp_ratio``;
neither field alone agrees with all its dims. Such widths are solved together in logs: every
dim whose footprint entries are all pure products (``dim = a * value``, no offset) gives
``log(new / old) = sum of log(new_f / old_f)`` over its fields, a linear system solved exactly
(or not at all: a system with no exact, unique solution leaves the fields unsolved, and the
cut is then reported as one the config cannot say).

A float ratio is written as the float nearest above the exact rational value, so that the
modeling code's ``int(ratio * dim)`` gives back every width (the nearest float may be a hair
below and truncate one unit short).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["MIXED", "solve_products", "ratio_up"]


class _Mixed:
    """A field whose dims disagree on its new value (solved alone)."""

    def __repr__(self) -> str:
        return "MIXED"


MIXED = _Mixed()


def ratio_up(value: float, pairs: list[tuple[float, int]]) -> float | None:
    """The float nearest ``value`` from above such that ``int(dim * ratio) == width`` for every
    ``(dim, width)`` of ``pairs``, or None if a few floats up do not give them."""
    r = float(value)
    for _ in range(8):
        if all(int(dim * r) == round(width) for dim, width in pairs):
            return r
        r = math.nextafter(r, math.inf)
    return None


def _system(cm, widths: dict) -> tuple[list, list[str]]:
    """The pure-product dims (each with its fields) and the fields they hold."""
    fields_at: dict[tuple, list[str]] = {}
    offset = set()
    for f, fp in cm.footprint.items():
        for key, (_, b) in fp.items():
            fields_at.setdefault(key, []).append(f)
            if b:
                offset.add(key)
    rows = [(key, fs) for key, fs in fields_at.items() if key not in offset and widths[key][0] > 0
            and widths[key][1] > 0]
    fields = sorted({f for _, fs in rows for f in fs})
    return rows, fields


def solve_products(cm, widths: dict, olds: dict, known: dict | None = None) -> dict[str, Any]:
    """New values of the fields that pure-product dims hold, solved together (``widths``:
    ``(param, dim) -> (old width, new width)``; ``olds``: field -> its value; ``known``: the
    new/old ratio of head counts a joint sets, which divide the dims of ``cm.divides``). Empty
    when the system has no exact unique solution; a field's value is None when it is no integer
    (or no float that rebuilds its widths, for a ratio)."""
    known = known or {}
    rows, fields = _system(cm, widths)
    if not rows or not fields:
        return {}
    col = {f: i for i, f in enumerate(fields)}
    A = np.zeros((len(rows), len(fields)))
    y = np.zeros(len(rows))
    for r, (key, fs) in enumerate(rows):
        for f in fs:
            A[r, col[f]] = 1.0
        y[r] = math.log(widths[key][1] / widths[key][0])
        for f, ratio in known.items():  # a dim divided by a head count the joint moved: its share out
            if key in getattr(cm, "divides", {}).get(f, ()):
                y[r] += math.log(ratio)
    x, _, rank, _ = np.linalg.lstsq(A, y, rcond=None)
    if rank < len(fields) or np.abs(A @ x - y).max(initial=0.0) > 1e-9:
        return {}
    ints = {f: round(olds[f] * math.exp(x[col[f]])) for f in fields if type(olds[f]) is not float}
    out: dict[str, Any] = {}
    for f in fields:
        value = olds[f] * math.exp(x[col[f]])
        if type(olds[f]) is not float:
            out[f] = ints[f] if abs(value - ints[f]) < 1e-6 else None
            continue
        out[f] = _ratio(cm, f, widths, olds, ints)
    return out


def _ratio(cm, f: str, widths: dict, olds: dict, ints: dict) -> float | None:
    """A ratio field's new value, exact: ``new width / (the other fields' product)`` at each dim."""
    exact, pairs = None, []
    for key, (a, _) in cm.footprint[f].items():
        others = Fraction(1)
        for g, fp in cm.footprint.items():
            if g != f and key in fp:
                if g not in ints:
                    return None  # two ratios in one width: not solved here
                others *= Fraction(ints[g], olds[g])
        dim = Fraction(a) * others  # what the ratio multiplies in the new model
        value = Fraction(widths[key][1]) / dim
        if exact is not None and value != exact:
            return None
        exact = value
        pairs.append((float(dim), widths[key][1]))
    return None if exact is None else ratio_up(float(exact), pairs)
