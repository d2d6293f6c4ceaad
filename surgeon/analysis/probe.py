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

import functools
import logging
from typing import Any

import numpy as np
from torch import nn

from ..graph.groups import build_groups
from ..graph.ir import AttrFix, Coupling, DimKey
from ..graph.rules.shape import size_spec
from ..graph.trace import trace
from ..slicing.clone import meta_copy, to_meta
from ..slicing.edits import slice_model
from .realise import attr_updates, kept_width, member_index, slices_for

log = logging.getLogger(__name__)

__all__ = ["resolve_probes"]


def resolve_probes(model: nn.Module, example_input: Any, traced, c: Coupling) -> Coupling:
    """``c`` derived: the freezes of probed dims whose width follows pruning lifted, and the
    attributes that hold those widths added as fix-ups (``c`` itself is not changed)."""
    held = {k: c.frozen[k] for k in c.probes if k in c.frozen}
    if not held:
        return c
    trial = c.derive(frozen={k: v for k, v in c.frozen.items() if k not in held})
    groups = build_groups(trial)
    keep, tested = _trial_cut(groups, held)
    if not tested:
        return c
    index = member_index(groups)
    width = functools.partial(kept_width, index, c.sizes, keep=keep)
    attrs = _candidate_attrs(c, held, width)
    cut = _capture_cut(model, example_input, traced, groups, keep, c.attr_fixes, attrs, width)
    passed = _passed(c, traced, cut, tested, held, width) if cut is not None else set()
    if not passed:
        return c
    fixes = list(c.attr_fixes)
    for key in sorted(passed):  # the attributes that hold these widths follow them from now on
        for _, _, _, candidates in c.probes[key]:
            for module, attr in candidates:
                fix = AttrFix(module, attr, key)
                if (module, attr) in attrs and fix not in fixes:
                    fixes.append(fix)
    frozen = {k: v for k, v in c.frozen.items() if k not in passed}
    return c.derive(frozen=frozen, attr_fixes=tuple(fixes))


def _trial_cut(groups, held) -> tuple[list[np.ndarray], list]:
    """A keep-mask per group that cuts every probed group to widths no other group has, so that
    an attribute holding a number two groups share shows up as claimed by two widths."""
    keep, tested, used = [], [], set()
    for g in groups:
        mask = np.ones(g.n_units, dtype=bool)
        probed = [m for m in g.members if m.key in held]
        free = np.nonzero(~g.frozen_units)[0]
        if g.reason is None and probed and len(free) >= 2:
            for r in range(1, len(free)):
                trial = mask.copy()
                trial[free[-r:]] = False
                widths = {int(trial[m.unit_of].sum()) for m in probed}
                if not widths & used or r == len(free) - 1:
                    break
            mask, used = trial, used | widths
            tested.append(g)
        keep.append(mask)
    return keep, tested


def _capture_cut(model, example_input, traced, groups, keep, fixes, attrs, width):
    """The trial cut realised on a copy and captured again, or None where that fails. The copy
    is made on the meta device first (a capture needs shapes, not weights: no second copy of a
    big model's weights); where a model cannot run on meta, on a real copy."""
    slices, _ = slices_for(groups, keep, lambda name: tuple(traced.tensor(name).shape))
    updates = attr_updates(model, fixes, width)
    for on_meta in (True, False):
        try:
            source = meta_copy(model) if on_meta else model
            cut = slice_model(source, slices, updates, inplace=on_meta)
            for (module, attr), value in attrs.items():
                setattr(cut.get_submodule(module), attr, value)
            cut = trace(cut, to_meta(example_input) if on_meta else example_input)
        except Exception as exc:  # noqa: BLE001 - any failure keeps every probed width frozen
            log.info("surgeon: width probe failed%s (%s: %s)", " on meta" if on_meta else "",
                     type(exc).__name__, exc)
            continue
        if cut.mode == traced.mode:
            return cut
    return None


def _passed(c: Coupling, traced, cut, tested, held, width) -> set[DimKey]:
    """The probed dims whose every reshape wrote the cut width in the cut copy's capture."""
    nodes = {n.name: n for n in cut.graph.nodes}
    old_nodes = {n.name: n for n in traced.graph.nodes}
    probed: dict[str, set[int]] = {}
    for checks in c.probes.values():
        for name, pos, _, _ in checks:
            probed.setdefault(name, set()).add(pos)
    passed = set()
    for g in tested:
        for m in g.members:
            checks = c.probes.get(m.key)
            if checks and m.key in held and all(
                    _follows(old_nodes.get(name), nodes.get(name), pos, probed[name], width(m.key))
                    for name, pos, _, _ in checks):
                passed.add(m.key)
    return passed


def _candidate_attrs(c: Coupling, held, width) -> dict[tuple[str, str], int]:
    """Attributes to set in the cut copy: each that holds the number a probed reshape or split
    wrote, set to the width its dim has after the cut. An attribute two different widths claim
    cannot follow both, so it is left alone (and its probes fail unless the code ignores it)."""
    claims: dict[tuple[str, str], set[int]] = {}
    for key, checks in c.probes.items():
        if key not in held:
            continue
        w = width(key)
        for _, _, _, candidates in checks:
            for ma in candidates:
                claims.setdefault(tuple(ma), set()).add(w)
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
