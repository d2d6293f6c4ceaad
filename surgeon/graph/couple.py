"""Run the coupling rules over a traced graph.

Invariant: a dimension is prunable only if every op that touches it says how. Model inputs and
outputs are frozen, every dim of an op with no rule is frozen with the reason, and after a rule
runs, any dim of its inputs or output that it did not tie is frozen too.
"""

from __future__ import annotations

from collections import defaultdict

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .ir import Coupling, DimKey
from .rules import RuleContext, lookup

__all__ = ["couple", "where"]


def where(node: fx.Node) -> str:
    """A readable location: the module path for module calls, else node name inside a module."""
    if node.op == "call_module":
        return f"module '{node.target}'"
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
    inner = paths[-1] if paths else ""
    return f"node '{node.name}'" + (f" in '{inner}'" if inner else "")


def _keys(c: Coupling, traced, node: fx.Node, memo: dict | None = None) -> list[DimKey]:
    """The dim keys of a tensor-valued node (added to ``c``); ``memo`` caches them per node."""
    if memo is not None and node in memo:
        return memo[node]
    info = traced.info.get(node.name)
    s = info.shape if info is not None else None
    keys = [c.add(("v", node.name, d), n) for d, n in enumerate(s)] if isinstance(s, torch.Size) else []
    if memo is not None:
        memo[node] = keys
    return keys


def _tuple_keys(c: Coupling, traced, node: fx.Node) -> list[DimKey]:
    s = traced.info[node.name].shape
    keys = []
    if isinstance(s, list):
        for i, e in enumerate(s):
            if isinstance(e, torch.Size):
                keys += [c.add(("v", f"{node.name}#{i}", d), n) for d, n in enumerate(e)]
    return keys


def _inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


def size_refs(traced) -> dict[str, Any]:
    """For int-valued nodes: which tensor dim they read ``(node, dim)``, or a set of the dims
    they were computed from; ``("shape", node, dims)`` for a whole or sliced ``x.shape``."""
    refs: dict[str, Any] = {}
    aten_sym_size = getattr(torch.ops.aten.sym_size, "int", None)
    for n in traced.graph.nodes:
        if n.op == "call_function" and n.target is getattr and len(n.args) > 1 and n.args[1] == "shape":
            shape = traced.shape(n.args[0])
            if shape is not None:
                refs[n.name] = ("shape", n.args[0], list(range(len(shape))))
        elif n.op == "call_method" and n.target == "size" and traced.shape(n.args[0]) is not None:
            x = n.args[0]
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            nd = len(traced.shape(x))
            refs[n.name] = (x, dim % nd) if isinstance(dim, int) else ("shape", x, list(range(nd)))
        elif n.op == "call_function" and n.target is aten_sym_size and len(n.args) > 1:
            refs[n.name] = (n.args[0], n.args[1] % len(traced.shape(n.args[0])))
        elif n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], fx.Node) \
                and isinstance(refs.get(n.args[0].name), tuple) and refs[n.args[0].name][0] == "shape":
            _, x, dims = refs[n.args[0].name]
            idx = n.args[1]
            if isinstance(idx, int):
                refs[n.name] = (x, dims[idx])
            elif isinstance(idx, slice):
                refs[n.name] = ("shape", x, dims[idx])
        elif n.op == "call_function" and n.target is operator.floordiv and isinstance(n.args[1], int) \
                and isinstance(n.args[0], fx.Node) and _direct(refs.get(n.args[0].name)):
            refs[n.name] = ("div", refs[n.args[0].name], n.args[1])
        elif traced.info.get(n.name) is not None and traced.info[n.name].shape is None:
            derived: set = set()
            for a in _inputs(n):
                r = refs.get(a.name)
                if isinstance(r, tuple) and r[0] == "shape":
                    derived |= {(r[1], d) for d in r[2]}
                elif isinstance(r, tuple) and r[0] == "div":
                    derived.add(r[1])
                elif isinstance(r, tuple):
                    derived.add(r)
                elif isinstance(r, set):
                    derived |= r
            if derived:
                refs[n.name] = derived
    return refs


