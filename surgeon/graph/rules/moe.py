"""Coupling rules: mixture-of-experts routing and grouped matmuls (the stacked expert layout).

Transformers 5 keeps the routed experts of a layer stacked, ``gate_up_proj: [E, 2I, H]`` and
``down_proj: [E, H, I]``, and runs them as one grouped matmul (``torch._grouped_mm``, or the
``transformers::grouped_mm_fallback`` custom op when compiling or exporting) over the tokens
sorted by expert, with ``offs`` (a cumulative count of tokens per expert) marking each expert's
rows. Two widths are prunable there:

* the expert intermediate width ``I``: the contracted and output widths of the grouped matmuls,
  tied like a Linear's (one width for every expert of a layer: a stacked tensor has one);
* whole experts ``E``: the stacked dim 0, tied to ``offs`` and, through the router's top-k, to
  the router's output width. The top-k indices are expert ids (values, not a dim), so the tie is
  made only where every use of the ids is understood: sorted, reshaped, counted by ``histc``
  with ``E`` bins. Removing an expert reroutes its tokens (softmax and top-k over fewer
  experts), so the unit is inexact; the top-k must keep at least ``k`` experts
  (:mod:`surgeon.analysis.moe` reads ``k`` from the top-k node).

The module attribute ``num_experts`` (read by the forward: ``histc`` bins) is fixed by surgery
(``intermediate_dim`` is not: no forward reads it, and with ``I == H`` nothing in the graph says
which width it names); the config fields (``num_experts`` / ``num_local_experts``, ``moe_intermediate_size``)
are learnt by :mod:`surgeon.analysis.hf` from the class itself.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx

from .base import RuleContext, register
from .width import depends_on_width

aten = torch.ops.aten

# transformers registers its fallback op on import: keyed by name, so transformers need not be
GROUPED_MM_FALLBACK = "fn:torch._ops.transformers.transformers::grouped_mm_fallback"
_GROUPED_MM_KEYS = [aten._grouped_mm, GROUPED_MM_FALLBACK] + [
    f for f in (getattr(torch, "_grouped_mm", None), getattr(torch.nn.functional, "grouped_mm", None))
    if f is not None]


def _freeze_all(ctx: RuleContext, why: str) -> None:
    for n in ctx.node.all_input_nodes:
        s = ctx.shape(n)
        for d in range(len(s or ())):
            ctx.freeze(ctx.v(n, d), why)
    for d in range(len(ctx.out_shape or ())):
        ctx.freeze(ctx.out(d), why)


@register(*_GROUPED_MM_KEYS)
def grouped_mm(ctx: RuleContext) -> None:
    """``out[S, N] = a[S, K] @ b[E, K, N]`` with rows grouped by ``offs[E]``: K and N as a
    Linear's in and out widths, shared by every expert; E tied to the offsets."""
    a, b, offs = ctx.arg(0), ctx.arg(1), ctx.arg(2, "offs")
    sa, sb, so = ctx.shape(a), ctx.shape(b), ctx.out_shape
    if sa is None or sb is None or so is None or (len(sa), len(sb), len(so)) != (2, 3, 2):
        _freeze_all(ctx, "a grouped matmul other than 2-D tokens x 3-D stacked experts")
        return
    ctx.eq(ctx.v(a, 0), ctx.out(0))
    k, n = ctx.v(a, 1), ctx.out(1)
    ctx.eq(k, ctx.v(b, 1))
    ctx.eq(n, ctx.v(b, 2))
    if isinstance(offs, fx.Node) and ctx.shape(offs) == (sb[0],):
        ctx.eq(ctx.v(b, 0), ctx.v(offs, 0))
    else:
        ctx.freeze(ctx.v(b, 0), "grouped matmul without per-expert offsets")
    ctx.cost([k, n])


@register(torch.topk, "method:topk", aten.topk)
def topk(ctx: RuleContext) -> None:
    """Values and indices of the ``k`` largest along ``dim``: the other dims pass through; the
    selected dim is prunable only where the indices are expert ids used as understood (see the
    module docstring), otherwise its width matters (positions) and it is frozen."""
    x = ctx.arg(0)
    xs = ctx.shape(x)
    dim = ctx.arg(2, "dim", -1) % len(xs)
    for i in range(len(xs)):
        if i != dim:
            ctx.eq(ctx.v(x, i), ctx.out(i, 0))
            ctx.eq(ctx.v(x, i), ctx.out(i, 1))
    ctx.freeze(ctx.out(dim, 0), "the k slots of a top-k")
    ctx.freeze(ctx.out(dim, 1), "the k slots of a top-k")
    key = ctx.v(x, dim)
    uses = expert_id_uses(ctx.node)
    if not uses or any(_counts_over(u) != xs[dim] or _owner(ctx, "num_experts", xs[dim], u) is None
                       for u in uses):  # as histc() below ties them: else the router alone would shrink
        depends_on_width(ctx, [key], dim, "returns positions along this dim")
        return
    ctx.touched.add(key)
    ctx.inexact(key, "top-k routing over experts: a removed expert's tokens go to the next best")
    router = _owner(ctx, "num_experts", xs[dim])
    if router is not None:
        ctx.attr_fix(router, "num_experts", key)


