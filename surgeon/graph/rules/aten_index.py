"""Advanced indexing by index tensors: ``x[idx]``, ``x[:, idx]``, ``table[rel_index.view(-1)]``
(``aten.index`` on the torch.export path, ``getitem`` with tensors on the fx path).

The dims that index tensors select along hold positions of the full width, so they are frozen
(:func:`~surgeon.graph.rules.width.depends_on_width`). Every other dim of ``x`` passes through
to the output unchanged: the heads dim of a relative-position bias table gathered by a position
index (Swin) is the heads dim of the result. The output dims the index tensors make line up
with the index tensors' own dims where the index dtype is known to hold integers; a boolean
mask (its count is data) never ties them, and a mask over several dims freezes everything.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .base import RuleContext, register
from .width import depends_on_width

aten = torch.ops.aten

__all__ = ["couple_index"]


def _integer_index(t) -> bool:
    val = t.meta.get("val") if isinstance(t, fx.Node) else None
    dtype = getattr(val, "dtype", None)
    return dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) and dtype is not torch.bool


def _layout(xs: tuple, pos: list[int], b: tuple) -> list[tuple[str, int]]:
    """Where each output dim comes from: ``("x", d)`` or ``("b", k)`` (dim k of the broadcast
    index shape). Adjacent indexed dims are replaced in place, others move to the front."""
    rest = [("x", d) for d in range(len(xs)) if d not in pos]
    made = [("b", k) for k in range(len(b))]
    if pos == list(range(pos[0], pos[-1] + 1)):
        return [("x", d) for d in range(pos[0])] + made + [("x", d) for d in range(pos[-1] + 1, len(xs))]
    return made + rest


def _freeze_all(ctx: RuleContext, x, detail: str) -> None:
    for d in range(len(ctx.shape(x))):
        depends_on_width(ctx, [ctx.v(x, d)], d, detail)


def couple_index(ctx: RuleContext, x, indices: list) -> None:
    """``out = x[indices]`` with ``indices[d]`` an index tensor for dim d or None (all of it)."""
    xs, os_ = ctx.shape(x), ctx.out_shape
    pos = [d for d, t in enumerate(indices) if t is not None]
    shapes = [ctx.shape(indices[d]) for d in pos]
    if not pos or any(s is None for s in shapes):
        return _freeze_all(ctx, x, "indexed by values that are not index tensors")
    try:
        b = tuple(torch.broadcast_shapes(*shapes))
    except RuntimeError:
        return _freeze_all(ctx, x, "index tensors that do not broadcast")
    layout = _layout(xs, pos, b)
    sizes = [xs[k] if kind == "x" else b[k] for kind, k in layout]
    if tuple(sizes) != tuple(os_):  # a boolean mask over several dims: its count is data
        return _freeze_all(ctx, x, "indexed by a mask")
    for o, (kind, k) in enumerate(layout):
        if kind == "x":
            ctx.eq(ctx.v(x, k), ctx.out(o))
            continue
        for d in pos:
            t = indices[d]
            ts = ctx.shape(t)
            j = k - (len(b) - len(ts))
            if j >= 0 and ts[j] == b[k] and _integer_index(t):
                ctx.eq(ctx.v(t, j), ctx.out(o))  # output position j reads index position j
    for d in pos:
        t = indices[d]
        for j in range(len(ctx.shape(t))):
            if ctx.v(t, j) not in ctx.touched:
                ctx.freeze(ctx.v(t, j), "an index tensor whose dtype is not known to be integer")
    for d in pos:
        depends_on_width(ctx, [ctx.v(x, d)], d, "indexed by positions of the full width")


@register(aten.index)
def index(ctx: RuleContext) -> None:
    couple_index(ctx, ctx.arg(0), list(ctx.arg(1, "indices")))


@register(aten.index_put, aten.index_put_, "method:index_put_", "method:index_put")
def index_put(ctx: RuleContext) -> None:
    """``x[indices] = values``: the output is ``x``; the dims the indices select along are
    frozen; ``values`` broadcasts against ``x[indices]``, whose other dims are ``x``'s."""
    x, indices, values = ctx.arg(0), list(ctx.arg(1, "indices")), ctx.arg(2, "values")
    xs = ctx.shape(x)
    ctx.same_dims(x, ctx.node)
    pos = [d for d, t in enumerate(indices) if t is not None]
    shapes = [ctx.shape(indices[d]) for d in pos]
    if not pos or any(s is None for s in shapes):
        return _freeze_all(ctx, x, "written at values that are not index tensors")
    for d in pos:
        depends_on_width(ctx, [ctx.v(x, d)], d, "written at positions of the full width")
    vs = ctx.shape(values)
    if vs is None:
        return
    try:
        layout = _layout(xs, pos, tuple(torch.broadcast_shapes(*shapes)))
    except RuntimeError:
        return
    off = len(layout) - len(vs)
    for j, n in enumerate(vs):
        kind, k = layout[j + off] if j + off >= 0 else ("", -1)
        if kind == "x" and n == xs[k]:
            ctx.eq(ctx.v(values, j), ctx.v(x, k))
