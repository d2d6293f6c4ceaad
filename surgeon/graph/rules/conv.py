"""Convolutions: plain, grouped, depthwise and transposed, as modules and as functions.

A plain conv ties its input channels to the weight's in-channel dim and its output channels to
the weight's out-channel dim. A grouped conv (``groups > 1``) is pruned a whole group at a time:
input channels, output channels and weight rows of group g are tied to slot g of a virtual
dimension whose kept count becomes the new ``groups``. Depthwise convs are the ``in/groups == 1``
case of the same rule, so a depthwise conv follows its input channel by channel.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .base import RuleContext, register
from .grouped import couple_group_positions, split_into_groups

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def couple_conv(ctx: RuleContext, x, weight, bias, groups: int, transposed: bool, owner: str | None):
    """Shared body. ``weight``/``bias`` are keys-makers: callables dim -> DimKey (or None)."""
    xs = ctx.shape(x)
    cdim = 1 if len(xs) == len(ctx.out_shape) and len(xs) >= 3 else 0
    cin, cout = xs[cdim], ctx.out_shape[cdim]
    w_in, w_out = (0, 1) if transposed else (1, 0)
    for d in range(cdim):  # batch
        ctx.eq(ctx.v(x, d), ctx.out(d))
    ctx.cost([weight(0), weight(1)])
    if groups == 1:
        ctx.eq(ctx.v(x, cdim), weight(w_in))
        ctx.eq(ctx.out(cdim), weight(w_out))
    elif not transposed and split_into_groups(ctx, groups):  # ResNeSt: a position of every group
        couple_group_positions(ctx, x, cdim, weight, groups)
    else:
        slot = ctx.virtual("groups", groups)
        ctx.blocks(ctx.v(x, cdim), slot, cin // groups)
        ctx.blocks(ctx.out(cdim), slot, cout // groups)
        if transposed:
            ctx.eq(ctx.v(x, cdim), weight(0))
            ctx.freeze(weight(1), "per-group width of a grouped transposed conv is kept")
        else:
            ctx.eq(ctx.out(cdim), weight(0))
            ctx.freeze(weight(1), "per-group width of a grouped conv is kept")
        if owner is not None:
            ctx.attr_fix(owner, "groups", slot)
    if bias is not None:
        ctx.eq(ctx.out(cdim), bias(0))


@register(*CONVS, *TRANSPOSED)
def conv_module(ctx: RuleContext) -> None:
    m = ctx.module
    w = ctx.param("weight")
    b = ctx.param("bias")
    couple_conv(ctx, ctx.arg(0, "input"), lambda d: ctx.p(w, d),
                (lambda d: ctx.p(b, d)) if b else None, m.groups,
                isinstance(m, TRANSPOSED), ctx.node.target)


def _owner_conv(ctx: RuleContext, w, groups: int) -> str | None:
    """The path of the conv module whose own forward made this call with its own weight and
    ``groups`` (torch.export records ``nn.Conv2d`` as ``aten.conv2d``): surgery updates that
    module's ``groups``, so the literal count follows pruning."""
    if not isinstance(w, fx.Node) or w.op != "get_attr" or not isinstance(w.target, str):
        return None
    path, _, leaf = w.target.rpartition(".")
    stack = ctx.node.meta.get("nn_module_stack") or {}
    inner = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()][-1:]
    try:
        mod = ctx.traced.model.get_submodule(path)
    except AttributeError:
        return None
    if leaf == "weight" and inner == [path] and isinstance(mod, nn.modules.conv._ConvNd) and mod.groups == groups:
        return path
    return None


def _functional(transposed: bool):
    def rule(ctx: RuleContext) -> None:
        x, w, b = ctx.arg(0, "input"), ctx.arg(1, "weight"), ctx.arg(2, "bias")
        groups = ctx.arg(7 if transposed else 6, "groups", 1)
        if transposed and len(ctx.node.args) <= 7:
            groups = ctx.node.kwargs.get("groups", 1)
        owner = _owner_conv(ctx, w, groups) if groups != 1 else None
        couple_conv(ctx, x, lambda d: ctx.v(w, d), (lambda d: ctx.v(b, d)) if b is not None else None,
                    groups, transposed, owner)
        for d in range(2, len(ctx.shape(w))):
            ctx.freeze(ctx.v(w, d), "the kernel size is kept")
        if groups != 1 and owner is None:
            ctx.freeze(ctx.v(x, 1), "functional grouped conv has a literal groups count")
    return rule


register(F.conv1d, F.conv2d, F.conv3d, torch.ops.aten.conv1d, torch.ops.aten.conv2d,
         torch.ops.aten.conv3d)(_functional(False))
register(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
         torch.ops.aten.conv_transpose1d, torch.ops.aten.conv_transpose2d,
         torch.ops.aten.conv_transpose3d)(_functional(True))
