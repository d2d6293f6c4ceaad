"""The picture's data: the fx op graph, each node's groups, and each group's facts, as JSON.

Everything the page and the DOT writer draw comes from :func:`graph_data`, a plain dict, so the
drawing code never touches torch. Nodes are the fx graph's nodes minus ``get_attr`` nodes (a
parameter is drawn on the op that uses it); a node's *primary* group is the prunable group its
own output's channels belong to, its *chips* are the other prunable groups it touches (a conv's
input channels, a parameter it reads).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from ..analysis import Analysis
from ..graph.groups import PruneGroup
from ..planning.plan import Plan
from .overview import bridges, folds, machinery, overview_open
from .explain import explain

__all__ = ["graph_data", "group_colors", "GREY", "fold_depth"]

GREY = "#c8c8c8"
_MAX_LIST = 300  # longest member list sent to the page per group
_SCORE_BINS = 256


def group_colors(groups: list[PruneGroup]) -> dict[int, str]:
    """A distinct colour per prunable group: hues a golden angle apart, two lightness bands."""
    colors = {}
    for i, g in enumerate(g for g in groups if g.prunable):
        hue = (i * 137.508) % 360
        light = 52 if i % 2 == 0 else 64
        colors[g.id] = _hsl_hex(hue, 0.68, light / 100)
    return colors


def _hsl_hex(h: float, s: float, lum: float) -> str:
    c = (1 - abs(2 * lum - 1)) * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    m = lum - c / 2
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return "#" + "".join(f"{round((v + m) * 255):02x}" for v in (r, g, b))


def _module_path(n: fx.Node) -> str:
    if n.op == "call_module":
        return str(n.target)
    if n.op == "get_attr":
        return str(n.target).rpartition(".")[0]
    stack = n.meta.get("nn_module_stack")
    if stack:
        last = list(stack.values())[-1]
        return str(last[0] if isinstance(last, tuple) else last)
    return ""


def _op_label(n: fx.Node, model: torch.nn.Module) -> tuple[str, str]:
    """(short label, type) of a node: module leaf name and class, or the function's name."""
    if n.op == "call_module":
        try:
            kind = type(model.get_submodule(str(n.target))).__name__
        except AttributeError:
            kind = "module"
        return str(n.target).rsplit(".", 1)[-1], kind
    if n.op in ("call_function", "call_method"):
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        name = str(name).replace(".default", "").replace(".Tensor", "")
        return name, n.op.replace("call_", "")
    return n.name, n.op


def _shape(info: Any) -> list | None:
    s = getattr(info, "shape", None)
    return [int(d) for d in s] if isinstance(s, torch.Size) else None


def _drawn_nodes(gm: fx.GraphModule) -> tuple[list[fx.Node], dict[str, list[str]]]:
    """The nodes to draw, and for each get_attr node folded away, the nodes it is drawn on."""
    nodes, attr_to = [], {}
    for n in gm.graph.nodes:
        if n.op == "get_attr" and n.users:
            attr_to[n.name] = [u.name for u in n.users]
        else:
            nodes.append(n)
    # a get_attr feeding another get_attr-only chain still lands on drawn users
    drawn = {n.name for n in nodes}
    for k, users in attr_to.items():
        attr_to[k] = [u for u in users if u in drawn] or users[:1]
    return nodes, attr_to


def _touching(a: Analysis, ids: dict[str, int], attr_to: dict[str, list[str]]) -> tuple[dict, dict]:
    """For every group, the drawn nodes its members name: (outputs: gid -> ids, all: gid -> ids)."""
    by_module: dict[str, list[int]] = {}
    by_attr: dict[str, list[int]] = {}
    for n in a.traced.gm.graph.nodes:
        if n.op == "call_module" and n.name in ids:
            by_module.setdefault(str(n.target), []).append(ids[n.name])
        elif n.op == "get_attr":
            targets = [ids[u] for u in attr_to.get(n.name, [n.name]) if u in ids]
            by_attr.setdefault(str(n.target), []).extend(targets)
    outputs: dict[int, list[int]] = {}
    touch: dict[int, list[int]] = {}
    for g in a.groups:
        out, allnodes = [], []
        for m in g.members:
            kind, name = m.key[0], m.key[1]
            if kind == "v":
                nid = ids.get(name.split("#", 1)[0])
                if nid is not None:
                    out.append(nid)
            elif kind == "p":
                allnodes += by_attr.get(name, []) or by_module.get(name.rpartition(".")[0], [])
        outputs[g.id] = sorted(set(out))
        touch[g.id] = sorted(set(out) | set(allnodes))
    return outputs, touch


