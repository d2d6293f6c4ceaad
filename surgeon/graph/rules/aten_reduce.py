"""Scans and value reductions that the reduction rule of :mod:`.pooling` does not take:
``cumsum``, ``min``/``max`` (elementwise against a tensor, over a dim, or over everything),
``argmax``/``argmin``, ``all``/``any``.

``cumsum`` along a dim adds the earlier entries: a zeroed entry adds nothing, so removing it
leaves every kept partial sum as it was (the dim is tied to itself, inexact as a sum over units).
``max(x, dim)`` returns values and positions: the values are a reduction (inexact: a zeroed unit
can win); the positions count in the full width, so an ``argmax`` over a dim freezes it.
"""

from __future__ import annotations

import torch

from .base import RuleContext, register
from .elementwise import binary
from .width import depends_on_width

aten = torch.ops.aten


@register(torch.cumsum, "method:cumsum", aten.cumsum)
def cumsum(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    ctx.same_dims(x, ctx.node)
    dim = ctx.arg(1, "dim") % len(ctx.shape(x))
    ctx.inexact(ctx.out(dim), "a running sum over this dim")


def _reduced(ctx: RuleContext, x, dims: list[int], keep: bool, out_index: int | None,
             positions: bool) -> None:
    xs = ctx.shape(x)
    o = 0
    for d in range(len(xs)):
        if d in dims:
            if positions:
                depends_on_width(ctx, [ctx.v(x, d)], d, "returns positions along this dim")
            else:
                ctx.touched.add(ctx.v(x, d))
                ctx.inexact(ctx.v(x, d), "min/max over this dim")
            o += keep
            continue
        ctx.eq(ctx.v(x, d), ctx.out(o, out_index))
        if out_index is not None and not positions:
            ctx.eq(ctx.v(x, d), ctx.out(o, 1))  # the positions output has the same layout
        o += 1


@register(torch.max, torch.min, "method:max", "method:min", aten.max, aten.min)
def min_max(ctx: RuleContext) -> None:
    x, other = ctx.arg(0), ctx.arg(1, "other", ctx.arg(1, "dim"))
    if ctx.shape(other) is not None:
        return binary(ctx)  # torch.min(a, b): elementwise
    xs = ctx.shape(x)
    if isinstance(other, int):  # over a dim: a (values, indices) pair
        keep = bool(ctx.arg(2, "keepdim", False))
        _reduced(ctx, x, [other % len(xs)], keep, 0, positions=False)
        return
    _reduced(ctx, x, list(range(len(xs))), False, None, positions=False)


@register(torch.argmax, torch.argmin, "method:argmax", "method:argmin", aten.argmax, aten.argmin)
def argmax(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    xs = ctx.shape(x)
    dim = ctx.arg(1, "dim")
    dims = list(range(len(xs))) if dim is None else [dim % len(xs)]
    keep = bool(ctx.arg(2, "keepdim", False)) and dim is not None
    _reduced(ctx, x, dims, keep, None, positions=True)


@register(torch.all, torch.any, "method:all", "method:any", aten.all, aten.any)
def all_any(ctx: RuleContext) -> None:
    """A logical reduction: a removed unit no longer takes part (inexact, as any reduction)."""
    x = ctx.arg(0)
    xs = ctx.shape(x)
    dim = ctx.arg(1, "dim")
    dims = list(range(len(xs))) if dim is None else [d % len(xs) for d in ([dim] if isinstance(dim, int) else dim)]
    keep = bool(ctx.arg(2, "keepdim", False)) and dim is not None
    _reduced(ctx, x, dims, keep, None, positions=False)


@register(torch.sort, "method:sort", aten.sort, torch.argsort, "method:argsort", aten.argsort)
def sort(ctx: RuleContext) -> None:
    """Sorted along a dim: what lands at each position is data, and the positions count in the
    full width, so that dim is frozen; the other dims pass through to values and indices."""
    x = ctx.arg(0)
    xs = ctx.shape(x)
    dim = ctx.arg(1, "dim", -1)
    dim = (dim if isinstance(dim, int) else -1) % len(xs)
    outs = len(ctx.out_shapes()) or None
    for d in range(len(xs)):
        if d == dim:
            depends_on_width(ctx, [ctx.v(x, d)], d, "sorted along this dim")
            continue
        for i in range(outs or 1):
            ctx.eq(ctx.v(x, d), ctx.out(d, i if outs else None))
