"""What the page opens on: capture machinery set aside, and ops folded by module hierarchy.

*Capture machinery* is what a capture adds that is not the model's computation: torch.export's
checks (``_assert_tensor_metadata``, ``_guards_fn``), size arithmetic (``sym_size``, ``x.size(1)``
and the Python ints computed from it), device moves (``to.device``), and, where the capture
records dtypes, ops that make integer or boolean tensors (``arange`` positions, mask building).
It is decided by op kind and value type, never by model, and never hides an op a prunable group
touches. The page hides it unless asked; edges through hidden ops are drawn as bridges.

*Folds* are module paths. :func:`folds` lists every module path holding two or more drawn ops
(a parent before its children), and :func:`overview_open` picks which of them start open: the
top-level blocks show, a wrapper holding most of the model (``model`` in ``LlamaForCausalLM``,
``features`` in a VGG) opens into its blocks, and a stack of identical blocks (``layers.0``,
``layers.1``, ... of one class) stays one box.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import nn

__all__ = ["machinery", "bridges", "folds", "overview_open"]

_CHECKS = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "_assert", "_guards_fn",
           "sym_constrain_range", "sym_constrain_range_for_size", "_check_is_size", "_functional_assert_async"}
_SIZES = {"sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "size", "dim", "numel", "sym_float",
          "sym_int", "sym_max", "sym_min", "sym_not", "sym_sqrt", "sym_ite"}
_MOVES = {"cuda", "cpu"}
_INDEX_DTYPES = ("torch.bool", "torch.int8", "torch.int16", "torch.int32", "torch.int64", "torch.uint8")
_OPEN_ALL_BELOW = 30  # a graph this small is drawn whole
_WRAPPER_SHARE = 0.5  # a box holding this share of the ops opens into its blocks
_MAX_BOXES = 40


def _base(n: fx.Node) -> str:
    t = n.target
    name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    return str(name).split(".")[0]


def _moves_device(n: fx.Node) -> bool:
    t = n.target
    name = t if isinstance(t, str) else getattr(t, "__name__", str(t))
    if name == "to.device" or _base(n) in _MOVES:
        return True
    if _base(n) in ("to", "_to_copy"):
        dtype_change = "dtype" in n.kwargs or any("dtype" in type(a).__name__ for a in n.args[1:])
        device = "device" in n.kwargs or any(type(a).__name__ == "device" for a in n.args[1:])
        return device and not dtype_change
    return False


def machinery(n: fx.Node, info: Any) -> str | None:
    """Why ``n`` is capture machinery ("capture check", "size arithmetic", "device move",
    "index or mask bookkeeping"), or None for an op of the model's computation."""
    if n.op not in ("call_function", "call_method", "call_module"):
        return None
    base = _base(n)
    if base in _CHECKS:
        return "capture check"
    if base in _SIZES or (info is not None and info.shape is None and info.value is not None):
        return "size arithmetic"
    if _moves_device(n):
        return "device move"
    val = n.meta.get("val")
    if n.op == "call_function" and str(getattr(val, "dtype", "")) in _INDEX_DTYPES:
        return "index or mask bookkeeping"
    return None


def bridges(edges: list[tuple[int, int]], hidden: set[int], n: int) -> list[list[int]]:
    """Edges between shown nodes that run through hidden ones (nodes are in graph order)."""
    preds: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        preds[b].append(a)
    src: dict[int, set[int]] = {}  # a hidden node's nearest shown ancestors
    out = set()
    for v in range(n):
        reach = set()
        for p in preds[v]:
            if p in hidden:
                reach |= src.get(p, set())
            elif v in hidden:
                reach.add(p)
        if v in hidden:
            src[v] = reach
        else:
            out |= {(s, v) for s in reach}
    return sorted([a, b] for a, b in out)


def _class_of(model: nn.Module, path: str) -> str:
    try:
        return type(model.get_submodule(path)).__name__
    except (AttributeError, ValueError):
        return ""


def _label(key: str) -> str:
    """The last part of a module path, with its parent's when it is a number ("layer3.0")."""
    parts = key.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def folds(paths: list[str], shown: list[bool], model: nn.Module) -> tuple[list[dict], list[int]]:
    """(the folds, each node's deepest fold or -1). A fold is a module path holding at least
    two shown ops: ``{"key", "parent", "count", "label", "cls", "repeat", "block"}``; ``repeat`` is
    the number of identical numbered blocks (of class ``block``) it stacks, 0 if it is not a stack."""
    count: dict[str, int] = {}
    for p, s in zip(paths, shown):
        parts = p.split(".") if p else []
        for d in range(1, len(parts) + 1):
            k = ".".join(parts[:d])
            count[k] = count.get(k, 0) + (1 if s else 0)
    keys = sorted((k for k, c in count.items() if c > 1), key=lambda k: (k.count("."), k))
    index = {k: i for i, k in enumerate(keys)}
    children: dict[str, list[str]] = {}
    for k in keys:
        children.setdefault(k.rpartition(".")[0], []).append(k)
    out = []
    for k in keys:
        parent = k.rpartition(".")[0]
        while parent and parent not in index:
            parent = parent.rpartition(".")[0]
        kids = [c.rpartition(".")[2] for c in children.get(k, [])]
        cls = _class_of(model, k)
        stacked = len(kids) >= 2 and all(c.isdigit() for c in kids) and \
            len({_class_of(model, f"{k}.{c}") for c in kids}) == 1
        out.append({"key": k, "parent": index.get(parent, -1), "count": count[k], "label": _label(k),
                    "cls": cls, "repeat": len(kids) if stacked else 0,
                    "block": _class_of(model, f"{k}.{kids[0]}") if stacked else ""})
    deepest = []
    for p in paths:
        parts, f = (p.split(".") if p else []), -1
        for d in range(len(parts), 0, -1):
            f = index.get(".".join(parts[:d]), -1)
            if f >= 0:
                break
        deepest.append(f)
    return out, deepest


def _boxes(fs: list[dict], deepest: list[int], shown: list[bool], open_: set[int]) -> dict[int, int]:
    """fold index (or -1 - node index for an op drawn alone) -> ops it holds, for ``open_``."""
    out: dict[int, int] = {}
    for i, (f, s) in enumerate(zip(deepest, shown)):
        if not s:
            continue
        chain = []
        while f >= 0:
            chain.append(f)
            f = fs[f]["parent"]
        box = next((c for c in reversed(chain) if c not in open_), -1 - i)
        out[box] = out.get(box, 0) + 1
    return out


def overview_open(fs: list[dict], deepest: list[int], shown: list[bool], max_ops: int = _OPEN_ALL_BELOW) -> list[int]:
    """The folds open on load: every fold when at most ``max_ops`` ops show; else the top-level
    blocks, each wrapper holding over half the ops opened into its blocks while at most
    40 boxes show, and a stack of identical blocks kept as one box."""
    total = sum(shown)
    if total <= max_ops:
        return list(range(len(fs)))
    open_: set[int] = set()
    while True:
        boxes = _boxes(fs, deepest, shown, open_)
        wrappers = [b for b, c in boxes.items() if b >= 0 and c >= _WRAPPER_SHARE * total and not fs[b]["repeat"]]
        if not wrappers:
            return sorted(open_)
        trial = open_ | {wrappers[0]}
        if len(_boxes(fs, deepest, shown, trial)) > _MAX_BOXES:
            return sorted(open_)
        open_ = trial
