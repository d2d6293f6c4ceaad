"""Ops whose result depends on the width they see: roll, narrow, gather, index_select,
take_along_dim, repeat_interleave, repeat, flip and unbind, and the helpers other rules use for
the same question.

Pruning a dim changes the width every op along it sees. Most ops do not care (a conv reads its
channels by index, ``flip`` reverses whatever it gets, ``repeat`` tiles whatever it gets), and
their ties say how kept indices move. Some do: ``torch.roll(y, 3, 1)`` moves channel i to
``(i + 3) % width``, so the same literal shift over fewer channels puts the kept ones somewhere
else; an index tensor names positions of the full width; a literal bound or size stays what it
was. Such a dim is frozen with :func:`depends_on_width`, whose reason names the op and where it
is, and the rest of the model is still pruned.

A rule that reads the int-valued arguments computed from widths (``x.size(1)``) registers itself
with :func:`reads_sizes`; for every other op :func:`surgeon.graph.couple.couple` marks the dims
those numbers come from inexact (``y / y.shape[1]`` is a mean by hand).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.fx as fx

from ..ir import DimKey
from .base import RuleContext, describe_target, register

__all__ = ["depends_on_width", "op_name", "reads_sizes", "READS_SIZES", "size_source", "follow_size",
           "whole_unbind", "stacked_whole", "unbind_count"]

aten = torch.ops.aten

READS_SIZES: set = set()  # rules that account for width-derived numbers among their arguments


def reads_sizes(rule):
    """Mark ``rule`` as one that handles the width-derived numbers it is called with itself."""
    READS_SIZES.add(rule)
    return rule


def op_name(ctx: RuleContext) -> str:
    """What the node calls, as a user would write it: ``torch.roll``, ``Tensor.flip``, ..."""
    node = ctx.node
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_module":
        return describe_target(type(ctx.module))
    target = node.target
    name = getattr(target, "__name__", None)
    if getattr(target, "__module__", None) in ("torch", None) and name and hasattr(torch, name) \
            and getattr(torch, name) is target:
        return f"torch.{name}"  # not torch._VariableFunctionsClass.roll
    return describe_target(getattr(target, "overloadpacket", target))


def depends_on_width(ctx: RuleContext, keys: Iterable[DimKey], dim: int, detail: str = "") -> None:
    """Freeze ``keys``: what this op computes along ``dim`` changes with that dim's width."""
    reason = f"depends on the width of dim {dim}: {op_name(ctx)} at {ctx.where}"
    if detail:
        reason += f" ({detail})"
    for key in keys:
        ctx.touched.add(key)
        ctx.c.freeze(key, reason)


def size_source(ctx: RuleContext, item: Any) -> DimKey | None:
    """The dim whose width the int-valued node ``item`` is (``x.size(1)``, ``x.shape[1]``)."""
    ref = ctx.size_refs.get(item.name) if isinstance(item, fx.Node) else None
    if isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[0], fx.Node) \
            and ctx.shape(ref[0]) is not None:
        return ctx.v(ref[0], ref[1])
    return None


def follow_size(ctx: RuleContext, key: DimKey, item: Any) -> bool:
    """If ``item`` reads the width of a dim as wide as ``key``, tie the two so they stay equal
    after pruning and say so; else False."""
    src = size_source(ctx, item)
    if src is None or ctx.c.sizes[src] != ctx.c.sizes[key]:
        return False
    n = ctx.c.sizes[key]
    ctx.rel(key, src, np.arange(n), np.arange(n))
    return True


def _ints(v: Any) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _pass_through(ctx: RuleContext, x, skip: int) -> None:
    for d in range(len(ctx.shape(x))):
        if d != skip:
            ctx.eq(ctx.v(x, d), ctx.out(d))


# -- roll -------------------------------------------------------------------------------------------
@reads_sizes
@register(torch.roll, "method:roll", aten.roll)
def roll(ctx: RuleContext) -> None:
    """Index i moves to ``(i + shift) % width``: after pruning the same shift over fewer indices
    lands the kept ones elsewhere (a whole turn of 16 is not one of 12), so a rolled dim is
    frozen unless the shift is 0."""
    x = ctx.arg(0)
    xs = ctx.shape(x)
    shifts, dims = ctx.arg(1, "shifts"), ctx.arg(2, "dims", None)
    if dims is None or dims == [] or dims == ():
        for d in range(len(xs)):
            depends_on_width(ctx, [ctx.v(x, d), ctx.out(d)], d, "rolls the flattened tensor")
        return
    moved: dict[int, list] = {}
    for s, d in zip(_ints(shifts), _ints(dims)):
        moved.setdefault(d % len(xs), []).append(s)
    for d, n in enumerate(xs):
        s = moved.get(d)
        if s is None or (all(type(v) is int for v in s) and sum(s) == 0):
            ctx.eq(ctx.v(x, d), ctx.out(d))
        else:
            shift = sum(ctx.value(v) for v in s) if all(isinstance(ctx.value(v), int) for v in s) else s
            depends_on_width(ctx, [ctx.v(x, d), ctx.out(d)], d, f"rolled by {shift}")


