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
from ..graph.trace import trace, try_trace
from ..slicing.clone import meta_copy, to_meta
from ..slicing.edits import slice_model
from .realise import attr_updates, kept_width, member_index, slices_for

log = logging.getLogger(__name__)

__all__ = ["resolve_probes", "resolve_reads"]


def resolve_probes(model: nn.Module, example_input: Any, traced, c: Coupling) -> Coupling:
    """``c`` derived: the freezes of probed dims whose width follows pruning lifted, and the
    attributes that hold those widths added as fix-ups (``c`` itself is not changed). Groups
    that a number still held moves with are frozen too (:func:`_followers`)."""
    held = {k: c.frozen[k] for k in c.probes if k in c.frozen}
    if not held:
        return c
    trial = c.derive(frozen={k: v for k, v in c.frozen.items() if k not in held})
    groups = build_groups(trial)
    passed, attrs, contested = _probe_round(model, example_input, traced, c, groups, held)
    if passed is None and contested:
        # the cut copy did not run: an attribute that two cut groups claim (q/k and v/o both read
        # one head_dim) kept its old value. Once more without those groups: each other probe may pass
        passed, attrs, _ = _probe_round(model, example_input, traced, c, groups, held, contested)
    passed = passed or set()
    frozen = {k: v for k, v in c.frozen.items() if k not in passed}
    fixes = list(c.attr_fixes)
    for key in sorted(passed):  # the attributes that hold these widths follow them from now on
        for _, _, _, candidates in c.probes[key]:
            for cand in candidates:
                fix = AttrFix(cand[0], cand[1], key, index=cand[2] if len(cand) > 2 else None)
                if tuple(cand) in attrs and fix not in fixes:
                    fixes.append(fix)
    # the followers' cut copy sets those attributes too (a T5 attention reads its n_heads)
    bad = _followers(model, example_input, traced, c, groups, {k for k in held if k not in passed}, frozen,
                     tuple(fixes))
    if not passed and not bad:
        return c
    for gi in bad:
        for m in groups[gi].members:
            frozen.setdefault(m.key, _FOLLOWED)
    return c.derive(frozen=frozen, attr_fixes=tuple(fixes))


_FOLLOWED = ("its width is written as a number into a reshape or split of the exported graph whose own "
             "dims do not follow it (the number is computed from it, x.shape); capture with torch.fx, "
             "or pass ignore= for the module")


def _followers(model, example_input, traced, c: Coupling, groups, failed: set, frozen,
               fixes: tuple = ()) -> list[int]:
    """Groups that the numbers of the probes still held may be computed from: in an exported
    graph ``B, N, C = x.shape; y.reshape(B, N, C)`` writes ``x``'s width into ``y``'s dims, which
    no coupling shows. Each group that can still lose a unit and has a dim as wide as such a
    number (outside the probed dim's own group) loses one in a cut copy; where the copy fails to
    capture, or a number moves with it, those groups are frozen."""
    values = {}
    for key in failed:
        for _, _, value, _ in c.probes[key]:
            values.setdefault(value, set()).add(key)
    if not values:
        return []
    keep, suspects = [np.ones(g.n_units, dtype=bool) for g in groups], []
    for gi, g in enumerate(groups):
        free = _free_units(g, frozen)
        keys = {m.key for m in g.members}
        if g.reason is None and len(free) >= 2 and any(
                c.sizes[m.key] in values and not values[c.sizes[m.key]] <= keys and c.is_channel_like(m.key)
                for m in g.members):
            keep[gi][free[-1]] = False
            suspects.append(gi)
    if not suspects:
        return []
    width = functools.partial(kept_width, member_index(groups), c.sizes, keep=keep)
    cut = _capture_cut(model, example_input, traced, groups, keep, fixes or c.attr_fixes, {}, width)
    if cut is None:
        return suspects
    held = {k: c.frozen[k] for k in failed}
    return _followed(groups, c, suspects, _moved(c, traced, cut, held, width), width)


def _free_units(g, frozen) -> np.ndarray:
    """The units of ``g`` that no frozen member holds."""
    mask = ~g.frozen_units
    for m in g.members:
        if m.key in frozen:
            mask[m.unit_of] = False
    return np.nonzero(mask)[0]