def _nodes(a: Analysis, drawn: list[fx.Node], outputs: dict, touch: dict) -> list[dict]:
    model = a.traced.model
    primary: dict[int, int] = {}
    reason_of: dict[int, tuple[int, str]] = {}
    extra: dict[int, set] = {}
    for g in a.groups:  # a node's own output decides its colour; prunable groups win
        for nid in outputs[g.id]:
            if g.prunable:
                primary.setdefault(nid, g.id)
            else:
                reason_of.setdefault(nid, (g.id, g.reason or "not prunable"))
        for nid in touch[g.id]:
            if g.prunable:
                extra.setdefault(nid, set()).add(g.id)
    out = []
    for i, n in enumerate(drawn):
        label, kind = _op_label(n, model)
        info = a.traced.info.get(n.name)
        gid = primary.get(i, -1)
        kept, reason = reason_of.get(i, (-1, None)) if gid < 0 else (-1, None)
        if gid < 0 and reason is None:
            reason = "carries no channel dimension that a parameter controls"
        out.append({
            "id": i, "name": n.name, "op": n.op, "label": label, "type": kind,
            "hide": machinery(n, info) if gid < 0 and not extra.get(i) else None,
            "target": n.target if isinstance(n.target, str) else label,
            "path": _module_path(n), "shape": _shape(info), "flops": int(getattr(info, "flops", 0) or 0),
            "group": gid, "chips": sorted(extra.get(i, set()) - {gid}), "reason": reason, "kept_group": kept,
        })
    return out


def _runs(idx: np.ndarray) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in idx.tolist():
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


def _sig(x: float) -> float:
    return float(f"{x:.4g}") if math.isfinite(x) else 0.0


