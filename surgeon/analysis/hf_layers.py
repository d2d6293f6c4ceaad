"""Hugging Face configs that count layers: what dropping whole decoder layers must rewrite.

A config that builds ``num_hidden_layers`` layers often describes each of them too: a per-layer
list as long as the layer count (``layer_types``: which layers use sliding-window attention,
Gemma2's alternation, Qwen2's ``max_window_layers`` written out), a list of layer *indices*
(Qwen2-MoE's ``mlp_only_layers``) or a threshold index (``max_window_layers``: layers from
there on slide). Dropping layers keeps each survivor's entry and renumbers the indices, so that
``from_pretrained`` builds every surviving layer as it was (the same attention type, the same
MLP kind) and the KV cache, built from ``layer_types``, has one slot per surviving layer
(surgery renumbers the ``layer_idx`` attributes the cache is indexed by).

Which field counts the layers is learnt from the class, as :mod:`surgeon.analysis.hf` learns
widths: the field is doubled, together with every per-layer list (so a class that validates
``len(layer_types) == num_hidden_layers`` still builds), and a field whose doubling adds the
parameters of new items of one ``ModuleList`` counts that list's layers.

A drop the config cannot say (a layer pattern written as a rule, like Qwen2-MoE's
``decoder_sparse_step``, shifts under the survivors) is found before planning: for each kind of
layer (its parameter shapes and its per-layer config entries), dropping the first one is built
on the meta device from the rewritten config, and kinds whose drop does not rebuild the same
shapes are kept, with that reason.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import numpy as np
import torch

__all__ = ["layer_fields", "layer_updates", "check_layer_drops"]

_SKIP = re.compile(r"token_id|_id$")  # token ids are no layer counts or layer indices
# int fields that are layer indices: layers from this one on are built differently
_THRESHOLDS = ("max_window_layers",)
_ITEM = re.compile(r"^(.*?)\.(\d+)\.(.*)$")


def _built(cls: type, cfg: Any, **values) -> dict | None:
    """The state-dict shapes ``cls`` builds, on the meta device, from ``cfg`` with ``values``
    (None if the class or the config's own validation rejects them)."""
    new = copy.deepcopy(cfg)
    for k, v in values.items():
        setattr(new, k, v)
    try:
        check = getattr(new, "validate", None)
        if check is not None:
            check()
        with torch.device("meta"):
            m = cls(new)
    except Exception:  # noqa: BLE001 - a config the class rejects says only that
        return None
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _per_layer(raw: dict, n: int, skip: str) -> dict[str, list]:
    """The lists of a config as long as its layer count ``n`` (one entry per layer)."""
    return {k: v for k, v in raw.items() if isinstance(v, list) and len(v) == n and k != skip}


def layer_fields(cls: type, cfg: Any, actual: dict, known: dict) -> dict[str, str]:
    """``{count field: its ModuleList}`` for the layer counts that doubling alone could not
    build (the class checks its per-layer lists against the count); ``known`` are found already."""
    raw = cfg.to_dict()
    out = {}
    for k, v in raw.items():
        if k in known or type(v) is not int or v < 2 or _SKIP.search(k):
            continue
        lists = _per_layer(raw, v, k)
        if not lists:
            continue
        moved = _built(cls, cfg, **{k: 2 * v}, **{f: x + x for f, x in lists.items()})
        if moved is None or not actual.keys() < moved.keys():
            continue
        boxes = {m.group(1) for n in moved.keys() - actual.keys() if (m := _ITEM.match(n))}
        if len(boxes) == 1:
            out[k] = boxes.pop()
    return out


def _kept_layers(cm, groups, keep, field: str) -> list[bool]:
    box = cm.layer_fields[field]
    kept = [True] * int(getattr(cm.config, field))
    for gi, g in enumerate(groups):
        if g.layers and g.where[0] == box:
            for u, name in enumerate(g.layers):
                kept[int(name.rpartition(".")[2])] = bool(keep[gi][u])
    return kept


def _rewrite(raw: dict, field: str, kept: list[bool]) -> dict[str, tuple[Any, Any]]:
    """``{field: (old, new)}`` for the count, the per-layer lists, index lists and thresholds."""
    n = len(kept)
    new_index = np.cumsum(kept) - 1  # the survivor's new number
    out: dict[str, tuple[Any, Any]] = {field: (n, sum(kept))}
    for k, v in raw.items():
        if k == field or _SKIP.search(k):
            continue
        if isinstance(v, list) and len(v) == n:  # one entry per layer
            out[k] = (list(v), [x for x, on in zip(v, kept) if on])
        elif isinstance(v, list) and v and all(type(i) is int and 0 <= i < n for i in v) \
                and len(set(v)) == len(v):  # layer indices (mlp_only_layers)
            out[k] = (list(v), [int(new_index[i]) for i in v if kept[i]])
        elif k in _THRESHOLDS and type(v) is int and 0 <= v < n:
            out[k] = (v, int(sum(kept[:v])))
    return {k: ov for k, ov in out.items() if ov[0] != ov[1]}


def layer_updates(cm, groups, keep) -> list[tuple[str, Any, Any]]:
    """``(field, old, new)`` for every config field that dropping the layers ``keep`` leaves out
    changes (the layer count, per-layer lists, layer indices)."""
    raw = cm.config.to_dict()
    out: dict[str, tuple[str, Any, Any]] = {}
    for f in cm.layer_fields:
        kept = _kept_layers(cm, groups, keep, f)
        if not all(kept):
            out.update({k: (k, old, new) for k, (old, new) in _rewrite(raw, f, kept).items()})
    return list(out.values())


def _renumbered(shapes: dict, box: str, kept: list[bool]) -> dict:
    """The state-dict shapes with the dropped items of ``box`` gone and the rest renumbered."""
    new_index = np.cumsum(kept) - 1
    out = {}
    for name, shape in shapes.items():
        item, _, rest = name[len(box) + 1:].partition(".") if name.startswith(box + ".") else ("", "", "")
        if item.isdigit() and int(item) < len(kept):
            if kept[int(item)]:
                out[f"{box}.{new_index[int(item)]}.{rest}"] = shape
        else:
            out[name] = shape
    return out


def _kind(shapes: dict, box: str, index: int, per_layer: dict) -> tuple:
    """What makes layer ``index`` of ``box`` built the way it is: its parameter shapes (by
    name within the layer) and its entries in the per-layer config lists."""
    prefix = f"{box}.{index}."
    params = tuple(sorted((n[len(prefix):], s) for n, s in shapes.items() if n.startswith(prefix)))
    return params, tuple(sorted((k, repr(v[index])) for k, v in per_layer.items()))


def check_layer_drops(cm, model, group):
    """``group`` (a layer group of ``model``'s config-counted ``ModuleList``) with the layers
    whose drop its config cannot express frozen (the whole group kept, with the reason, if none
    can go). One meta-device build per kind of layer."""
    field = next((f for f, box in cm.layer_fields.items() if box == group.where[0]), None)
    if field is None:
        return group
    raw = cm.config.to_dict()
    n = int(raw[field])
    per_layer = _per_layer(raw, n, field)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    index = [int(name.rpartition(".")[2]) for name in group.layers]
    bad, why, tried = set(), None, {}
    for u, i in enumerate(index):
        kind = _kind(shapes, group.where[0], i, per_layer)
        if kind not in tried:  # the first of its kind: every later layer shifts down by one
            kept = [j != i for j in range(n)]
            updates = {k: new for k, (_, new) in _rewrite(raw, field, kept).items()}
            built = _built(cm.model_class, cm.config, **updates)
            tried[kind] = built == _renumbered(shapes, group.where[0], kept)
            if not tried[kind] and why is None:
                why = (f"dropping '{group.layers[u]}', " + ("the config rejects the rewritten fields" if built is None
                       else "the config would build other layers than remain"))
        if not tried[kind]:
            bad.add(u)
    if not bad:
        return group
    frozen = group.frozen_units.copy()
    frozen[sorted(bad)] = True
    reason = (f"the Hugging Face config cannot express dropping these layers ({why}); pass uniform=False "
              "to drop them anyway") if frozen.all() else group.reason
    return dataclasses.replace(group, frozen_units=frozen, reason=reason)
