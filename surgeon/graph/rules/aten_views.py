"""Transposing views written as tensor attributes: ``w.T``, ``w.mT``, ``w.H``, ``w.mH``.

torch.fx records ``x @ self.weight.T`` as ``getattr(weight, "T")``; torch.export records it as
``aten.numpy_T`` (``mT`` as ``aten.mT``, ``adjoint`` as ``aten.adjoint``). Each is a permutation
of the dims: ``T`` reverses them all, the matrix forms swap the last two. Any other tensor
attribute read through ``getattr`` has no rule: its dims are frozen with the attribute's name.
"""

from __future__ import annotations

import torch

from .base import RuleContext, register

aten = torch.ops.aten

_REVERSE_ALL = ("T", "H", "numpy_T")
_SWAP_LAST = ("mT", "mH", "adjoint", "matrix_H")
_SAME = ("data", "real")  # a real tensor's .real is itself; .data is the same values


def _permute(ctx: RuleContext, x, kind: str) -> None:
    n = len(ctx.shape(x))
    perm = list(range(n))
    if kind in _REVERSE_ALL:
        perm = perm[::-1]
    elif kind in _SWAP_LAST and n >= 2:
        perm[-1], perm[-2] = perm[-2], perm[-1]
    for o, i in enumerate(perm):
        ctx.eq(ctx.v(x, i), ctx.out(o))


@register(getattr)
def tensor_attribute(ctx: RuleContext) -> None:
    """``getattr(x, name)`` on a tensor, as fx records ``x.T``."""
    x, name = ctx.arg(0), ctx.arg(1)
    if ctx.shape(x) is None or ctx.out_shape is None:
        return
    if name in _REVERSE_ALL + _SWAP_LAST + _SAME:
        _permute(ctx, x, name)
        return
    for d in range(len(ctx.shape(x))):
        ctx.freeze(ctx.v(x, d), f"no coupling rule for Tensor.{name}")
    for d in range(len(ctx.out_shape)):
        ctx.freeze(ctx.out(d), f"no coupling rule for Tensor.{name}")


@register(aten.numpy_T, aten.mT, aten.mH, aten.adjoint, aten.matrix_H, "method:adjoint")
def transposing_view(ctx: RuleContext) -> None:
    """The ATen forms of the same views."""
    target = getattr(ctx.node.target, "overloadpacket", ctx.node.target)
    name = target.split(":")[-1] if isinstance(target, str) else target.__name__
    _permute(ctx, ctx.arg(0), name)