@register(torch.histc, "method:histc", aten.histc)
def histc(ctx: RuleContext) -> None:
    """Tokens per expert: ``histc(ids, bins=E, min=0, max=E-1)`` over the expert ids of a
    top-k; its bins are the experts (``bins`` is the experts module's ``num_experts``)."""
    x = ctx.arg(0)
    for d in range(len(ctx.shape(x))):
        ctx.freeze(ctx.v(x, d), "counted by histc")
    src = id_source(ctx, x)
    bins = _counts_over(ctx.node)
    experts = _owner(ctx, "num_experts", bins) if bins is not None else None
    if src is None or experts is None or ctx.shape(src[0])[src[1]] != bins:
        # no module attribute holds the number of bins: surgery could not change it
        ctx.freeze(ctx.out(0), "histc bins are a number the graph holds")
        return
    ctx.eq(ctx.out(0), ctx.v(src[0], src[1]))
    ctx.attr_fix(experts, "num_experts", ctx.out(0))


# -- expert ids: where the indices of a top-k go ------------------------------------------------

def _key(node: fx.Node) -> Any:
    if node.op == "call_method":
        return f"method:{node.target}"
    t = node.target
    return t.overloadpacket if isinstance(t, torch._ops.OpOverload) else t


# ops that keep the values of a tensor of ids (a reshape, a dtype cast); sort keeps them in output 0
_PASS = {aten.reshape, aten.view, aten._unsafe_view, aten.flatten, aten.clone, aten.contiguous,
         aten.to, aten._to_copy, torch.reshape, torch.flatten,
         *(f"method:{m}" for m in ("view", "reshape", "flatten", "clone", "contiguous", "to", "float",
                                   "long", "int"))}
_SORT = {aten.sort, torch.sort, "method:sort"}
_COUNT = {aten.histc, torch.histc, "method:histc"}
_IGNORE = {aten._assert_tensor_metadata}  # export's dtype assertion: reads nothing


def expert_id_uses(top: fx.Node) -> list[fx.Node] | None:
    """The ``histc`` nodes counting the indices of top-k node ``top``, or None if the indices
    reach anything else (their values then index something this module does not know)."""
    found: list[fx.Node] = []
    for u in top.users:
        if u.op != "call_function" or u.target is not operator.getitem or not isinstance(u.args[1], int):
            return None
        if u.args[1] == 1 and not _follow_ids(u, found):
            return None
    return found


def _follow_ids(node: fx.Node, found: list[fx.Node]) -> bool:
    for u in node.users:
        k = _key(u)
        if k in _IGNORE:
            continue
        if k in _PASS:
            if not _follow_ids(u, found):
                return False
        elif k in _SORT:
            for g in u.users:  # sorted ids (0) stay ids; the permutation (1) is positions
                if g.target is not operator.getitem or not isinstance(g.args[1], int):
                    return False
                if g.args[1] == 0 and not _follow_ids(g, found):
                    return False
        elif k in _COUNT and u.args[0] is node:
            found.append(u)
        else:
            return False
    return True


def id_source(ctx: RuleContext, node: Any) -> tuple[fx.Node, int, int] | None:
    """``(x, dim, k)`` when ``node`` holds the expert ids of ``topk(x, k, dim)`` (through the ops
    that keep ids), else None."""
    while isinstance(node, fx.Node):
        k = _key(node)
        if k in _PASS:
            node = node.args[0]
        elif node.target is operator.getitem and isinstance(node.args[0], fx.Node):
            parent, i = node.args[0], node.args[1]
            pk = _key(parent)
            if pk in _SORT and i == 0:
                node = parent.args[0]
            elif pk in (aten.topk, torch.topk, "method:topk") and i == 1:
                x = parent.args[0]
                dim = parent.args[2] if len(parent.args) > 2 else parent.kwargs.get("dim", -1)
                k = ctx.value(parent.args[1] if len(parent.args) > 1 else parent.kwargs.get("k"))
                shape = ctx.shape(x)
                return (x, dim % len(shape), k) if shape is not None else None
            else:
                return None
        else:
            return None
    return None


def _counts_over(node: fx.Node) -> int | None:
    """The number of bins of a ``histc(ids, bins=E, min=0, max=E-1)``, or None if it is not one."""
    if _key(node) not in _COUNT:
        return None
    args = list(node.args) + [None] * 4
    bins = args[1] if args[1] is not None else node.kwargs.get("bins", 100)
    lo = args[2] if args[2] is not None else node.kwargs.get("min", 0)
    hi = args[3] if args[3] is not None else node.kwargs.get("max", 0)
    if not isinstance(bins, int) or lo != 0 or hi != bins - 1:
        return None
    return bins


def _owner(ctx: RuleContext, attr: str, value: int, node: fx.Node | None = None) -> str | None:
    """The innermost module of the user's model around ``node`` (this rule's node by default),
    the model itself last, whose int attribute ``attr`` equals ``value``: what surgery must set
    to the kept width."""
    node = ctx.node if node is None else node
    stack = node.meta.get("nn_module_stack") or {}
    paths = [""] + [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
    if node.op == "call_module":
        paths.append(node.target)
    for path in reversed(paths):
        try:
            mod = ctx.traced.model.get_submodule(path)
        except AttributeError:
            continue
        if type(getattr(mod, attr, None)) is int and getattr(mod, attr) == value:
            return path
    return None
