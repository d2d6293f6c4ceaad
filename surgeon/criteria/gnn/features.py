"""Features of a model's pruning groups and units, and the typed graph the metanetwork reads.

Nodes are the model's groups (all of them, prunable or not) and the units of every prunable
group. Edges follow the data flow:

* group A -> group B when a weight reads A's channels (its dim 1) and writes B's (its dim 0),
  typed by the op (conv, linear, attention) and by what B is (residual: several producers write
  it; concat: this producer writes only part of it); a weight that reads and writes one group
  (attention projections, a depthwise conv, a residual branch) is a typed self-loop;
* unit u of A -> unit v of B for the strongest weights between them (the top ``UNIT_TOPK``
  sources of every v), carrying the weight's share;
* unit <-> its group (member);
* a whole-layer unit (``layers=True``) -> every group with a weight inside that layer (contains).

Every edge but a self-loop also exists reversed (a ``reverse`` flag), so messages pass both ways.

Per-unit features are normalised within the group (log of the ratio to the group mean, and the
rank), so the network sees how a unit compares with its siblings whatever the layer's scale:
L2 and L1 magnitude (as :class:`surgeon.criteria.Magnitude` computes them), BatchNorm |gamma|,
parameters per unit, first-order Taylor ``|sum w * dL/dw|`` and mean |activation| of the
producers. Group features: depth, width, FLOPs and parameter share, coupling type, the kind of
unit (channel, head, whole layer, expert) and, with data, the group's Taylor score per unit of
cost compared with the other groups.

Whole-layer units own no weight slices: their base score and ``influence`` feature are the
layer's Block Influence on the data (:func:`surgeon.criteria.layer_scores`; the weights' RMS
without data), ``params`` its parameter count.

Without data the Taylor and activation features are zero and ``has_data`` is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..base import Magnitude, combine, per_index
from ..layer_influence import layer_scores
from ...graph.groups import PruneGroup
from ...graph.trace import eval_mode, run_model

__all__ = ["UNIT_FEATURES", "GROUP_FEATURES", "EDGE_TYPES", "UNIT_TOPK", "ModelFeatures",
           "model_features", "to_pyg", "taylor_scores", "activation_scores"]

UNIT_FEATURES = ("l2", "l1", "bn", "params", "taylor", "act", "l2_rank", "taylor_rank", "act_rank",
                 "frozen", "influence", "influence_rank")
GROUP_FEATURES = ("depth", "log_units", "flops_share", "params_share", "conv", "linear", "attention",
                  "residual", "concat", "has_bn", "inexact", "prunable", "producers", "consumers",
                  "g_taylor", "g_act", "has_data", "heads", "layers", "experts")
EDGE_TYPES = ("conv", "linear", "attention", "residual", "concat", "member", "unit", "reverse", "weight",
              "contains")
UNIT_TOPK = 3
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass
class ModelFeatures:
    """Everything the metanetwork reads about one model, as numpy arrays."""

    unit_x: list[np.ndarray]  # per prunable group: (n_units, len(UNIT_FEATURES))
    group_x: np.ndarray  # (n_groups, len(GROUP_FEATURES))
    prunable: list[int]  # indices of the prunable groups
    flow: list[tuple[int, int, np.ndarray]]  # (group a, group b, edge type vector)
    unit_flow: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]  # (ga, gb, ua, ub, share)
    contains: list[tuple[int, int, int]]  # (layer group, its unit, a group with a weight inside that layer)
    base: list[np.ndarray]  # base criterion scores, per group (all groups)
    base_name: str


# -- small helpers --------------------------------------------------------------------------------
def _module(model: nn.Module, qualname: str) -> tuple[nn.Module | None, str]:
    mod_name, _, leaf = qualname.rpartition(".")
    try:
        return (model.get_submodule(mod_name) if mod_name else model), leaf
    except AttributeError:
        return None, leaf


def _param(model: nn.Module, qualname: str) -> torch.Tensor | None:
    mod, leaf = _module(model, qualname)
    return None if mod is None else mod._parameters.get(leaf)


def _op_type(model: nn.Module, qualname: str) -> str:
    mod, leaf = _module(model, qualname)
    parent, _ = _module(model, qualname.rpartition(".")[0]) if "." in qualname else (None, "")
    if isinstance(mod, nn.MultiheadAttention) or isinstance(parent, nn.MultiheadAttention):
        return "attention"
    if isinstance(mod, _CONV):
        return "conv"
    return "linear"


def _within(x: np.ndarray) -> np.ndarray:
    """log of the ratio to the group mean, clipped; zeros when the group carries no signal."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    m = x.mean() if x.size else 0.0
    if not np.isfinite(m) or m <= 0:
        return np.zeros_like(x)
    return np.clip(np.log(x / m + 1e-2), -5.0, 5.0)


