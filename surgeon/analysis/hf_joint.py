"""Joint bundles: widths one Hugging Face config field sizes together, pruned together.

Some widths cannot move alone in a config, only together. Where ``head_dim`` is implied
(``hidden_size / num_attention_heads``: ViT, the BERT family, GPT-2, GPT-NeoX, Phi), a head
cannot go without ``head_dim`` channels of the residual width, and the residual width cannot
shrink without heads; where one field sizes a width in several places (T5's ``d_ff`` for the
encoder's and the decoder's feed-forward layers, its ``num_heads`` for self- and
cross-attention), each place alone is "not expressible". Both are found the same way, without a
table of architectures: bundles the config cannot express alone are linked when a config field's
footprint holds dims of both, and each linked set is tried as one *joint bundle* that loses, per
step, units in proportion to its bundles' widths (1 head of every layer and ``head_dim``
residual channels: ``hidden_size`` and ``num_attention_heads`` keep their exact ratio). A head
count that no width shows (``num_attention_heads`` when ``head_dim`` is implied: no shape
changes with it) is set to the kept heads of the joint's head bundle, and the cut is checked,
as every bundle is, by building the class from the new config on the meta device.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from itertools import combinations

__all__ = ["join"]

_HEADS = re.compile(r"(^|_)(n_)?heads?$|num_(attention_)?heads$|^n_head$")
MAX_TRIES = 24  # candidate joints tried per model (each a meta build)


def _fields(cm, groups, bundle: list[int]) -> set[str]:
    dims = {(m.name, m.dim) for gi in bundle for m in groups[gi].tensors}
    return {f for f, fp in cm.footprint.items() if not dims.isdisjoint(fp)}


def _linked(cm, groups, failing) -> list[list[int]]:
    """Indices into ``failing``, linked when one config field's footprint touches both."""
    fields = [_fields(cm, groups, members) for members, _ in failing]
    parent = list(range(len(failing)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in combinations(range(len(failing)), 2):
        if fields[i] & fields[j]:
            parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(len(failing)):
        comps.setdefault(find(i), []).append(i)
    return [c for c in comps.values() if len(c) > 1]


def _unit_fields(cm, groups, bundles: list[list[int]]) -> dict[str, int]:
    """Head-count fields no width shows, each mapped to the first group of the head bundle of
    its value (a field in a footprint is solved from the widths instead)."""
    out = {}
    for f, v in _int_fields(cm.config):
        if f in cm.footprint or not _HEADS.search(f):
            continue
        for b in bundles:
            g = groups[b[0]]
            if g.kind.value == "head" and g.n_units == v:
                out[f] = b[0]
                break
    return out


def _int_fields(cfg, prefix: str = "") -> list[tuple[str, int]]:
    """The int fields of ``cfg`` and of its nested sub-configs (``vision_config.num_attention_heads``)."""
    out = []
    for k, v in cfg.to_dict().items():
        sub = getattr(cfg, k, None)
        if any(t.__name__.lower() == "pretrainedconfig" for t in type(sub).__mro__):
            out.extend(_int_fields(sub, f"{prefix}{k}."))
        elif type(v) is int:
            out.append((prefix + k, v))
    return out


def _try(a, cm, groups, bundles: list[list[int]], expresses):
    """The joint bundle of ``bundles`` and its config model, or None if the config cannot say it."""
    widths = [groups[b[0]].n_units for b in bundles]
    if any(groups[gi].n_units != w for b, w in zip(bundles, widths) for gi in b):
        return None
    g = math.gcd(*widths)
    per = [w // g for w in widths]
    keep = a.full_keep()
    for b, m in zip(bundles, per):
        for gi in b:
            free = (~groups[gi].frozen_units).nonzero()[0]
            if len(free) <= m or len(free) < groups[gi].n_units // 2:
                return None
            keep[gi][free[-m:]] = False
    cm2 = replace(cm, unit_fields=_unit_fields(cm, groups, bundles))
    if expresses(a, cm2, keep) is not None:
        return None
    flat = tuple(gi for b in bundles for gi in b)
    steps = tuple(m for b, m in zip(bundles, per) for _ in b)
    return (flat, steps), cm2


def _split(a, cm, groups, failing, comp: list[int], expresses) -> list | None:
    """Two joint bundles that together cover ``comp`` more finely than one: the bundles one
    field sizes (Swin's MLPs, all ``mlp_ratio``) and the rest (its heads with the residual
    width, ``embed_dim``), or None when no such split is expressible."""
    fields = [_fields(cm, groups, failing[i][0]) for i in comp]
    tried = set()
    for f in sorted(set().union(*fields)):
        part = tuple(i for i, fs in zip(comp, fields) if f in fs)
        rest = [i for i in comp if i not in part]
        if len(part) < 2 or len(rest) < 2 or part in tried:
            continue
        tried.add(part)
        first = _try(a, cm, groups, [failing[i][0] for i in part], expresses)
        second = first and _try(a, cm, groups, [failing[i][0] for i in rest], expresses)
        if second:
            return [first, second]
    return None


def join(a, cm, groups, failing: list[tuple[list[int], str]], expresses):
    """Joint bundles among the ``failing`` bundles (``(group indices, why)`` each): a list of
    ``(groups, units per step of each)`` and the config model with their head-count fields.
    ``expresses(a, cm, keep)`` says why the config cannot describe a cut (None if it can)."""
    out, tries, used = [], 0, set()
    unit_fields = dict(cm.unit_fields)
    for comp in _linked(cm, groups, failing):
        split = _split(a, cm, groups, failing, comp, expresses)
        tries += 2 if split else 0
        for got in split or ():
            out.append(got[0])
            unit_fields.update(got[1].unit_fields)
            used.update(comp)
        candidates = [comp] + ([list(p) for p in combinations(comp, 2)] if len(comp) > 2 else [])
        for cand in candidates:
            if tries >= MAX_TRIES or used.intersection(cand):
                continue
            tries += 1
            got = _try(a, cm, groups, [failing[i][0] for i in cand], expresses)
            if got is not None:
                out.append(got[0])
                unit_fields.update(got[1].unit_fields)
                used.update(cand)
    return out, replace(cm, unit_fields=unit_fields)