def _moved(c: Coupling, traced, cut, held, width) -> list[tuple[DimKey, int, int | None]]:
    """``(key, number, new number)`` of each probed number that changed to something other than
    its own dim's cut width (None where the node is gone from the cut capture)."""
    nodes = {n.name: n for n in cut.graph.nodes}
    out = []
    for key in held:
        for name, pos, value, _ in c.probes[key]:
            new = _spec(nodes[name]) if name in nodes else None
            if new is None or pos >= len(new):
                out.append((key, value, None))
            elif new[pos] not in (value, width(key)):
                out.append((key, value, new[pos]))
    return out


def _followed(groups, c: Coupling, suspects: list[int], moved, width) -> list[int]:
    """The suspect groups (cut, other than the probed dim's own) that a moved number follows: a
    member as wide as the number was, cut to the number it became (any as wide, where unsure)."""
    bad: set[int] = set()
    for key, value, new in moved:
        mine = [gi for gi in suspects if not any(m.key == key for m in groups[gi].members)
                and any(c.sizes[m.key] == value and c.is_channel_like(m.key) for m in groups[gi].members)]
        exact = [gi for gi in mine if any(c.sizes[m.key] == value and width(m.key) == new
                                          for m in groups[gi].members)]
        bad.update(exact or mine)
    return sorted(bad)


def _probe_round(model, example_input, traced, c: Coupling, groups, held, skip=frozenset()):
    """One trial cut of every probed group but the ``skip`` ids, captured again: (the probed
    dims that passed, or None where the cut copy did not capture; the candidate attributes it
    set; the ids of the cut groups whose numbers an attribute two widths claim holds)."""
    keep, tested = _trial_cut(groups, held, skip)
    if not tested:
        return set(), {}, set()
    width = functools.partial(kept_width, member_index(groups), c.sizes, keep=keep)
    claims = _claims(c, held, width)
    attrs = {ma: next(iter(ws)) for ma, ws in claims.items() if len(ws) == 1}
    contested = {g.id for g in tested for m in g.members if m.key in held
                 for *_, candidates in c.probes.get(m.key, ()) for ma in candidates
                 if len(claims.get(tuple(ma), ())) > 1}
    cut = _capture_cut(model, example_input, traced, groups, keep, c.attr_fixes, attrs, width)
    if cut is None:
        return None, attrs, contested if len(contested) < len(tested) else set()
    return _passed(c, traced, cut, tested, held, width), attrs, set()


def _trial_cut(groups, held, skip=frozenset()) -> tuple[list[np.ndarray], list]:
    """A keep-mask per group that cuts every probed group (but the ``skip`` ids) to widths no
    other group has, so that an attribute holding a number two groups share shows up as claimed
    by two widths."""
    keep, tested, used = [], [], set()
    for g in groups:
        mask = np.ones(g.n_units, dtype=bool)
        probed = [m for m in g.members if m.key in held]
        free = np.nonzero(~g.frozen_units)[0]
        if g.reason is None and probed and len(free) >= 2 and g.id not in skip:
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
            for cand, value in attrs.items():
                _set_candidate(cut, cand, value)
            cut = trace(cut, to_meta(example_input) if on_meta else example_input)
        except Exception as exc:  # noqa: BLE001 - any failure keeps every probed width frozen
            log.info("surgeon: width probe failed%s (%s: %s)", " on meta" if on_meta else "",
                     type(exc).__name__, exc)
            continue
        if cut.mode == traced.mode:
            return cut
    return None


def _set_candidate(model: nn.Module, cand: tuple, value: int) -> None:
    """Set attribute ``(module, attr)`` to ``value``, or entry i of a list attribute ``(module, attr, i)``."""
    mod = model.get_submodule(cand[0])
    if len(cand) == 2:
        setattr(mod, cand[1], value)
        return
    old = getattr(mod, cand[1])
    new = [value if i == cand[2] else v for i, v in enumerate(old)]
    setattr(mod, cand[1], new if type(old) is list else tuple(new))