def _score_summary(scores: np.ndarray | None, kept: np.ndarray | None) -> dict | None:
    """Sorted scores (binned when long) and, per bin, the fraction the plan keeps."""
    if scores is None or scores.size == 0:
        return None
    order = np.argsort(scores, kind="stable")
    s = scores[order].astype(np.float64)
    k = kept[order].astype(np.float64) if kept is not None else np.ones_like(s)
    if s.size > _SCORE_BINS:
        edges = np.linspace(0, s.size, _SCORE_BINS + 1).astype(int)
        s = np.array([s[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
        k = np.array([k[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    raw = scores.astype(np.float64)
    return {"n": int(scores.size), "min": _sig(raw.min()), "median": _sig(float(np.median(raw))),
            "max": _sig(raw.max()), "sorted": [_sig(v) for v in s], "kept": [round(float(v), 3) for v in k]}


def kept_units(g: PruneGroup, plan: Plan) -> np.ndarray | None:
    """Which of ``g``'s units ``plan`` keeps, read from its slices (None if it does not say)."""
    dec = {d.group: d for d in plan.decisions}.get(g.id)
    if dec is None or dec.units != g.n_units:
        return None
    if dec.kept == dec.units:
        return np.ones(g.n_units, dtype=bool)
    slices = {(s.tensor, s.dim): s for s in plan.slices}
    for m in g.tensors:
        s = slices.get((m.name, m.dim))
        if s is not None and s.size == len(m.unit_of):
            kept = np.zeros(g.n_units, dtype=bool)
            kept[m.unit_of[np.asarray(s.keep, dtype=np.int64)]] = True
            return kept
    return None


def _group(g: PruneGroup, color: str | None, scores, plan: Plan | None,
           touch: list[int], totals: dict) -> dict:
    tensors = [[m.name, m.dim, int(len(m.unit_of))] for m in g.tensors]
    values = [[m.name, m.dim] for m in g.members if m.key[0] == "v"]
    virtual = [m.name for m in g.members if m.key[0] == "x"]
    kept = kept_units(g, plan) if plan is not None else None
    decision = None
    if plan is not None:
        d = {x.group: x for x in plan.decisions}.get(g.id)
        if d is not None:
            decision = {"units": d.units, "kept": d.kept,
                        "removed": _runs(np.nonzero(~kept)[0])[:200] if kept is not None else None}
    flops = g.flops_per_unit * g.n_units
    params = g.params_per_unit * g.n_units
    plain, fix = explain(g.reason) if not g.prunable else (None, None)
    return {
        "id": g.id, "kind": g.kind.value, "units": g.n_units, "prunable": g.prunable, "reason": g.reason,
        "plain": plain, "fix": fix,
        "exact": g.exact, "inexact": g.inexact_reason, "color": color,
        "frozen": int(np.asarray(g.frozen_units).sum()),
        "flops_per_unit": _sig(g.flops_per_unit), "params_per_unit": _sig(g.params_per_unit),
        "flops_share": _sig(flops / totals["flops"]) if totals["flops"] else 0.0,
        "params_share": _sig(params / totals["params"]) if totals["params"] else 0.0,
        "tensors": tensors[:_MAX_LIST], "n_tensors": len(tensors),
        "values": values[:_MAX_LIST], "n_values": len(values), "virtual": virtual[:_MAX_LIST],
        "where": list(g.where)[:_MAX_LIST], "nodes": touch,
        "scores": _score_summary(scores, kept), "decision": decision,
    }


def fold_depth(paths: list[str], max_nodes: int) -> int:
    """The deepest module-path depth at which folding leaves at most ``max_nodes`` boxes
    (0: no folding needed)."""
    if len(paths) <= max_nodes:
        return 0
    split = [p.split(".") if p else [] for p in paths]
    deepest = max((len(s) for s in split), default=0)
    for depth in range(deepest, 0, -1):
        boxes = len({".".join(s[:depth]) if len(s) >= depth else f"#{i}" for i, s in enumerate(split)})
        if boxes <= max_nodes:
            return depth
    return 1


def graph_data(a: Analysis, *, plan: Plan | None = None, scores: list[np.ndarray] | None = None,
               title: str = "", max_nodes: int = 30, targets: list[dict] | None = None) -> dict:
    """Everything the page draws, as a JSON-ready dict (see the module docstring). ``targets``
    holds :func:`surgeon.viz.targets.target_plans` records for the slider; the page opens
    folded by module (:mod:`surgeon.viz.overview`) unless at most ``max_nodes`` ops show."""
    drawn, attr_to = _drawn_nodes(a.traced.gm)
    ids = {n.name: i for i, n in enumerate(drawn)}
    outputs, touch = _touching(a, ids, attr_to)
    nodes = _nodes(a, drawn, outputs, touch)
    edges = sorted({(ids[p.name], ids[n.name]) for n in drawn for p in n.all_input_nodes if p.name in ids})
    hidden = {n["id"] for n in nodes if n["hide"]}
    shown = [not n["hide"] for n in nodes]
    fold_list, deepest = folds([n["path"] for n in nodes], shown, a.model)
    for n, f in zip(nodes, deepest):
        n["fold"] = f
    totals = {"flops": float(a.cost("flops").base), "params": float(a.cost("params").base)}
    colors = group_colors(a.groups)
    score_of = {g.id: s for g, s in zip(a.groups, scores)} if scores is not None else {}
    groups = [_group(g, colors.get(g.id), np.asarray(score_of[g.id]) if g.id in score_of else None,
                     plan, touch[g.id], totals) for g in a.groups]
    plan_info = None
    if plan is not None:
        plan_info = {"summary": plan.summary(), "target": plan.target, "metric": plan.metric,
                     "ratio": _sig(plan.ratio), "criterion": plan.criterion, "round_to": plan.round_to}
    return {
        "title": title or type(a.model).__name__, "mode": a.traced.mode,
        "totals": {**totals, "nodes": len(nodes), "groups": len(a.groups),
                   "prunable": sum(g.prunable for g in a.groups), "hidden": len(hidden)},
        "nodes": nodes, "edges": [list(e) for e in edges], "bridges": bridges(edges, hidden, len(nodes)),
        "groups": groups, "plan": plan_info, "folds": fold_list,
        "open": overview_open(fold_list, deepest, shown, max_nodes), "targets": targets or [],
        "foldDepth": fold_depth([n["path"] for n in nodes], max_nodes), "grey": GREY,
    }