# -- narrow -----------------------------------------------------------------------------------------
@reads_sizes
@register(torch.narrow, "method:narrow", aten.narrow)
def narrow(ctx: RuleContext) -> None:
    """Only a narrow that keeps the whole dim and reads its length from that dim follows pruning;
    literal bounds do not (and unlike a slice, narrow does not clamp them)."""
    x = ctx.arg(0)
    xs = ctx.shape(x)
    dim = ctx.arg(1, "dim") % len(xs)
    start, length = ctx.arg(2, "start"), ctx.arg(3, "length")
    _pass_through(ctx, x, dim)
    a, b = ctx.v(x, dim), ctx.out(dim)
    if ctx.value(start) == 0 and ctx.value(length) == xs[dim] and follow_size(ctx, a, length):
        ctx.eq(a, b)
        return
    s, n = ctx.value(start), ctx.value(length)
    stop = s + n if isinstance(s, int) and isinstance(n, int) else "?"
    depends_on_width(ctx, [a, b], dim, f"narrowed to [{s}:{stop}]")


# -- index tensors ----------------------------------------------------------------------------------
def _indexed(ctx: RuleContext, x, idx, dim: int, broadcast: bool) -> None:
    """``out[..., j, ...] = x[..., idx[..., j, ...], ...]`` along ``dim``; other dims line up.

    Along ``dim`` the index values are positions of the full width, so that dim is frozen (in
    ``x``, the index and the output: what an output position holds is data, not a unit any
    parameter produces). Elsewhere the dims line up and an index buffer is sliced with its
    tensor; a dim of ``x`` the index does not cover whole (gather with a shorter index) is
    frozen too."""
    xs, ids, os_ = ctx.shape(x), ctx.shape(idx), ctx.out_shape
    for d in range(len(os_)):
        if d == dim:
            depends_on_width(ctx, [ctx.v(x, d), ctx.v(idx, d), ctx.out(d)], d,
                             "the index tensor holds positions of the full width")
            continue
        if xs[d] == os_[d]:
            ctx.eq(ctx.v(x, d), ctx.out(d))
        elif not (broadcast and xs[d] == 1):
            depends_on_width(ctx, [ctx.v(x, d), ctx.out(d)], d, "the index tensor covers only part of it")
        if ids[d] == os_[d]:
            ctx.eq(ctx.v(idx, d), ctx.out(d))


@register(torch.gather, "method:gather", aten.gather)
def gather(ctx: RuleContext) -> None:
    x, idx = ctx.arg(0), ctx.arg(2, "index")
    _indexed(ctx, x, idx, ctx.arg(1, "dim") % len(ctx.shape(x)), broadcast=False)


@register(torch.take_along_dim, "method:take_along_dim")
def take_along_dim(ctx: RuleContext) -> None:
    x, idx, dim = ctx.arg(0), ctx.arg(1, "indices"), ctx.arg(2, "dim")
    xs = ctx.shape(x)
    if dim is None or len(ctx.shape(idx)) != len(xs):  # flattened, or an index of another rank
        for d in range(len(xs)):
            depends_on_width(ctx, [ctx.v(x, d)], d, "indexes the flattened tensor")
        return
    _indexed(ctx, x, idx, dim % len(xs), broadcast=True)


@register(torch.index_select, "method:index_select", aten.index_select)
def index_select(ctx: RuleContext) -> None:
    x, idx = ctx.arg(0), ctx.arg(2, "index")
    dim = ctx.arg(1, "dim") % len(ctx.shape(x))
    _pass_through(ctx, x, dim)
    keys = [ctx.v(x, dim), ctx.out(dim)] + [ctx.v(idx, d) for d in range(len(ctx.shape(idx)))]
    depends_on_width(ctx, keys, dim, "the index tensor holds positions of the full width")