def _passed(c: Coupling, traced, cut, tested, held, width) -> set[DimKey]:
    """The probed dims whose every reshape wrote the cut width in the cut copy's capture."""
    nodes = {n.name: n for n in cut.graph.nodes}
    old_nodes = {n.name: n for n in traced.graph.nodes}
    probed: dict[str, set[int]] = {}
    for checks in c.probes.values():
        for name, pos, _, _ in checks:
            probed.setdefault(name, set()).add(pos)
    kept: dict[str, list[tuple[int, int]]] = {}  # node -> probed positions the trial does not move
    for k, checks in c.probes.items():
        if k in held:
            kept_at = [(name, pos, value) for name, pos, value, _ in checks if width(k) == value]
            for name, pos, value in kept_at:
                kept.setdefault(name, []).append((pos, value))
    passed = set()
    for g in tested:
        for m in g.members:
            checks = c.probes.get(m.key)
            if checks and m.key in held and all(
                    _follows(old_nodes.get(name), nodes.get(name), pos, probed[name], width(m.key))
                    and _keeps(nodes.get(name), kept.get(name, ())) for name, pos, _, _ in checks):
                passed.add(m.key)
    return passed


def _keeps(new, kept) -> bool:
    """Does the cut model's node still write each number the trial did not move?"""
    if not kept:
        return True
    spec = _spec(new) if new is not None else None
    return spec is not None and all(pos < len(spec) and spec[pos] == value for pos, value in kept)


def _claims(c: Coupling, held, width) -> dict[tuple[str, str], set[int]]:
    """Attributes to set in the cut copy: each that holds the number a probed reshape or split
    wrote, and the widths its dims have after the cut. An attribute two different widths claim
    cannot follow both, so it is left alone (and its probes fail unless the code ignores it)."""
    claims: dict[tuple[str, str], set[int]] = {}
    for key, checks in c.probes.items():
        if key not in held:
            continue
        w = width(key)
        for _, _, value, candidates in checks:
            if w == value:
                continue  # a width the trial keeps (a sequence as long as the head count) claims nothing
            for ma in candidates:
                claims.setdefault(tuple(ma), set()).add(w)
    return claims


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
    if rest and isinstance(rest[0], (list, tuple)):  # split_with_sizes(x, [16, 48], dim): entry i is position i
        rest = list(rest[0]) + rest[1:]
    return rest if all(isinstance(v, int) for v in rest) else None


# -- widths kept in int attributes that forward reads -------------------------------------------------
_MAX_TRIALS = 24


def resolve_reads(model: nn.Module, example_input: Any, traced, c: Coupling) -> Coupling:
    """``c`` derived for the plain int attributes of user modules that ``forward`` read during the
    capture (``traced.attr_reads``) and that equal a prunable width near the module, where the
    graph does not already say what they are: ``assert x.shape[1] == self.channels`` reads a
    width that no node shows.

    Each such attribute is tried, on a trial cut that gives every candidate group a width of its
    own, set to each candidate width in turn (then left as it is); the first setting under which
    the cut model captures to the same graph becomes an attribute fix-up. Where none does, the
    candidate groups are frozen with a reason that names the module and the attribute; where
    the trial cut cannot be captured at all (and so proves nothing), ``c`` is returned as it is."""
    known = {(f.module, f.attr) for f in c.attr_fixes}
    known.update(tuple(ma[:2]) for checks in c.probes.values() for _, _, _, cands in checks for ma in cands)
    reads = [(m, a, v) for m, a, v in traced.attr_reads if type(v) is int and v > 1 and (m, a) not in known]
    lists = [(m, a, v) for m, a, v in traced.attr_reads if type(v) is tuple and (m, a) not in known]
    scope = _scopes(traced, c, {m for m, _, _ in reads + lists}) if reads or lists else {}
    near = {(m, a): [k for k in scope.get(m) or c.sizes if c.sizes.get(k) == v and k not in c.frozen
                     and c.is_channel_like(k)] for m, a, v in reads}
    for m, a, v in lists:  # a list surgery does not see used: its widths may only stay as they are
        widths = {e for e in v if e > 1} | {sum(v)}
        near[(m, a)] = [k for k in scope.get(m, ()) if c.sizes.get(k) in widths and k not in c.frozen
                        and c.is_channel_like(k)]
    if not any(near.values()):  # no prunable width as wide as any attribute read: nothing to ask
        return c
    groups = build_groups(c)
    options = _read_options(groups, near)
    if not options:
        return c
    index = member_index(groups)
    keep, unclear = _read_cut(groups, options, lambda k, kp: kept_width(index, c.sizes, k, kp))
    width = functools.partial(kept_width, index, c.sizes, keep=keep)
    tried = {ma: o for ma, o in options.items() if ma not in unclear}
    fixed = {(m, a) for m, a, _ in lists}
    chosen, failed = _search(model, example_input, traced, c, groups, keep, width, tried, fixed) \
        if tried else ({}, [])
    if chosen is None:
        return c
    fixes = list(c.attr_fixes)
    fixes.extend(AttrFix(module, attr, key) for (module, attr), key in chosen.items() if key is not None)
    frozen = dict(c.frozen)
    values = {(m, a): v for m, a, v in reads + lists}
    for module, attr in list(failed) + sorted(unclear):
        why = "a trial cut cannot tell which width it follows" if (module, attr) in unclear else \
            "no width it could follow passes a trial cut"
        reason = (f"module '{module or '<root>'}' reads its attribute '{attr}' (= {values[(module, attr)]}) "
                  f"in forward, and {why}; compute the width from the tensor (x.shape[1]) or pass "
                  f"ignore=['{module}']")
        for gi, _ in options[(module, attr)]:
            for m in groups[gi].members:
                frozen.setdefault(m.key, reason)
    return c.derive(frozen=frozen, attr_fixes=tuple(fixes))