def _direct(ref) -> bool:
    return isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[0], fx.Node)


def couple(traced) -> Coupling:
    """Apply the registered rules to every node of ``traced`` and return the coupling."""
    c = Coupling()
    refs = size_refs(traced)
    memo: dict = {}
    rules: dict = {}
    for node in traced.graph.nodes:
        info = traced.info.get(node.name)
        if info is None:
            continue
        if node.op == "placeholder":
            for key in _keys(c, traced, node) + _tuple_keys(c, traced, node):
                c.freeze(key, f"model input '{node.target}'")
        elif node.op == "get_attr":
            for d, key in enumerate(_keys(c, traced, node)):
                c.eq(key, c.add(("p", node.target, d), c.sizes[key]))
        elif node.op == "output":
            for arg in _inputs(node):
                for key in _keys(c, traced, arg) + _tuple_keys(c, traced, arg):
                    c.freeze(key, "model output")
        elif info.shape is not None:
            _apply_rule(c, traced, node, refs, memo, rules)
    _tie_aliases(c, traced.tensors())
    if traced.mode == "export":
        _tie_multihead_attention(c, traced.model)
    return c.seal()


def _tie_multihead_attention(c: Coupling, model: nn.Module) -> None:
    """torch.export decomposes nn.MultiheadAttention into functional ops, losing what its own rule
    knows: the module reads one ``embed_dim`` for the query's width and for heads x head_dim, so
    residual channel i and inner channel i go together (and head_dim, the attention scale, shrinks)."""
    for name, m in model.named_modules():
        if not isinstance(m, nn.MultiheadAttention) or not m._qkv_same_embed_dim:
            continue
        resid, inner = ("p", f"{name}.in_proj_weight", 1), ("p", f"{name}.out_proj.weight", 1)
        if resid in c.sizes and inner in c.sizes:
            n = c.sizes[inner]
            c.rel(resid, inner, np.arange(n), np.arange(n))
            c.mark_inexact(inner, "the attention scale depends on head_dim")


def _tie_aliases(c: Coupling, tensors: dict[str, torch.Tensor]) -> None:
    """One tensor under several names (tied input and output embeddings, shared layers) is one
    set of dims: what prunes one name prunes them all, and what freezes one freezes them all."""
    names: dict[int, list[tuple[str, torch.Tensor]]] = defaultdict(list)
    for n, t in tensors.items():
        names[id(t)].append((n, t))
    for aliases in names.values():
        if len(aliases) < 2:
            continue
        t = aliases[0][1]
        for d in range(t.dim()):
            keys = [("p", n, d) for n, _ in aliases]
            if any(k in c.sizes for k in keys):
                for k in keys:
                    c.add(k, t.shape[d])
                for k in keys[1:]:
                    c.eq(keys[0], k)


def _rule(node: fx.Node, traced, known: dict) -> tuple:
    """``lookup(node, traced)``, remembered per module class or call target for one capture."""
    key = type(traced.submodule(node.target)) if node.op == "call_module" else (node.op, node.target)
    try:
        return known[key]
    except KeyError:
        found = known[key] = lookup(node, traced)
        return found
    except TypeError:  # an unhashable target
        return lookup(node, traced)


def _apply_rule(c: Coupling, traced, node: fx.Node, refs, memo: dict, rules: dict) -> None:
    rule, what = _rule(node, traced, rules)
    loc = where(node)
    in_keys = [k for n in node.all_input_nodes for k in _keys(c, traced, n, memo)]
    out_keys = _keys(c, traced, node, memo) + _tuple_keys(c, traced, node)
    if rule is None:
        for key in in_keys + out_keys:
            c.freeze(key, f"no coupling rule for {what} at {loc}")
        return
    ctx = RuleContext(c, traced, node, loc, refs)
    rule(ctx)
    for key in out_keys:
        if key not in ctx.touched:
            c.freeze(key, f"dim {key[2]} of the output of {what} at {loc} is tied to no parameter")
    for key in in_keys:
        if key not in ctx.touched:
            c.freeze(key, f"{what} at {loc} does not say how it uses dim {key[2]} of '{key[1]}'")