def _rank(x: np.ndarray) -> np.ndarray:
    if x.size < 2 or np.ptp(x) == 0:
        return np.zeros_like(x, dtype=np.float64)
    return np.argsort(np.argsort(x, kind="stable"), kind="stable") / (x.size - 1) - 0.5


def _batches(data: Any) -> list:
    if data is None:
        return []
    if isinstance(data, (torch.Tensor, dict)):
        return [data]
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor) \
            and isinstance(data[1], torch.Tensor) and data[1].dtype == torch.long and data[1].dim() == 1:
        return [data]  # one (inputs, labels) batch
    return list(data)


def _loss(model: nn.Module, batch: Any, loss_fn: Callable | None) -> torch.Tensor:
    """``loss_fn(model(x), y)`` for an ``(x, y)`` batch (cross-entropy by default); a batch with no
    labels uses the output's mean square (the output's sensitivity)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        out = run_model(model, batch[0])
        return (loss_fn or F.cross_entropy)(out, batch[1])
    out = run_model(model, batch)
    if loss_fn is not None:
        return loss_fn(out)
    out = out if isinstance(out, torch.Tensor) else out[0]
    return out.float().pow(2).mean()


# -- data-aware scores ------------------------------------------------------------------------------
# TODO(criteria branch): the registry's "taylor" and "activation" criteria
# (get_criterion("taylor", data=..., loss_fn=...)) will cover these two. The metanetwork keeps
# these private definitions because the shipped checkpoint was trained on them; switching needs
# a retrain with `python -m surgeon.criteria.gnn.train`.
def taylor_scores(model: nn.Module, groups: list[PruneGroup], data: Any,
                  loss_fn: Callable | None = None) -> list[np.ndarray]:
    """Per unit, ``|sum of w * dL/dw|`` over every parameter slice the unit owns, summed over
    batches: the first-order loss change of removing the unit. The model is not modified
    (gradients come from ``torch.autograd.grad``; no ``.grad`` is written; eval mode)."""
    names = sorted({m.name for g in groups for m in g.tensors if _param(model, m.name) is not None})
    params = [_param(model, n) for n in names]
    out = [np.zeros(g.n_units) for g in groups]
    with eval_mode(model):
        for batch in _batches(data):
            with torch.enable_grad():
                loss = _loss(model, batch, loss_fn)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            wg = {n: (p.detach() * g).float() for n, p, g in zip(names, params, grads) if g is not None}
            for gi, g in enumerate(groups):
                tot = np.zeros(g.n_units)
                for m in g.tensors:
                    t = wg.get(m.name)
                    if t is None or t.dim() <= m.dim:
                        continue
                    dims = [d for d in range(t.dim()) if d != m.dim]
                    s = (t.sum(dim=dims) if dims else t).double().cpu().numpy()
                    tot += np.bincount(m.unit_of, weights=s, minlength=g.n_units)
                out[gi] += np.abs(tot)
    return out


def activation_scores(model: nn.Module, groups: list[PruneGroup], data: Any) -> list[np.ndarray]:
    """Per unit, mean |output| of the conv, linear and norm layers that produce it (each
    producer mean-normalised, then summed, as :func:`surgeon.criteria.combine` does)."""
    producers: dict[str, list[tuple[int, Any]]] = {}
    for gi, g in enumerate(groups):
        for m in g.tensors:
            mod, leaf = _module(model, m.name)
            if leaf == "weight" and m.dim == 0 and isinstance(mod, (nn.Linear,) + _CONV + _NORM):
                producers.setdefault(m.name.rpartition(".")[0], []).append((gi, m))
    sums: dict[tuple[int, tuple], np.ndarray] = {}

    def hook(name):
        def fn(mod, _inp, out):
            if not isinstance(out, torch.Tensor):
                return
            cdim = 1 if isinstance(mod, _CONV + (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) else out.dim() - 1
            dims = [d for d in range(out.dim()) if d != cdim]
            a = out.detach().abs().float().mean(dim=dims).double().cpu().numpy()
            for gi, m in producers[name]:
                if a.shape[0] == len(m.unit_of):
                    key = (gi, m.key)
                    sums[key] = sums.get(key, 0) + a
        return fn

    hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in producers]
    try:
        with eval_mode(model), torch.no_grad():
            for batch in _batches(data):
                run_model(model, batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for gi, g in enumerate(groups):
        parts = [(m.unit_of, sums[(gi, m.key)]) for m in g.tensors if (gi, m.key) in sums]
        out.append(combine(g, parts))
    return out


# -- the features ----------------------------------------------------------------------------------
def _bn_scores(model: nn.Module, g: PruneGroup) -> np.ndarray | None:
    parts = []
    for m in g.tensors:
        mod, leaf = _module(model, m.name)
        if leaf == "weight" and isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.weight is not None:
            parts.append((m.unit_of, per_index(mod.weight.detach(), 0, 1)))
    return combine(g, parts) if parts else None


def _params_per_unit(model: nn.Module, g: PruneGroup) -> np.ndarray:
    tot = np.zeros(g.n_units)
    for m in g.tensors:
        t = _param(model, m.name)
        if t is not None and t.dim() > m.dim:
            tot += np.bincount(m.unit_of, minlength=g.n_units) * (t.numel() / t.shape[m.dim])
    return tot


def _is_experts(g: PruneGroup) -> bool:
    """Whole experts: a top-k router's floor, the per-module experts' stacked dim, or the fused
    experts' stacked ``gate_up_proj`` (as :func:`surgeon.analysis.moe.unit_kinds` names them)."""
    return g.min_units > 1 or any(str(m.key[1]).startswith("expert:") for m in g.members) \
        or any(m.name.endswith("gate_up_proj") and m.dim == 0 for m in g.tensors)


