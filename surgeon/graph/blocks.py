"""Residual blocks as single-entry/single-exit regions of the op graph, found with dominators.

A residual block ``y = x + f(x)`` can be cut out -- ``y`` replaced by ``x`` -- without rewiring
anything else exactly when ``f`` is a single-entry/single-exit (SESE) region between ``x`` and
the add: nothing inside it is read from outside, and nothing outside feeds into it except
through ``x`` (and parameters). That is what dominators express. On the op graph (data edges,
a virtual source before the inputs, a virtual sink after the output; see :func:`to_networkx`):

* every add of two distinct computed tensors is a candidate *exit*; its *entry* is its
  immediate dominator, the nearest node that every path from the inputs to it goes through;
* the pair is a SESE region iff the exit is also the entry's immediate post-dominator (the
  nearest node that every path from the entry to the output goes through). With
  ``idom(exit) == entry`` this is the same as "entry dominates exit and exit post-dominates
  entry": any node strictly between the two in the post-dominator order would dominate the
  exit too, so it could not be the entry's immediate post-dominator and vice versa;
* the *skip* input is the one that is the entry or reaches it only through shape-preserving
  no-ops (Identity, Dropout, contiguous, clone, same-shape views); the other is the *branch*;
* the *body* is found by walking back from the branch input until the entry (or the skip
  chain): every node reached is dominated by the entry and post-dominated by the exit, so the
  walk never leaves the region and costs its size;
* the block is *removable* when it is a SESE region, has an identity skip, a non-empty body,
  and the exit's shape equals the entry's.

Both dominator trees come from ``networkx.immediate_dominators`` (Cooper-Harvey-Kennedy, near
linear on these graphs), so everything is linear in the graph plus the bodies' sizes.

Parameters and constants (``get_attr`` nodes and everything computed from them alone) are left
out of the graph dominators are computed on: they enter every layer, and a weight read by the
branch does not make the branch reachable from outside. Dead nodes (that do not reach the
output, such as ``torch.export``'s ``_guards_fn``) are left out too: reading the body there is
not observable. A projection shortcut (ResNet's ``downsample``) is not a no-op, so its block is
a candidate but not removable (its shape changes too).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["Block", "residual_blocks", "to_networkx", "SOURCE", "SINK"]

SOURCE = "<source>"  # fx node names are identifiers: these cannot clash with one
SINK = "<sink>"


@dataclass(frozen=True)
class Block:
    """A residual block ``exit = entry + branch(entry)`` (fx node names).

    ``body``: the branch's nodes strictly between entry and exit (sorted); ``modules``: the
    innermost modules they are called in (sorted, qualified names); ``owner``: the longest
    common module prefix of the body (None at the root); ``removable``: whether the branch is a
    single-entry/single-exit region with an identity skip and the block keeps its input's shape
    (only those are returned unless ``residual_blocks(..., include_unremovable=True)``)."""

    entry: str
    exit: str
    body: tuple[str, ...]
    modules: tuple[str, ...]
    owner: str | None
    removable: bool = True


def to_networkx(traced: Any, *, constants: bool = True) -> nx.DiGraph:
    """The op graph of ``traced`` (a :class:`~surgeon.graph.trace.Traced`) as a DiGraph.

    Nodes are fx node names with attributes ``op`` and ``target`` (as a string), plus the
    virtual :data:`SOURCE` (an edge to every node without inputs: placeholders, ``get_attr``
    and factory calls) and :data:`SINK` (an edge from every node without users: the output and
    dead nodes). Edges are data edges (``node.all_input_nodes``).

    ``constants=False`` gives the graph :func:`residual_blocks` computes dominators on: only
    nodes that depend on an input and reach the output; the source feeds the placeholders."""
    nodes = list(traced.graph.nodes)
    keep = None if constants else _data_nodes(nodes)
    g = nx.DiGraph()
    g.add_nodes_from((SOURCE, SINK))
    g.add_nodes_from((n.name, {"op": n.op, "target": _target_name(n.target)}) for n in nodes
                     if keep is None or n in keep)
    edges = []
    for n in nodes:
        if keep is not None and n not in keep:
            continue
        ins = n.all_input_nodes if keep is None else [a for a in n.all_input_nodes if a in keep]
        if not ins and (keep is None or n.op == "placeholder"):
            edges.append((SOURCE, n.name))
        edges.extend((a.name, n.name) for a in ins)
        if n.op == "output" or (keep is None and not n.users):
            edges.append((n.name, SINK))
    g.add_edges_from(edges)
    return g


def _target_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", None) or str(target)


def _data_nodes(nodes: list[fx.Node]) -> set[fx.Node]:
    """Nodes that depend on a placeholder and reach the output (fx order is topological)."""
    data: set[fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder" or any(a in data for a in n.all_input_nodes):
            data.add(n)
    live: set[fx.Node] = set()
    for n in reversed(nodes):
        if n.op == "output" or any(u in live for u in n.users):
            live.add(n)
    return {n for n in data if n in live} | {n for n in nodes if n.op == "output"}


def residual_blocks(traced: Any, *, include_unremovable: bool = False) -> tuple[Block, ...]:
    """The residual blocks of ``traced`` whose whole branch can be removed, in graph order
    (see the module docstring). ``include_unremovable=True`` also returns every other add of
    two computed tensors that has a common dominator, with ``removable=False`` (their bodies
    are both inputs' walks back to the entry; on graphs where many adds share a far entry that
    costs more than linear time)."""
    g = to_networkx(traced, constants=False)
    idom = nx.immediate_dominators(g, SOURCE)
    ipdom = nx.immediate_dominators(g.reverse(copy=False), SINK)
    by_name = {n.name: n for n in traced.graph.nodes}
    pred = g.pred
    out = []
    for n in traced.graph.nodes:
        if n.name not in idom or not _is_add(n):
            continue
        ins = [a.name for a in n.all_input_nodes if a.name in pred[n.name]]
        entry = idom[n.name]
        if len(ins) != 2 or entry in (SOURCE, None):
            continue
        block = _block(traced, by_name, pred, entry, n.name, ins, ipdom.get(entry) == n.name,
                       include_unremovable)
        if block is not None:
            out.append(block)
    return tuple(out)


def _block(traced: Any, by_name: dict, pred: Any, entry: str, exit_: str, ins: list[str],
           sese: bool, include_unremovable: bool) -> Block | None:
    """The block from ``entry`` to ``exit_`` (None if not wanted): skip, branch, body, owner."""
    skip = None
    for i, name in enumerate(ins):
        chain = _skip_chain(traced, by_name, pred, name, entry)
        if chain is not None:
            skip, branch = chain, [ins[1 - i]]
            break
    shape = traced.shape(by_name[entry])
    removable = (sese and skip is not None and shape is not None
                 and traced.shape(by_name[exit_]) == shape)
    if not removable and not include_unremovable:
        return None
    if skip is None:
        skip, branch = [], ins
    body = _walk_back(pred, branch, {entry, *skip})
    if not body:  # exit = entry + a no-op of entry: nothing to remove
        if not include_unremovable:
            return None
        removable = False
    paths = [_module_of(by_name[b]) for b in body]
    return Block(entry, exit_, tuple(sorted(body)), tuple(sorted({p for p in paths if p})),
                 _common_prefix(paths), removable)


_ADDS = frozenset({operator.add, operator.iadd, torch.add, torch.ops.aten.add.Tensor})


def _is_add(n: fx.Node) -> bool:
    if n.op == "call_function":
        try:
            return n.target in _ADDS
        except TypeError:  # an unhashable target
            return False
    return n.op == "call_method" and n.target == "add"


_NOOP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout)
_aten = torch.ops.aten
_NOOP_FUNCTIONS = frozenset({
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.clone, torch.reshape,
    torch.flatten, _aten.dropout.default, _aten.clone.default, _aten.alias.default,
    _aten.detach.default, _aten.view.default, _aten._unsafe_view.default, _aten.reshape.default,
    _aten.contiguous.default, _aten.flatten.using_ints, _aten.expand.default,
})
_NOOP_METHODS = frozenset({"contiguous", "clone", "detach", "view", "reshape", "flatten", "view_as",
                           "reshape_as", "expand", "expand_as"})


def _is_noop(traced: Any, n: fx.Node) -> bool:
    """Does ``n`` return its (single data) input's value, given that the shapes match?"""
    if n.op == "call_module":
        try:
            return isinstance(traced.submodule(str(n.target)), _NOOP_MODULES)
        except AttributeError:
            return False
    if n.op == "call_method":
        return n.target in _NOOP_METHODS
    if n.op == "call_function":
        try:
            return n.target in _NOOP_FUNCTIONS
        except TypeError:
            return False
    return False


