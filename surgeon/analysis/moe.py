"""Mixture-of-experts: what the analysis knows about experts beyond the coupling rules.

The rules of :mod:`surgeon.graph.rules.moe` make whole experts (the stacked dim 0 of the expert
weights, tied to the router's rows) and the expert intermediate width prunable. Two facts are
not dims, and live here:

* a top-k router needs at least ``k`` experts: :func:`expert_floors` gives the group of the
  experts ``min_units = k`` (the planner never keeps fewer);
* which groups are experts, expert widths, shared experts, ... (:func:`unit_kinds`): the names
  reports and ``benchmarks/moe_units.py`` use to say what each kind of unit gave up.

The config fields (``num_experts`` / ``num_local_experts``, ``moe_intermediate_size`` or
``intermediate_size``) need nothing here: :mod:`surgeon.analysis.hf` learns them from the class
on the meta device, as it does every width field, and bundles the layers that share them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch.fx as fx
from torch import nn

from ..graph.ir import CostTerm, _UnionFind
from ..graph.rules import lookup
from ..graph.rules.moe import expert_id_uses, grouped_mm

__all__ = ["expert_floors", "expert_modules", "with_expert_layers", "router_dims", "grouped_mm_widths",
           "unit_kinds", "MOE_KINDS"]


def router_dims(traced) -> list[tuple[tuple, int, str]]:
    """``(dim key, k, module path)`` of every top-k over experts whose ids the rules understood:
    the router's expert dim, its ``k`` and the router module."""
    out = []
    for n in traced.graph.nodes:
        if n.op not in ("call_function", "call_method") or not _is_topk(n):
            continue
        x = n.args[0]
        shape = traced.shape(x) if isinstance(x, fx.Node) else None
        if shape is None or not expert_id_uses(n):
            continue
        dim = (n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", -1)) % len(shape)
        k = n.args[1] if len(n.args) > 1 else n.kwargs.get("k")
        if isinstance(k, fx.Node):
            k = traced.info[k.name].value
        stack = n.meta.get("nn_module_stack") or {}
        paths = [v[0] if isinstance(v, tuple) else key for key, v in stack.items()]
        out.append((("v", x.name, dim), int(k), paths[-1] if paths else ""))
    return out


def _is_topk(n: fx.Node) -> bool:
    t = n.target
    name = getattr(getattr(t, "overloadpacket", t), "__name__", None) if n.op == "call_function" else t
    return name == "topk"


def expert_floors(a) -> tuple:
    """The groups of ``a`` with what experts need that no dim says:

    * ``min_units`` raised to ``k`` for every group of experts that a top-k router selects from
      (so at least ``k`` experts stay);
    * ``step`` a multiple of 16 bytes' worth of elements for the widths a grouped matmul
      contracts or writes (``torch._grouped_mm`` wants 16-byte strides: 4 fp32, 8 bf16)."""
    groups = list(a.groups)
    where = {m.key: gi for gi, g in enumerate(groups) for m in g.members}
    for key, k, _ in router_dims(a.traced):
        gi = where.get(key)
        if gi is not None and k > groups[gi].min_units:
            groups[gi] = dataclasses.replace(groups[gi], min_units=k)
    for key, align in grouped_mm_widths(a.traced):
        gi = where.get(key)
        if gi is not None and groups[gi].step % align:
            groups[gi] = dataclasses.replace(groups[gi], step=math.lcm(groups[gi].step, align))
    return tuple(groups)


def grouped_mm_widths(traced) -> list[tuple[tuple, int]]:
    """``(dim key, elements in 16 bytes)`` of the widths of every grouped matmul's operands."""
    out = []
    for n in traced.graph.nodes:
        if n.op != "call_function" or lookup(n, traced)[0] is not grouped_mm:
            continue
        w = n.args[1]
        t = w.meta.get("val") if isinstance(w, fx.Node) else None
        size = t.element_size() if t is not None and hasattr(t, "element_size") else 2
        align = max(1, 16 // size)
        out += [(("v", n.args[0].name, 1), align), (("v", n.name, 1), align)]
    return out


# what each kind of unit is called in reports (benchmarks/moe_units.py): first match wins
MOE_KINDS = ("experts", "expert width", "shared expert", "heads", "MLP units", "layers", "other")


def unit_kinds(a) -> list[str]:
    """One name per group of ``a``: ``experts`` (whole experts), ``expert width`` (the stacked
    experts' intermediate width), ``shared expert``, ``heads``, ``MLP units``, ``layers`` or
    ``other``."""
    routers = {key for key, _, _ in router_dims(a.traced)}
    out = []
    for g in a.groups:
        names = [m.name for m in g.tensors]
        dims = {(m.name.rpartition(".")[2], m.dim) for m in g.tensors}
        if any(m.key in routers or str(m.key[1]).startswith("expert:") for m in g.members) \
                or ("gate_up_proj", 0) in dims:
            out.append("experts")
        elif g.layers:
            out.append("layers")
        elif ("gate_up_proj", 1) in dims or ("down_proj", 2) in dims:
            out.append("expert width")
        elif any(".shared_expert." in n for n in names):
            out.append("shared expert")
        elif g.kind.value == "head":
            out.append("heads")
        elif any(_is_mlp(n) for n in names):
            out.append("MLP units")
        else:
            out.append("other")
    return out


def _is_mlp(name: str) -> bool:
    parts = name.split(".")
    return any(p in ("mlp", "feed_forward", "ffn", "experts") for p in parts)


# -- the per-expert-module layout: a ModuleList of experts whose outputs are stacked ----------------

def expert_modules(traced, c):
    """Whole experts of the per-expert-module layout as units, and the coupling derived for them.

    ``torch.stack([experts[0](x), ..., experts[E-1](x)], dim)`` (one output of each item of a
    ``ModuleList``, in order, each used by nothing else) makes a dim whose index ``e`` is expert
    ``e``: no parameter dim produces it, so the rules leave it frozen. Here it is tied, index by
    index, to one unit per expert (a virtual dim of size 1, as a whole layer's), so the router
    rows that weigh it (a softmax over the stacked dim, ``(ys * w).sum(dim)``) and the expert
    modules go together: removing expert ``e`` drops ``experts[e]`` from its list and the rows
    of the router. Returns ``(coupling, {unit key: module name})``; the coupling unchanged and
    ``{}`` when there is no such stack."""
    found: dict[tuple, str] = {}
    rels, frozen = list(c.rels), dict(c.frozen)
    for n in traced.graph.nodes:
        names = _stacked_experts(traced, n)
        if names is None:
            continue
        dim = (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)) % len(traced.shape(n))
        key = ("v", n.name, dim)
        if key not in c.sizes or "tied to no parameter" not in frozen.get(key, ""):
            continue  # frozen for another reason: the rules know something against it
        del frozen[key]
        for e, name in enumerate(names):
            unit = ("x", f"expert:{name}", 0)
            found[unit] = name
            rels.append((key, unit, np.array([e]), np.array([0])))
    if not found:
        return c, {}
    uf = _UnionFind()
    uf.parent = dict(c.uf.parent)
    for unit in found:
        uf.add(unit)
    inside = _nodes_inside(traced, found)
    costs = []
    for t in c.costs:
        unit = inside.get(t.node)
        costs.append(CostTerm(t.flops, t.dims + (unit,), t.node) if unit else t)
    covered: dict[str, float] = {}
    for t in c.costs:
        covered[t.node] = covered.get(t.node, 0.0) + t.flops
    for node, unit in inside.items():  # FLOPs inside an expert that no term scaled
        rest = traced.info[node].flops - covered.get(node, 0.0)
        if rest > 0:
            costs.append(CostTerm(float(rest), (unit,), node))
    sizes = {**c.sizes, **{u: 1 for u in found}}
    kinds = {**c.kinds, **{u: "layer" for u in found}}
    layer_keys = {**c.layer_keys, **{name: u for u, name in found.items()}}
    return c.derive(sizes=sizes, rels=tuple(rels), frozen=frozen, uf=uf, costs=tuple(costs), kinds=kinds,
                    layer_keys=layer_keys), found


def _stacked_experts(traced, n: fx.Node) -> list[str] | None:
    """The ModuleList items whose outputs ``n`` stacks, in order, if ``n`` is such a stack."""
    target = getattr(n.target, "overloadpacket", n.target)
    if n.op != "call_function" or getattr(target, "__name__", None) != "stack":
        return None
    seq = n.args[0] if n.args else n.kwargs.get("tensors")
    if not isinstance(seq, (list, tuple)) or len(seq) < 2:
        return None
    items = []
    for t in seq:
        if not isinstance(t, fx.Node) or len(t.users) != 1:
            return None
        items.append(set(_list_items(t)))
    for first in sorted(items[0]):
        box, _, i = first.rpartition(".")
        names = [f"{box}.{k}" for k in range(len(seq))]
        if i != "0" or not all(name in it for name, it in zip(names, items)):
            continue
        try:
            mod = traced.model.get_submodule(box)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList) and len(mod) == len(seq):
            return names
    return None


def _paths(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
    if node.op == "call_module":
        paths.append(str(node.target))
    return paths


def _list_items(node: fx.Node) -> list[str]:
    """The numbered container items (``experts.3``) the call making ``node`` is inside."""
    return [p for p in _paths(node) if p.rpartition(".")[2].isdigit() and p.rpartition(".")[0]]


def _nodes_inside(traced, found: dict) -> dict[str, tuple]:
    by_name = {name: unit for unit, name in found.items()}
    out = {}
    for node in traced.graph.nodes:
        for p in _paths(node):
            for name, unit in by_name.items():
                if p == name or p.startswith(name + "."):
                    out[node.name] = unit
    return out


def with_expert_layers(groups, found: dict) -> tuple:
    """``groups`` with ``layers`` set on the groups whose units are whole experts (so surgery
    drops the modules), in unit order."""
    if not found:
        return tuple(groups)
    out = []
    for g in groups:
        units = {int(m.unit_of[0]): found[m.key] for m in g.members if m.key in found}
        if units and len(units) == g.n_units:
            g = dataclasses.replace(g, layers=tuple(units[u] for u in range(g.n_units)))
        out.append(g)
    return tuple(out)
