"""Keep-masks to edits: the slices and attribute updates that realise one keep-mask per group.

The planner turns its decision into a Plan with these, and the width probes use them to realise
a trial cut through :func:`surgeon.slicing.slice_model`; neither goes through the other.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from torch import nn

from ..errors import PlanError
from ..graph.ir import AttrFix, DimKey
from ..slicing.edits import AttrUpdate, Slice

__all__ = ["slices_for", "attr_updates", "member_index", "kept_width"]


def slices_for(groups: Sequence, keep: Sequence[np.ndarray], shape_of: Callable[[str], tuple]
               ) -> tuple[list[Slice], dict[str, tuple[int, ...]]]:
    """The slices of every tensor member of a group that loses units, and the original shape of
    each sliced tensor (``shape_of(name)``)."""
    slices, shapes = [], {}
    for g, mask in zip(groups, keep):
        if mask.all():
            continue
        kept: dict[int, tuple[int, ...] | None] = {}  # id(unit_of) -> indices kept (None: all)
        for m in g.tensors:
            if id(m.unit_of) not in kept:  # the members of one class share their unit_of
                idx = np.flatnonzero(mask[m.unit_of])
                kept[id(m.unit_of)] = None if len(idx) == len(m.unit_of) else tuple(idx.tolist())
            idx = kept[id(m.unit_of)]
            if idx is None:
                continue
            if len(idx) == 0:
                raise PlanError(f"plan would empty dim {m.dim} of '{m.name}' (group {g.id})")
            slices.append(Slice(m.name, m.dim, len(m.unit_of), idx))
            if m.name not in shapes:
                shapes[m.name] = shape_of(m.name)
    return slices, shapes


def attr_updates(model: nn.Module, fixes: Sequence[AttrFix], kept_width: Callable[[DimKey], int]
                 ) -> list[AttrUpdate]:
    """The module attributes ``fixes`` say follow a width, set to ``kept_width(dim)`` (scaled);
    several fixes of one tuple attribute are merged into one update."""
    attrs, seen = [], set()
    pending: dict[tuple[str, str], tuple] = {}
    for fix in fixes:
        width = kept_width(fix.dim) * fix.scale // fix.divisor
        mod = model.get_submodule(fix.module) if fix.module else model
        old = getattr(mod, fix.attr)
        if fix.index is not None:  # one element of a tuple attribute; several fixes may touch one tuple
            base = pending.get((fix.module, fix.attr), (old, tuple(old)))[1]
            new = tuple(width if i == fix.index else v for i, v in enumerate(base))
            pending[(fix.module, fix.attr)] = (old, new)
            continue
        if width != old and (fix.module, fix.attr) not in seen:
            seen.add((fix.module, fix.attr))
            attrs.append(AttrUpdate(fix.module, fix.attr, int(old), int(width)))
    for (module, attr), (old, new) in pending.items():
        if tuple(new) != tuple(old):
            attrs.append(AttrUpdate(module, attr, list(old), list(new)))
    return attrs


def member_index(groups: Sequence) -> dict[DimKey, tuple[int, object]]:
    """Dimension -> (group index, member), for :func:`kept_width`."""
    return {m.key: (gi, m) for gi, g in enumerate(groups) for m in g.members}


def kept_width(index: dict, sizes, key: DimKey, keep: Sequence[np.ndarray]) -> int:
    """How many indices of dimension ``key`` the keep-masks leave (all, for a dim no group holds)."""
    hit = index.get(key)
    if hit is None:
        return sizes[key]
    gi, m = hit
    return int(keep[gi][m.unit_of].sum())