def _layer_units(model: nn.Module, g: PruneGroup, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """(Block Influence on ``data`` -- the weights' RMS without data --, parameter count) per layer."""
    scores, _how = layer_scores(model, list(g.layers), data if _batches(data) else None)
    params = np.array([sum(p.numel() for p in model.get_submodule(n).parameters()) for n in g.layers], float)
    return np.maximum(np.nan_to_num(np.asarray(scores, dtype=np.float64)), 0.0), params


def _contains(groups: list[PruneGroup], prunable: list[int]) -> list[tuple[int, int, int]]:
    """(layer group, unit, group) for every group with a weight inside that unit's layer."""
    out = []
    for gi in prunable:
        for u, name in enumerate(groups[gi].layers or ()):
            inside = name + "."
            out += [(gi, u, gj) for gj, h in enumerate(groups) if gj != gi
                    and any(m.name.startswith(inside) for m in h.tensors)]
    return out


def _flow(model: nn.Module, groups: list[PruneGroup]):
    """Group-level data-flow edges and, per group, its producers and consumers."""
    where = {m.key: gi for gi, g in enumerate(groups) for m in g.tensors}
    unit_of = {m.key: m.unit_of for g in groups for m in g.tensors}
    producers = [[] for _ in groups]
    consumers = [0] * len(groups)
    edges = []
    seen = set()
    for key, b in where.items():
        name, dim = key[1], key[2]
        if dim != 0 or name in seen:
            continue
        seen.add(name)
        t = _param(model, name)
        if t is None or t.dim() < 2:
            continue
        op = _op_type(model, name)
        full = len(np.unique(unit_of[key])) == groups[b].n_units
        producers[b].append((name, op, full))
        a = where.get(("p", name, 1))
        if a is not None:
            consumers[a] += 1
            edges.append((a, b, name, op, full))
    return edges, producers, consumers, unit_of


def _depths(n: int, edges) -> np.ndarray:
    depth = np.zeros(n)
    for _ in range(n):  # longest path by relaxation; a DAG settles in at most n rounds
        changed = False
        for a, b, *_ in edges:
            if a != b and depth[b] < depth[a] + 1:
                depth[b] = depth[a] + 1
                changed = True
        if not changed:
            break
    return depth / max(depth.max(), 1.0)


def _unit_links(model, name, ga, gb, groups, unit_of):
    """Top-``UNIT_TOPK`` source units of A for each unit of B through weight ``name``."""
    t = _param(model, name).detach().float()
    w = t.abs().flatten(2).sum(-1) if t.dim() > 2 else t.abs()
    ub, ua = unit_of[("p", name, 0)], unit_of[("p", name, 1)]
    nb, na = groups[gb].n_units, groups[ga].n_units
    mat = np.zeros((nb, na))
    np.add.at(mat, (ub[:, None], ua[None, :]), w.double().cpu().numpy())
    share = mat / np.maximum(mat.sum(1, keepdims=True), 1e-12)
    rows = np.unique(ub)  # the units of B this weight writes (a concat member writes a part)
    k = min(UNIT_TOPK, len(np.unique(ua)))
    top = np.argsort(-share[rows], axis=1, kind="stable")[:, :k]
    dst = np.repeat(rows, k)
    src = top.reshape(-1)
    return ga, gb, src, dst, share[dst, src]


def model_features(model: nn.Module, groups: list[PruneGroup], data: Any = None,
                   loss_fn: Callable | None = None, base: str = "auto") -> ModelFeatures:
    """Compute every feature of ``groups`` (the model is not modified). ``base`` is the criterion
    the network corrects: "l2", "taylor", or "auto" (Taylor with data, L2 without)."""
    l2 = Magnitude(2).score(model, groups)
    l1 = Magnitude(1).score(model, groups)
    has_data = bool(_batches(data))
    taylor = taylor_scores(model, groups, data, loss_fn) if has_data else [np.zeros(g.n_units) for g in groups]
    act = activation_scores(model, groups, data) if has_data else [np.zeros(g.n_units) for g in groups]
    layer = {gi: _layer_units(model, g, data) for gi, g in enumerate(groups) if g.layers and g.prunable}
    edges, producers, consumers, unit_of = _flow(model, groups)
    depth = _depths(len(groups), edges)
    prunable = [gi for gi, g in enumerate(groups) if g.prunable]
    flops = np.array([g.flops_per_unit * g.n_units for g in groups])
    params = np.array([g.params_per_unit * g.n_units for g in groups])
    # a group's data score per unit of cost, compared with the median prunable group
    def rel(scores):
        v = np.array([scores[gi].mean() / max(groups[gi].flops_per_unit, groups[gi].params_per_unit, 1e-12)
                      for gi in range(len(groups))])
        ref = np.median(v[prunable]) if prunable else 0.0
        return np.clip(np.log((v + 1e-12) / (ref + 1e-12)), -5, 5) if has_data and ref > 0 else np.zeros(len(groups))
    g_taylor, g_act = rel(taylor), rel(act)
    group_x = np.zeros((len(groups), len(GROUP_FEATURES)))
    unit_x = []
    for gi, g in enumerate(groups):
        ops = {op for _, op, _ in producers[gi]}
        bn = _bn_scores(model, g)
        row = dict(depth=depth[gi], log_units=np.log2(g.n_units) / 8, flops_share=flops[gi] / max(flops.sum(), 1e-12),
                   params_share=params[gi] / max(params.sum(), 1e-12), conv="conv" in ops, linear="linear" in ops,
                   attention="attention" in ops or g.kind.value == "head",
                   residual=sum(full for *_, full in producers[gi]) >= 2,
                   concat=any(not full for *_, full in producers[gi]), has_bn=bn is not None,
                   inexact=not g.exact, prunable=g.prunable, producers=np.log1p(len(producers[gi])),
                   consumers=np.log1p(consumers[gi]), g_taylor=g_taylor[gi], g_act=g_act[gi], has_data=has_data,
                   heads=g.kind.value == "head", layers=bool(g.layers), experts=_is_experts(g))
        group_x[gi] = [float(row[k]) for k in GROUP_FEATURES]
        if g.prunable:
            bnv = bn if bn is not None else np.zeros(g.n_units)
            infl, lparams = layer.get(gi, (np.zeros(g.n_units), None))
            cols = dict(l2=_within(l2[gi]), l1=_within(l1[gi]), bn=_within(bnv),
                        params=_within(_params_per_unit(model, g) if lparams is None else lparams),
                        taylor=_within(taylor[gi]), act=_within(act[gi]), l2_rank=_rank(l2[gi]),
                        taylor_rank=_rank(taylor[gi]), act_rank=_rank(act[gi]), frozen=g.frozen_units.astype(float),
                        influence=_within(infl), influence_rank=_rank(infl))
            unit_x.append(np.stack([cols[k] for k in UNIT_FEATURES], 1))
    flow, unit_flow = _typed_flow(model, groups, edges, group_x, prunable, unit_of)
    if base == "auto":
        base = "taylor" if has_data else "l2"
    if base not in ("l2", "taylor") or (base == "taylor" and not has_data):
        raise ValueError(f"base must be 'l2', or 'taylor' with data, got {base!r} (data given: {has_data})")
    base_name = base
    base = list(taylor if base == "taylor" else l2)
    for gi, (infl, _) in layer.items():  # whole layers own no weight slices: their Block Influence
        base[gi] = infl
    return ModelFeatures(unit_x, group_x, prunable, flow, unit_flow, _contains(groups, prunable), base, base_name)


def _typed_flow(model, groups, edges, group_x, prunable, unit_of):
    """Group-level flow edges typed by op, residual and concat, and the unit links between
    prunable groups."""
    flow, unit_flow = [], []
    pset = set(prunable)
    for a, b, name, op, full in edges:
        t = np.zeros(len(EDGE_TYPES))
        t[EDGE_TYPES.index(op)] = 1
        t[EDGE_TYPES.index("residual")] = group_x[b, GROUP_FEATURES.index("residual")]
        t[EDGE_TYPES.index("concat")] = float(not full)
        flow.append((a, b, t))  # a == b (attention, depthwise, a residual branch): a typed self-loop
        if a != b and a in pset and b in pset:
            unit_flow.append(_unit_links(model, name, a, b, groups, unit_of))
    return flow, unit_flow


def to_pyg(f: ModelFeatures):
    """The features as a ``torch_geometric.data.Data`` graph.

    Node order: every group, then the units of each prunable group. ``x`` is ``[is_unit,
    is_group, unit features, group features]`` (a unit also carries its group's features);
    ``unit_nodes`` indexes the unit nodes, ``unit_group`` says which prunable group each belongs
    to, ``base`` holds the base criterion's scores of the units in the same order.
    """
    from ._pyg import require_pyg

    Data = require_pyg().data.Data
    n_groups, nu, ng = len(f.group_x), len(UNIT_FEATURES), len(GROUP_FEATURES)
    sizes = [u.shape[0] for u in f.unit_x]
    start = np.cumsum([n_groups] + sizes)[:-1]
    first = {gi: int(s) for gi, s in zip(f.prunable, start)}
    n = n_groups + sum(sizes)
    x = np.zeros((n, 2 + nu + ng))
    x[:n_groups, 1] = 1
    x[:n_groups, 2 + nu:] = f.group_x
    src, dst, attr = [], [], []

    def add(s, d, t):
        s, d = np.asarray(s, dtype=np.int64), np.asarray(d, dtype=np.int64)
        t = np.broadcast_to(t, (len(s), len(EDGE_TYPES))).copy()
        src.append(s), dst.append(d), attr.append(t)
        if (s == d).all():
            return  # a self-loop needs no reverse
        back = t.copy()
        back[:, EDGE_TYPES.index("reverse")] = 1
        src.append(d), dst.append(s), attr.append(back)

    unit_group = []
    for k, (gi, ux) in enumerate(zip(f.prunable, f.unit_x)):
        idx = first[gi] + np.arange(ux.shape[0])
        x[idx, 0] = 1
        x[idx, 2:2 + nu] = ux
        x[idx, 2 + nu:] = f.group_x[gi]
        unit_group.append(np.full(ux.shape[0], k))
        member = np.zeros(len(EDGE_TYPES))
        member[EDGE_TYPES.index("member")] = 1
        add(idx, np.full(len(idx), gi), member)
    for a, b, t in f.flow:
        add([a], [b], t)
    for ga, gb, ua, ub, share in f.unit_flow:
        t = np.zeros((len(ua), len(EDGE_TYPES)))
        t[:, EDGE_TYPES.index("unit")] = 1
        t[:, EDGE_TYPES.index("weight")] = share
        add(first[ga] + ua, first[gb] + ub, t)
    if f.contains:
        t = np.zeros(len(EDGE_TYPES))
        t[EDGE_TYPES.index("contains")] = 1
        add([first[gi] + u for gi, u, _ in f.contains], [gj for _, _, gj in f.contains], t)
    cat = (lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape))
    edge_index = torch.as_tensor(np.stack([cat(src, (0,)), cat(dst, (0,))]), dtype=torch.long)
    return Data(x=torch.as_tensor(x, dtype=torch.float32), edge_index=edge_index,
                edge_attr=torch.as_tensor(cat(attr, (0, len(EDGE_TYPES))), dtype=torch.float32),
                unit_nodes=torch.as_tensor(np.arange(n_groups, n), dtype=torch.long),
                unit_group=torch.as_tensor(cat(unit_group, (0,)), dtype=torch.long),
                base=torch.as_tensor(cat([f.base[gi] for gi in f.prunable], (0,)), dtype=torch.float64),
                num_nodes=n)
