"""Hugging Face models: keep the config true to the pruned weights, so ``from_pretrained`` works.

A Hugging Face model is rebuilt from its config when it is loaded, so a pruned model reloads
only if its config describes every pruned width. Which widths a config can describe is learnt
from the model class itself, not from a table of architectures: the class is instantiated on
the meta device (no memory, no weights) with each integer field of the config (and each entry
of a per-stage list of widths, ``hidden_sizes[1]``, each float ratio of widths, ``mlp_ratio``,
and the same in nested sub-configs, ``vision_config.hidden_size``) changed in turn, and the
parameter dims that change form that field's *footprint*, with the linear relation
``dim = a * value + b`` between them (``q_proj`` rows = ``head_dim`` x ``num_attention_heads``).
A cut is written back as the field values its widths solve: alone where one field sizes a dim,
together where a dim is a product of several (:mod:`surgeon.analysis.hf_products`), and as
fewer heads, never narrower ones, where ``heads x head_dim`` cannot tell them apart.

A pruning group the config can express has all its dims in footprints whose other dims lie in
groups pruned in step with it (the same MLP width in every layer: ``intermediate_size``). Those
groups form a *bundle* that the planner keeps uniform. Bundles the config cannot express alone
but can together (BERT's heads with head_dim residual channels, since ``head_dim`` is
``hidden_size / num_attention_heads``; T5's encoder and decoder FFNs, both ``d_ff``) form a
*joint bundle* (:mod:`surgeon.analysis.hf_joint`). What no bundle can say is kept whole with
that reason, unless ``uniform=False``; so is a width whose field also sets a value that
``from_pretrained`` recomputes (:mod:`surgeon.analysis.hf_values`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .hf_layers import check_layer_drops, layer_fields, layer_updates
from .hf_joint import join
from .hf_products import MIXED, ratio_up, solve_products
from .hf_values import value_fields

__all__ = ["ConfigModel", "config_model", "constrain", "config_updates", "check_config"]

_SKIP = re.compile(r"token_id|_id$|^chunk_size|^num_labels$|^pretraining_tp$")
_WIDTHY = re.compile(r"inner|intermediate|hidden|dim|size|ffn|embd|embed|heads?$")
_RATIO = re.compile(r"_ratio$|_multiplier$|^width_coefficient$")  # float fields that scale widths


@dataclass
class ConfigModel:
    """What each integer config field sizes: ``footprint[field][(param, dim)] = (a, b)``."""

    model_class: type
    config: Any
    footprint: dict[str, dict[tuple[str, int], tuple[int, int]]] = field(default_factory=dict)
    materialized: dict[str, int] = field(default_factory=dict)  # fields HF left None, made explicit
    layer_fields: dict[str, str] = field(default_factory=dict)  # count field -> its ModuleList
    # head counts no width shows (head_dim = hidden_size / num_attention_heads): field -> the group
    # whose kept units it counts, set by a joint bundle (see :mod:`surgeon.analysis.hf_joint`)
    unit_fields: dict[str, int] = field(default_factory=dict)
    # width fields that also set a non-persistent buffer's value (Gemma: sqrt(hidden_size)) -> it
    value_fields: dict[str, str] = field(default_factory=dict)
    # dims a field divides (narrower as it grows: OLMo's k_proj is kv_heads * hidden // heads):
    # field -> those dims, which products solve with the field's new value where a joint sets it
    divides: dict[str, set] = field(default_factory=dict)


def _is_config(obj: Any) -> bool:
    return any(k.__name__.lower() == "pretrainedconfig" for k in type(obj).__mro__)


def _shapes(cls: type, cfg: Any) -> dict[str, tuple[int, ...]] | None:
    try:
        with torch.device("meta"):
            m = cls(cfg)
    except Exception:  # noqa: BLE001 - a value the class rejects tells us nothing
        return None
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


# one entry of a per-stage list, "hidden_sizes[1]", of a sub-config too: "backbone_config.hidden_sizes[1]"
_ELEM = re.compile(r"^([\w.]+)\[(\d+)\]$")


def _owner(cfg: Any, name: str) -> tuple[Any, str]:
    """The (sub-)config that holds field ``name`` (``vision_config.hidden_size``) and its own name."""
    *path, last = name.split(".")
    for part in path:
        cfg = getattr(cfg, part)
    return cfg, last


def _get(cfg: Any, f: str) -> Any:
    m = _ELEM.match(f)
    owner, name = _owner(cfg, m.group(1) if m else f)
    return getattr(owner, name)[int(m.group(2))] if m else getattr(owner, name)


def _with(cfg: Any, **values) -> Any:
    """A copy of ``cfg`` with ``values`` set; a key ``name[i]`` sets entry i of the list ``name``,
    a key ``sub_config.name`` a field of a nested config (``vision_config``, ``backbone_config``)."""
    new = copy.deepcopy(cfg)
    for k, v in values.items():
        m = _ELEM.match(k)
        owner, name = _owner(new, m.group(1) if m else k)
        if m:
            old = getattr(owner, name)
            entries = list(old)
            entries[int(m.group(2))] = v
            v = type(old)(entries)
        setattr(owner, name, v)
    return new


def _width_fields(cfg: Any, raw: dict, materialized: dict) -> list[tuple[str, int | float]]:
    """Every int field, every entry of a per-stage list of widths (``hidden_sizes[0]``), every
    float ratio of widths (``mlp_ratio``: the MLP is ``int(mlp_ratio * dim)`` wide), and the same
    in nested sub-configs (``vision_config.hidden_size``, ``backbone_config.hidden_sizes[1]``)."""
    out = [(k, v) for k, v in {**raw, **materialized}.items() if type(v) is int and v >= 1 and not _SKIP.search(k)]
    for k in raw:
        sub = getattr(cfg, k, None)
        if _is_config(sub):
            out.extend((f"{k}.{f}", v) for f, v in _width_fields(sub, sub.to_dict(), {}))
    for k, v in raw.items():
        if isinstance(v, (list, tuple)) and v and _WIDTHY.search(k) and not _SKIP.search(k) \
                and all(type(x) is int and x >= 1 for x in v):
            out.extend((f"{k}[{i}]", x) for i, x in enumerate(v))
    out.extend((k, v) for k, v in raw.items() if type(v) is float and v >= 1 and _RATIO.search(k))
    return out


def config_model(model: nn.Module) -> ConfigModel | None:
    """The config footprints of a Hugging Face model, or None for other models (and for HF
    models whose weights no longer match what their config builds)."""
    cfg = getattr(model, "config", None)
    if cfg is None or not _is_config(cfg):
        return None
    cls = type(model)
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if _shapes(cls, cfg) != actual:
        return None
    cm = ConfigModel(cls, cfg)
    raw = cfg.to_dict()
    sizes = sorted({s for shape in actual.values() for s in shape if s > 1})
    # widths HF derives when a field is None (GPT-2's n_inner = 4 n_embd): find the explicit
    # value that builds the same model and that does change it when moved
    for k, v in raw.items():
        if v is None and _WIDTHY.search(k) and not _SKIP.search(k):
            for s in sizes:
                if _shapes(cls, _with(cfg, **{k: s})) == actual and \
                        _shapes(cls, _with(cfg, **{k: s * 2})) not in (None, actual):
                    cm.materialized[k] = s
                    break
    base = _with(cfg, **cm.materialized)
    for k, v in _width_fields(cfg, raw, cm.materialized):
        moved = _shapes(cls, _with(base, **{k: 2 * v}))
        if moved is None:
            continue
        if moved.keys() != actual.keys():  # a count of layers rather than a width
            if _ELEM.match(k) or "." in k:  # layer counts of sub-configs are not dropped
                continue
            boxes = {m.group(1) for n in moved.keys() - actual.keys() if (m := _ITEM.match(n))}
            if len(boxes) == 1 and actual.keys() <= moved.keys():
                cm.layer_fields[k] = boxes.pop()
            continue
        fp = {}
        for name, shape in actual.items():
            for d, (s0, s1) in enumerate(zip(shape, moved[name])):
                if s0 != s1:
                    a = (s1 - s0) // v if type(v) is int else (s1 - s0) / v
                    if a < 0:  # narrower as the field grows: a width divided by it, which no line
                        cm.divides.setdefault(k, set()).add((name, d))  # through two points describes
                        continue
                    fp[(name, d)] = (a, s0 - a * v)
        if fp:
            cm.footprint[k] = fp
    cm.value_fields = value_fields(cls, base, [(k, _with(base, **{k: 2 * _get(base, k)})) for k in cm.footprint])
    cm.layer_fields.update(layer_fields(cls, base, actual, {**cm.footprint, **cm.layer_fields}))
    return cm


def constrain(a, cm: ConfigModel) -> tuple[tuple, tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...],
                                             ConfigModel]:
    """New groups, where every group whose pruning the config cannot express is kept whole; the
    bundles (tuples of group indices) that lose units in step; the units each group of a bundle
    loses per step (empty when every bundle loses one unit of each group per step); and the
    config model with the head-count fields joint bundles found.

    Groups are bundled when they are the same group of repeated layers (their tensor names
    equal up to layer numbers). A bundle is tried for real: one unit is cut from each of its
    groups, the config fields are solved for the cut widths, and the class is built from that
    config on the meta device; unless it builds exactly the cut shapes, the bundle is kept,
    unless it joins other such bundles that one config field also sizes
    (:func:`surgeon.analysis.hf_joint.join`: BERT's heads with its hidden size)."""
    groups = list(a.groups)
    by_sig: dict[tuple, list[int]] = {}
    boxes = set(cm.layer_fields.values())
    for gi, g in enumerate(groups):
        if g.prunable and g.layers:
            if g.where[0] not in boxes:
                groups[gi] = replace(g, reason="the Hugging Face config has no layer count for this "
                                               "ModuleList; pass uniform=False to drop its layers anyway")
            else:
                groups[gi] = check_layer_drops(cm, a.model, g)
            continue
        if g.prunable:
            sig = (g.n_units, tuple(sorted((_LAYER.sub(".#.", m.name), m.dim) for m in g.tensors)))
            by_sig.setdefault(sig, []).append(gi)
    out, failing = [], []
    for members in by_sig.values():
        step, why = _smallest_step(a, cm, groups, members)
        if why is None:
            for gi in members:
                groups[gi] = replace(groups[gi], step=step)
            out.append(tuple(members))
        else:
            failing.append((members, why))
    joints, cm = join(a, cm, groups, failing, _expresses)
    units = [(1,) * len(b) for b in out]
    joined = set()
    for bundle, per_step in joints:
        joined.update(bundle)
        out.append(bundle)
        units.append(per_step)
    for members, why in failing:
        for gi in members:
            if gi not in joined:
                groups[gi] = replace(groups[gi], reason=f"the Hugging Face config cannot express this width "
                                                        f"({why}); pass uniform=False to prune it anyway")
    return tuple(groups), tuple(out), (tuple(units) if joints else ()), cm


def _smallest_step(a, cm: ConfigModel, groups, members: list[int]) -> tuple[int, str | None]:
    """The smallest cut of every group of a bundle the config accepts (Llama's config wants
    hidden_size to be a multiple of num_attention_heads: widths then move in steps of it), and
    why none does, if none does."""
    n_free = min(int((~groups[gi].frozen_units).sum()) for gi in members)
    why = "no unit can go"
    last = min(n_free, 65) - 1
    for step in range(1, last + 1):
        keep = _cut(a, groups, members, step)
        why = _expresses(a, cm, keep)
        if why is None:
            return step, None
        if step == 1 and last > 1 and _never(a, cm, groups, members, keep):
            return 1, _expresses(a, cm, _cut(a, groups, members, last))  # the reason the last step gives
    return 1, why


def _cut(a, groups, members: list[int], step: int) -> list:
    keep = a.full_keep()
    for gi in members:
        free = (~groups[gi].frozen_units).nonzero()[0]
        keep[gi][free[-step:]] = False
    return keep


def _never(a, cm: ConfigModel, groups, members: list[int], keep) -> bool:
    """Whether no step can work: a field sizes a dim the cut changes and a dim outside the
    bundle, which no cut of it changes, so the field has two values whatever the step."""
    inside = {(m.name, m.dim) for gi in members for m in groups[gi].tensors}
    shapes = {k: t.shape for k, t in a.model.state_dict().items()}
    for fp in cm.footprint.values():
        if all(key in inside for key in fp):
            continue
        for name, dim in fp:
            key = ("p", name, dim)
            if (name, dim) in inside and key in a.coupling.sizes and a.kept_width(key, keep) != shapes[name][dim]:
                return True
    return False


_LAYER = re.compile(r"\.\d+\.")
_HEAD_COUNT = re.compile(r"(^|_)(n_)?heads?$|^n_head$")  # num_attention_heads, num_key_value_heads, n_head
_ITEM = re.compile(r"^(.*?)\.\d+\.")


def _expresses(a, cm: ConfigModel, keep) -> str | None:
    updates = {f: new for f, _, new in config_updates(a, cm, keep)}
    problem = invalid(cm.config, updates)
    if problem:
        return problem
    for f, buffer in cm.value_fields.items():
        name = _ELEM.sub(r"\1", f)
        if name in updates and updates[name] != _get(cm.config, name):
            return f"'{f}' also sets the value of '{buffer}', which from_pretrained would compute anew"
    built = _shapes(cm.model_class, _with(cm.config, **updates))
    want = {}
    for name, t in a.model.state_dict().items():
        want[name] = tuple(a.kept_width(("p", name, d), keep) if ("p", name, d) in a.coupling.sizes
                           else s for d, s in enumerate(t.shape))
    if built == want:
        return None
    if built is None:
        return "no config describes the cut widths"
    name = next(k for k in want if built.get(k) != want[k])
    return f"the closest config builds '{name}' as {built.get(name)}, the cut model has {want[name]}"


def invalid(cfg: Any, updates: dict) -> str | None:
    """Why the config with ``updates`` fails its own validation (``save_pretrained`` runs it)."""
    check = getattr(_with(cfg, **updates), "validate", None)
    if check is None:
        return None
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - the config's own words are the reason
        return f"the config rejects it: {str(exc).strip().splitlines()[-1][:200]}"
    return None


def config_updates(a, cm: ConfigModel, keep) -> list[tuple[str, Any, Any]]:
    """``(field, old, new)`` for every config field whose width the keep-masks change."""
    out = {k: (k, None, v) for k, v in cm.materialized.items()}
    for f, gi in cm.unit_fields.items():  # head counts: the kept units of their group
        old, new = int(_get(cm.config, f)), int(keep[gi].sum())
        if new != old:
            out[f] = (f, old, new)
    shapes = {k: t.shape for k, t in a.model.state_dict().items()}
    widths = {}
    for fp in cm.footprint.values():
        for name, dim in fp:
            key = ("p", name, dim)
            widths[(name, dim)] = (shapes[name][dim], a.kept_width(key, keep) if key in a.coupling.sizes
                                   else shapes[name][dim])
    olds = {f: _get(cm.config, f) if _get(cm.config, f) is not None else cm.materialized[f] for f in cm.footprint}
    solved = {f: _solve(cm, f, widths) for f in cm.footprint}
    known = {f: int(keep[gi].sum()) / int(_get(cm.config, f)) for f, gi in cm.unit_fields.items()}
    solved.update(solve_products(cm, widths, olds, known))  # widths that are products of several fields
    for f in _per_head(cm, solved):
        solved[f] = None  # the head counts explain its dims: head_dim stays
    for f, new in solved.items():
        if new is not None and new is not MIXED and new != olds[f]:
            out[f] = (f, out[f][1] if f in out else olds[f], new)
    out.update((u[0], u) for u in layer_updates(cm, a.groups, keep))  # dropped layers: count, per-layer lists
    return _merged(cm.config, out)


def _solve(cm: ConfigModel, f: str, widths: dict) -> Any:
    """The value of field ``f`` that every dim of its footprint agrees on after the cut; None if
    there is no such int (or float, for a ratio field), ``MIXED`` if its dims disagree."""
    values = set()
    for key, (k, b) in cm.footprint[f].items():
        values.add((widths[key][1] - b) / k if k else None)
    if len(values) != 1:
        return MIXED
    (new,) = values
    if new is None:
        return None
    if type(_get(cm.config, f)) is float:
        return ratio_up(new, [(k, widths[key][1] - b) for key, (k, b) in cm.footprint[f].items()])
    return int(new) if new == int(new) else None


def _per_head(cm: ConfigModel, solved: dict) -> list[str]:
    """Per-head width fields (Llama's ``head_dim``, T5's ``d_kv``) whose every dim is a product
    with a head count that the cut widths solve: a width ``heads x head_dim`` that shrinks is
    fewer heads, not narrower ones, so the per-head field keeps its value (both fields alone
    would explain the new width, and moving both would count the cut twice)."""
    counts = [f for f in cm.footprint if _HEAD_COUNT.search(_ELEM.sub(r"\1", f)) and solved[f] is not None]
    covered = {key for f in counts for key in cm.footprint[f]}
    return [f for f, fp in cm.footprint.items()
            if f not in counts and not _HEAD_COUNT.search(_ELEM.sub(r"\1", f)) and fp.keys() <= covered]


def _merged(cfg: Any, out: dict) -> list[tuple[str, Any, Any]]:
    """The updates with the entries of one per-stage list (``hidden_sizes[1]``) as one list update."""
    if not any(_ELEM.match(f) for f in out):
        return list(out.values())
    merged: dict[str, tuple[str, Any, Any]] = {}
    for f, (_, old, new) in out.items():
        m = _ELEM.match(f)
        if not m:
            merged[f] = (f, old, new)
            continue
        name = m.group(1)
        entries = list(merged[name][2]) if name in merged else list(_get(cfg, name))
        entries[int(m.group(2))] = new
        merged[name] = (name, list(_get(cfg, name)), entries)
    return list(merged.values())


def check_config(model: nn.Module) -> str | None:
    """None when ``type(model)(model.config)`` builds exactly ``model``'s shapes, else what differs."""
    cfg = getattr(model, "config", None)
    if cfg is None or not _is_config(cfg):
        return None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = _shapes(type(model), cfg)
    if got == want:
        return None
    if got is None:
        return "the config no longer builds a model"
    diff = [k for k in want if got.get(k) != want[k]]
    return (f"{len(diff)} tensors differ from what the config builds, e.g. '{diff[0]}': "
            f"{want[diff[0]]} vs {got.get(diff[0])}")