def _read_options(groups, near: dict) -> dict[tuple[str, str], list[tuple[int, DimKey]]]:
    """(module, attr) -> (group index, dim) for each dim of ``near[(module, attr)]`` in a prunable
    group that can lose a unit of it; dims whose units are the same are listed once."""
    member = {m.key: (gi, m) for gi, g in enumerate(groups) for m in g.members}
    out = {}
    for ma, keys in near.items():
        seen, opts = set(), []
        for key in keys:
            hit = member.get(key)
            if hit is None:
                continue
            gi, m = hit
            g = groups[gi]
            sig = (gi, m.unit_of.tobytes())
            if sig in seen or g.reason is not None or g.frozen_units[m.unit_of].all():
                continue
            seen.add(sig)
            opts.append((gi, key))
        if opts:
            out[ma] = sorted(opts, key=lambda o: o[0])
    return out


def _read_cut(groups, options, width_of) -> tuple[list[np.ndarray], set]:
    """A keep-mask per group that changes the width of every candidate dim, each attribute's
    candidates to widths that differ from each other (so that a trial tells them apart); and
    the attributes for which that could not be done (their groups are left uncut)."""
    member = {m.key: m for g in groups for m in g.members}
    keep = [np.ones(g.n_units, dtype=bool) for g in groups]
    for opts in options.values():
        for gi, key in opts:
            m, free = member[key], ~groups[gi].frozen_units
            for u in dict.fromkeys(m.unit_of[::-1].tolist()):
                w = width_of(key, keep)
                if w < len(m.unit_of) and w not in {width_of(k, keep) for _, k in opts if k != key}:
                    break
                if w <= 1 or keep[gi].sum() <= 1:
                    break
                if free[u]:
                    keep[gi][u] = False
    unclear: set = set()
    while True:  # leaving a group uncut can make another attribute's trial unclear in turn
        more = {ma for ma, opts in options.items() if ma not in unclear and not _distinct(opts, keep, member, width_of)}
        if not more:
            return keep, unclear
        unclear |= more
        for ma in more:
            for gi, _ in options[ma]:
                keep[gi][:] = True


def _distinct(opts, keep, member, width_of) -> bool:
    ws = [width_of(k, keep) for _, k in opts]
    return len(set(ws)) == len(ws) and all(0 < w < len(member[k].unit_of) for w, (_, k) in zip(ws, opts))


