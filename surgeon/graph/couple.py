"""Run the coupling rules over a traced graph.

Invariant: a dimension is prunable only if every op that touches it says how. Model inputs and
outputs are frozen, every dim of an op with no rule is frozen with the reason, and after a rule
runs, any dim of its inputs or output that it did not tie is frozen too. A tensor the forward
makes from constants (``torch.ones(16)``) keeps its sizes, so its dims are frozen; a width used
as a number by an op whose rule does not read it (``y / y.shape[1]``) makes its dim inexact.
"""

from __future__ import annotations

from collections import defaultdict

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .. import _walks
from .ir import Coupling, DimKey
from .rules import RuleContext, lookup
from .rules.width import READS_SIZES
from .._gc import own_loop

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


@own_loop
def couple(traced) -> Coupling:
    """Apply the registered rules to every node of ``traced`` and return the coupling."""
    c = Coupling()
    refs = size_refs(traced)
    memo: dict = {}
    rules: dict = {}
    owned = _model_tensor_names(traced.model)
    for node in traced.graph.nodes:
        info = traced.info.get(node.name)
        if info is None:
            continue
        if node.op == "placeholder":
            for key in _keys(c, traced, node) + _tuple_keys(c, traced, node):
                c.freeze(key, f"model input '{node.target}'")
        elif node.op == "get_attr" and node.target not in owned:
            # a constant the capture made (fx's _tensor_constant0): surgery has nothing to slice
            for key in _keys(c, traced, node):
                c.freeze(key, f"a constant tensor made in forward ('{node.target}') keeps its sizes")
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


def _model_tensor_names(model: nn.Module) -> set[str]:
    """Qualified names of the user's parameters and buffers, aliases included: what surgery can
    slice."""
    names = set(_walks.parameters(model))
    names.update(_walks.buffers(model))
    return names


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
    out_keys = _keys(c, traced, node, memo)
    if isinstance(traced.info[node.name].shape, list):  # a tuple of tensors (what _tuple_keys reads)
        out_keys = out_keys + _tuple_keys(c, traced, node)
    if rule is None:
        for key in in_keys + out_keys:
            c.freeze(key, f"no coupling rule for {what} at {loc}")
        _width_numbers(c, traced, node, refs, what, loc)
        return
    ctx = RuleContext(c, traced, node, loc, refs)
    rule(ctx)
    if rule not in READS_SIZES and refs:  # refs: the graph reads some width as a number
        _width_numbers(c, traced, node, refs, what, loc)
    for key in out_keys:
        if key not in ctx.touched:
            c.freeze(key, f"dim {key[2]} of the output of {what} at {loc} is tied to no parameter")
    for key in in_keys:
        if key not in ctx.touched:
            c.freeze(key, f"{what} at {loc} does not say how it uses dim {key[2]} of '{key[1]}'")


def _ref_dims(ref) -> list[tuple[fx.Node, int]]:
    """The tensor dims a :func:`size_refs` entry was computed from."""
    if isinstance(ref, set):
        return list(ref)
    if not isinstance(ref, tuple):
        return []
    if ref[0] == "shape":
        return [(ref[1], d) for d in ref[2]]
    if ref[0] == "div":
        return _ref_dims(ref[1])
    return [ref] if isinstance(ref[0], fx.Node) else []


def _width_numbers(c: Coupling, traced, node: fx.Node, refs, what: str, loc: str) -> None:
    """Numbers computed from widths (``y.shape[1]``) reaching an op whose rule does not read them
    change when those widths are pruned: ``y / y.shape[1]`` is a mean by hand, so its dim is
    inexact, as a mean's is."""
    for arg in _inputs(node):
        if traced.info.get(arg.name) is None or traced.info[arg.name].shape is not None:
            continue  # a tensor (or a tuple of them): its dims are the rule's business
        for t, d in _ref_dims(refs.get(arg.name)):
            shape = traced.shape(t)
            if shape is None:
                continue
            d %= len(shape)
            key = c.add(("v", t.name, d), shape[d])
            c.mark_inexact(key, f"the width of dim {d} of '{t.name}' is used as a number by {what} at {loc}")
