"""Tensors made in forward: ``x.new_zeros(size)``, ``torch.zeros_like(x)``, ``torch.zeros(size)``,
``torch.arange(n)``, and ops that read only the dtype and device of a tensor argument
(``y.type_as(x)``, ``y.to(x)``).

* ``*_like(x)`` has ``x``'s shape at any width: its dims are tied to ``x``'s.
* ``x.new_*(size)`` reads only ``x``'s dtype and device; it and ``zeros(size)`` make a tensor of
  the sizes written in the call. Each size must follow the width it stands for: a size read from
  a tensor (``x.size(1)``, fx) is tied to that dim; a number kept in a module attribute is fixed
  through it (fx); on the torch.export path every size is a number, so the width is frozen and
  left to :mod:`surgeon.analysis.probe` to find out whether the code computes it from the width
  (then it follows pruning) or wrote it by hand (then it stays frozen).
* ``arange`` makes positions: its dim keeps its size.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .base import RuleContext, register
from .shape import SIZE_ARG, _find_attr, _probe
from .width import follow_size, reads_sizes

aten = torch.ops.aten

LIKE = (torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, aten.zeros_like,
        aten.ones_like, aten.empty_like, aten.full_like, "method:zero_", aten.zero_, aten.fill_,
        "method:fill_")
NEW = (aten.new_zeros, aten.new_ones, aten.new_empty, aten.new_full, "method:new_zeros",
       "method:new_ones", "method:new_empty", "method:new_full")
MADE = (torch.zeros, torch.ones, torch.empty, torch.full, aten.zeros, aten.ones, aten.empty, aten.full)
DTYPE_ONLY = (aten.type_as, "method:type_as", aten.to, "method:to")

for _op in (aten.new_zeros, aten.new_ones, aten.new_empty, aten.new_full):
    SIZE_ARG[_op] = 1
for _op in (aten.zeros, aten.ones, aten.empty, aten.full):
    SIZE_ARG[_op] = 0


ZERO_FILL = ("zeros_like", "empty_like", "zero_", "new_zeros", "new_empty", "zeros", "empty")


def _constant_fill(ctx: RuleContext) -> None:
    """A fill other than zero gives a removed unit a value no parameter makes: removing it is
    not exact (a zeroed producer no longer silences it)."""
    if _name(ctx) not in ZERO_FILL:
        for d in range(len(ctx.out_shape)):
            ctx.inexact(ctx.out(d), f"{_name(ctx)} fills a constant")


@register(*LIKE)
def like(ctx: RuleContext) -> None:
    """Same shape as ``x`` (the fill value, if a tensor, is a scalar: no dims)."""
    ctx.same_dims(ctx.arg(0), ctx.node)
    _constant_fill(ctx)


@register(*DTYPE_ONLY)
def dtype_only(ctx: RuleContext) -> None:
    """``y.type_as(x)``, ``y.to(x)``, ``y.to(dtype)``: ``y``'s values, ``x``'s dtype. ``x`` lends no
    dims, so its dims are left free of this op (it ties nothing)."""
    y = ctx.arg(0)
    ctx.same_dims(y, ctx.node)
    for other in list(ctx.node.args[1:]) + list(ctx.node.kwargs.values()):
        if isinstance(other, fx.Node) and ctx.shape(other) is not None:
            ctx.touched.update(ctx.v(other, d) for d in range(len(ctx.shape(other))))


def _spec(ctx: RuleContext, first: int) -> list:
    """The sizes a creation op is called with: ``zeros(2, 3)``, ``zeros((2, 3))``, ``new_zeros([2, 3])``."""
    args = list(ctx.node.args[first:])
    if "size" in ctx.node.kwargs:
        args = [ctx.node.kwargs["size"]]
    if args and isinstance(args[0], (list, tuple, torch.Size)):
        return list(args[0])
    return [a for a in args if isinstance(a, (int, fx.Node))]


def sizes_follow(ctx: RuleContext, spec: list, what: str) -> None:
    """Each output dim's written size must follow its width (see the module docstring)."""
    out = ctx.out_shape
    if len(spec) != len(out):
        return  # left to the default freeze
    for d, item in enumerate(spec):
        key = ctx.out(d)
        if isinstance(item, fx.Node):
            if not follow_size(ctx, key, item):
                ctx.freeze(key, f"{what} size computed from other widths")
        elif type(item) is int:
            found = _find_attr(ctx, item)
            if ctx.traced.mode == "export":
                _probe(ctx, key, d, item, found, f"{what} writes size {item}")
            elif found:
                ctx.touched.add(key)
                for module, attr in found:
                    ctx.attr_fix(module, attr, key)
            else:
                ctx.freeze(key, f"{what} writes size {item} in the code")


@reads_sizes
@register(*NEW)
def new(ctx: RuleContext) -> None:
    """``x.new_zeros(size)``: ``x`` lends only its dtype and device."""
    x = ctx.arg(0)
    ctx.touched.update(ctx.v(x, d) for d in range(len(ctx.shape(x))))
    sizes_follow(ctx, _spec(ctx, 1), f"Tensor.{_name(ctx)}")
    _constant_fill(ctx)


@reads_sizes
@register(*MADE)
def made(ctx: RuleContext) -> None:
    sizes_follow(ctx, _spec(ctx, 0), f"torch.{_name(ctx)}")
    _constant_fill(ctx)


@register(torch.arange, aten.arange)
def arange(ctx: RuleContext) -> None:
    """Positions ``0..n-1``: what reads them (an index, a mask) reads positions of that width."""
    for d in range(len(ctx.out_shape)):
        ctx.freeze(ctx.out(d), "arange makes positions: its length is kept")


def _name(ctx: RuleContext) -> str:
    target = getattr(ctx.node.target, "overloadpacket", ctx.node.target)
    return target.split(":")[-1] if isinstance(target, str) else target.__name__
