"""Whole layers as units: residual blocks whose removal is exact.

A layer can go when the model would not notice its absence beyond losing what it computes:
it sits in an ``nn.ModuleList`` or ``nn.Sequential`` (so the model iterates over it and a
shorter container still runs), its output has its input's shape, and with every one of its
parameters zeroed it passes its input through unchanged. The last condition is checked on
the example input, on a copy, for all candidates in one forward. It holds for pre-norm
transformer layers (``x + attn(norm(x))`` then ``+ mlp(norm(x))``) and for residual CNN blocks
whose branch ends in a zeroable layer; it fails for post-norm layers (BERT's
``LayerNorm(x + f(x))``), which are therefore never candidates.

Each container of candidates becomes one group of kind ``layer``, one unit per layer. Removing
a unit zeroes the FLOPs (and parameters) of every node inside that layer in the cost model, so
layers are planned against the same target as channels and heads.

The planner ranks every unit by its score relative to its own group's mean, so a layer goes when
it is further below the average layer than the channels it would spare are below theirs. Layer
units own no channel tensors, so most criteria cannot score them; they are then scored by their
Block Influence (:mod:`surgeon.criteria.layer_influence`: the angle each layer turns the hidden
state through) on the calibration data, or on the example input without any. The weights' RMS,
used before, is nearly the same for every layer of a network initialised or trained alike, so
every layer sat at the median of the removal order, behind half of every channel group, and a
Llama lost no layer even at ``target=0.3``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..slicing.clone import clone_module
from ..graph.groups import Member, PruneGroup, UnitKind
from ..graph.ir import Coupling, CostTerm
from ..graph.trace import eval_mode, run_model

__all__ = ["find_layers", "layer_units"]


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


def find_layers(model: nn.Module, example_input: Any) -> dict[str, list[str]]:
    """{container name: [qualified names of its removable layers]} (containers with >= 2)."""
    containers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.ModuleList, nn.Sequential))
                  and len(m) >= 2}
    cands = {f"{n}.{k}" if n else k: child for n, c in containers.items() for k, child in c._modules.items()
             if child is not None and any(True for _ in child.parameters())}
    if not cands:
        return {}
    copy_ = clone_module(model)
    mods = dict(copy_.named_modules())
    seen: dict[str, tuple] = {}
    hooks = [mods[name].register_forward_pre_hook(
        lambda _m, args, kwargs, name=name: seen.setdefault(name, (args, kwargs)), with_kwargs=True)
        for name in cands]
    try:
        with torch.no_grad(), eval_mode(copy_):
            run_model(copy_, example_input)
    except Exception:  # noqa: BLE001 - the model itself failing is reported elsewhere
        return {}
    finally:
        for h in hooks:
            h.remove()
    ok = {name: _passes_through(mods[name], *seen[name]) for name in cands if name in seen}
    out: dict[str, list[str]] = {}
    for n, c in containers.items():
        names = [f"{n}.{k}" if n else k for k in c._modules]
        good = [q for q in names if ok.get(q)]
        if good:
            out[n] = good
    return out


def _passes_through(layer: nn.Module, args: tuple, kwargs: dict) -> bool:
    """With every parameter zeroed, does ``layer`` return its (non-degenerate) input?"""
    x = _first_tensor(args) if args else _first_tensor(list(kwargs.values()))
    if x is None or not x.is_floating_point() or x.numel() < 2 or float(x.float().std()) <= 1e-6:
        return False
    zeroed = clone_module(layer)
    with torch.no_grad():
        for p in zeroed.parameters():
            p.zero_()
        try:
            with eval_mode(zeroed):
                y = _first_tensor(zeroed(*args, **kwargs))
        except Exception:  # noqa: BLE001 - a layer that cannot run zeroed is not removable
            return False
    return y is not None and y.shape == x.shape and torch.equal(y, x)


def _node_module(node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
    if node.op == "call_module":
        paths.append(str(node.target))
    return paths


def layer_units(a, model: nn.Module, example_input: Any) -> tuple[Coupling, list[PruneGroup]]:
    """One layer group per container of removable layers (numbered after ``a.groups``), and
    ``a.coupling`` derived so that the FLOPs of every node inside a layer depend on keeping it."""
    found = find_layers(model, example_input)
    c = a.coupling
    if not found:
        return c, []
    key_of: dict[str, tuple] = {}
    new = []
    for container, names in found.items():
        members = []
        for u, name in enumerate(names):
            key_of[name] = ("x", f"layer:{name}", 0)
            members.append(Member(key_of[name], np.array([u], dtype=np.int64)))
        new.append(PruneGroup(len(a.groups) + len(new), UnitKind.LAYER, len(names), members,
                              np.zeros(len(names), dtype=bool), None, True, None, [container],
                              layers=tuple(names)))
    costs = _layer_costs(a.traced, c.costs, key_of)
    sizes = {**c.sizes, **{key: 1 for key in key_of.values()}}
    return c.derive(sizes=sizes, costs=tuple(costs), layer_keys={**c.layer_keys, **key_of}), new


def _layer_costs(traced, costs, key_of: dict[str, tuple]) -> list[CostTerm]:
    """Every cost term of a node whose module stack enters a layer also scales with keeping it;
    FLOPs of such a node that no term counted get a term of their own."""
    where: dict[str, tuple] = {}
    for node in traced.graph.nodes:
        for path in _node_module(node) or ():
            for name, key in key_of.items():
                if path == name or path.startswith(name + "."):
                    where[node.name] = key
    covered: dict[str, float] = {}
    terms = []
    for t in costs:
        key = where.get(t.node)
        covered[t.node] = covered.get(t.node, 0.0) + t.flops
        terms.append(CostTerm(t.flops, t.dims + (key,), t.node) if key else t)
    for node_name, key in where.items():
        rest = traced.info[node_name].flops - covered.get(node_name, 0.0) if node_name in traced.info else 0
        if rest > 0:
            terms.append(CostTerm(float(rest), (key,), node_name))
    return terms