def _scopes(traced, c: Coupling, paths: set[str]) -> dict[str, list[DimKey]]:
    """Module path (of ``paths``) -> the dims of the values computed inside it, of the values
    they read, and of the parameters under it."""
    out: dict[str, list[DimKey]] = {}
    for n in traced.graph.nodes:
        inside = {v[0] if isinstance(v, tuple) else k for k, v in (n.meta.get("nn_module_stack") or {}).items()}
        if n.op == "call_module":
            inside.add(str(n.target))
        inside &= paths
        if not inside:
            continue
        dims = [("v", node.name, d) for node in [n, *n.all_input_nodes]
                for d in range(len(traced.shape(node) or ()))]
        for p in inside:
            out.setdefault(p, []).extend(dims)
    for name, t in traced.tensors().items():
        for p in paths:
            if p == "" or name.startswith(p + "."):
                out.setdefault(p, []).extend(("p", name, d) for d in range(t.dim()))
    return out


def _search(model, example_input, traced, c, groups, keep, width, options, fixed=frozenset()):
    """Try settings of the attributes on the trial cut until one captures to the same graph.
    Returns ({(module, attr): dim or None (left as it is)}, [(module, attr) nothing fits]), or
    (None, []) where the trial cut proves nothing (it fails somewhere no attribute under test
    lives). An attribute that nothing fits is left as it is and its groups are not cut again."""
    names = list(options)
    # index into [None] + options: left as it is first, so that a number no shape depends on
    # (T5's model_dim, a scale factor as wide as its heads by chance) is not taken for a width
    idx = {ma: 0 for ma in names}
    failed: list = []
    where = {"meta": True}
    keep = list(keep)
    for _ in range(min(_MAX_TRIALS, 2 + sum(len(o) + 1 for o in options.values()))):
        setting = {ma: (options[ma][idx[ma] - 1][1] if idx[ma] else None) for ma in names}
        ok, stack = _trial(model, example_input, traced, c, groups, keep, width, setting, where)
        if ok:
            return {ma: k for ma, k in setting.items() if ma not in failed}, failed
        culprits = [ma for p in reversed(stack) for ma in names if ma[0] == p and ma not in failed]
        if not culprits:
            return None, []
        ma = culprits[0]
        idx[ma] += 1
        if idx[ma] > len(options[ma]) or ma in fixed:  # nothing fits (a list: only as it is): kept whole
            failed.append(ma)
            idx[ma] = 0
            for gi, _ in options[ma]:
                keep[gi] = np.ones_like(keep[gi])
            width = functools.partial(width.func, *width.args, **{**width.keywords, "keep": keep})
    return {}, names  # out of trials: every attribute under test keeps its groups whole


def _trial(model, example_input, traced, c, groups, keep, width, setting, where: dict) -> tuple[bool, list[str]]:
    """Capture the trial cut with the attributes of ``setting`` set to their dims' cut widths
    (None: left as it is); (same graph as the original, the failing module stack). The cut is
    made on the meta device while that captures (``where["meta"]``), else on a real copy."""
    slices, _ = slices_for(groups, keep, lambda name: tuple(traced.tensor(name).shape))
    updates = attr_updates(model, c.attr_fixes, width)
    stack: list[str] = []
    for on_meta in (True, False) if where["meta"] else (False,):
        try:
            source = meta_copy(model) if on_meta else model
            cut = slice_model(source, slices, updates, inplace=on_meta)
            for (module, attr), key in setting.items():
                if key is not None:
                    setattr(cut.get_submodule(module), attr, width(key))
            got, stack = try_trace(cut, to_meta(example_input) if on_meta else example_input)
        except Exception as exc:  # noqa: BLE001 - a cut that cannot be made proves nothing
            log.info("surgeon: attribute trial failed (%s: %s)", type(exc).__name__, exc)
            continue
        if got is not None:
            where["meta"] = on_meta  # a real copy captured what meta could not: stay on real ones
            return _same_graph(traced, got), []
    return False, stack


def _same_graph(traced, got) -> bool:
    """The same capture mode and the same ops in the same order (sizes may differ)."""
    if got.mode != traced.mode:
        return False
    a = [(n.op, n.target) for n in traced.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    b = [(n.op, n.target) for n in got.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    return a == b