# -- repeats and reversals: they depend on the width, and the ties say how ------------------------
@register("method:repeat", torch.tile, "method:tile", aten.repeat)
def repeat(ctx: RuleContext) -> None:
    """Output j copies input ``j % width``: the kept inputs tile in order at any width, which is
    where the kept output indices sit."""
    x = ctx.arg(0)
    xs, os_ = ctx.shape(x), ctx.out_shape
    off = len(os_) - len(xs)
    for d, n in enumerate(xs):
        m = os_[d + off]
        if m == n:
            ctx.eq(ctx.v(x, d), ctx.out(d + off))
        else:
            ctx.rel(ctx.v(x, d), ctx.out(d + off), np.arange(m) % n, np.arange(m))


def _flip_dims(ctx: RuleContext) -> list[int]:
    """``torch.flip(x, [1, 2])``, ``x.flip(1, 2)``, ``x.flip(1)``, ``fliplr`` and ``flipud``."""
    name = ctx.node.target if isinstance(ctx.node.target, str) else getattr(ctx.node.target, "__name__", "")
    if name.endswith("fliplr"):
        return [1]
    if name.endswith("flipud"):
        return [0]
    dims = list(ctx.node.args[1:]) if len(ctx.node.args) > 2 else ctx.arg(1, "dims")
    return [dims] if isinstance(dims, int) else list(dims)


@register(torch.flip, "method:flip", aten.flip, torch.fliplr, torch.flipud, "method:fliplr", "method:flipud")
def flip(ctx: RuleContext) -> None:
    """Index i goes to ``width - 1 - i``. Kept indices come out in reverse order at any width,
    which is where the reversed kept indices of the output sit: the tie holds after pruning."""
    x = ctx.arg(0)
    dims = [d % len(ctx.shape(x)) for d in _flip_dims(ctx)]
    for d, n in enumerate(ctx.shape(x)):
        if d in dims:
            ctx.rel(ctx.v(x, d), ctx.out(d), np.arange(n), n - 1 - np.arange(n))
        else:
            ctx.eq(ctx.v(x, d), ctx.out(d))


# -- unbind: one piece per index --------------------------------------------------------------------
def whole_unbind(ctx: RuleContext, seq) -> tuple | None:
    """``(x, dim)`` when ``seq`` is the whole result of ``x.unbind(dim)``, passed on as is."""
    if not isinstance(seq, fx.Node) or not _is_unbind(seq):
        return None
    x = seq.args[0]
    dim = seq.kwargs.get("dim", seq.args[1] if len(seq.args) > 1 else 0)
    return x, dim % len(ctx.shape(x))


def _is_unbind(node: fx.Node) -> bool:
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return node.op in ("call_function", "call_method") and name.split(".")[0] == "unbind"


def stacked_whole(node: fx.Node) -> bool:
    """Is every use of the tuple ``node`` a stack of all of it? Then the number of pieces is
    never written down: after pruning there are fewer, and the stack takes them all."""
    return bool(node.users) and all(
        u.op == "call_function" and u.target in (torch.stack, aten.stack.default) and u.args
        and u.args[0] is node and node not in u.args[1:] and node not in u.kwargs.values()
        for u in node.users)


def unbind_count(ctx: RuleContext, x, dim: int) -> None:
    """One piece per index: the code that takes the pieces one by one (``r, g, b = x.unbind(1)``)
    holds the width; a stack of the whole tuple does not, and ties the dim itself."""
    if stacked_whole(ctx.node):
        ctx.touched.add(ctx.v(x, dim))  # the stack rule ties it to the stacked dim
    else:
        depends_on_width(ctx, [ctx.v(x, dim)], dim, "unbind makes one piece per index")


# -- repeat_interleave ---------------------------------------------------------------------------------
@register(torch.repeat_interleave, "method:repeat_interleave", aten.repeat_interleave)
def repeat_interleave(ctx: RuleContext) -> None:
    """Output j copies input ``j // r`` for a literal count r: kept inputs keep their blocks, in
    order, at any width. Per-element counts (a tensor) or a flattened input are frozen."""
    x = ctx.arg(0)
    xs = ctx.shape(x)
    reps, dim = ctx.arg(1, "repeats"), ctx.arg(2, "dim")
    if xs is None or ctx.out_shape is None:
        return
    if dim is None or type(reps) is not int:
        for d in range(len(xs)):
            depends_on_width(ctx, [ctx.v(x, d)], d, "repeats by per-element counts or flattened")
        return
    dim %= len(xs)
    _pass_through(ctx, x, dim)
    ctx.blocks(ctx.out(dim), ctx.v(x, dim), reps)