def _skip_chain(traced: Any, by_name: dict, pred: Any, name: str, entry: str) -> list[str] | None:
    """The no-op nodes from ``entry`` to ``name`` (``[]`` if ``name`` is the entry), or None if
    ``name`` does not reach the entry through same-shape no-ops alone."""
    chain = []
    while name != entry:
        node, ins = by_name[name], pred[name]
        if len(ins) != 1 or not _is_noop(traced, node):
            return None
        (up,) = ins
        shape = traced.shape(node)
        if shape is None or traced.shape(by_name[up]) != shape:
            return None
        chain.append(name)
        name = up
    return chain


def _walk_back(pred: Any, starts: list[str], stop: set[str]) -> set[str]:
    """Every node reached backwards from ``starts`` without expanding past ``stop``."""
    seen = {s for s in starts if s not in stop}
    todo = list(seen)
    while todo:
        for up in pred[todo.pop()]:
            if up not in stop and up not in seen and up != SOURCE:
                seen.add(up)
                todo.append(up)
    return seen


def _module_of(n: fx.Node) -> str:
    """The innermost module ``n`` runs in (its own target for ``call_module``; "" at the root)."""
    if n.op == "call_module":
        return str(n.target)
    stack = n.meta.get("nn_module_stack")
    if not stack:
        return ""
    last = next(reversed(stack.values()))
    return str(last[0] if isinstance(last, tuple) else last)


def _common_prefix(paths: list[str]) -> str | None:
    """The longest common dotted prefix of module paths (None when it is the root)."""
    if not paths:
        return None
    parts = paths[0].split(".") if paths[0] else []
    for p in paths[1:]:
        other = p.split(".") if p else []
        k = 0
        while k < len(parts) and k < len(other) and parts[k] == other[k]:
            k += 1
        del parts[k:]
        if not parts:
            return None
    return ".".join(parts) or None
