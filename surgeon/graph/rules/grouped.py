"""Grouped convs whose output is split into its groups right after (ResNeSt's split attention:
``conv(groups=radix)`` then ``x.reshape(B, radix, C, H, W)``, summed or softmaxed over radix).

A grouped conv's unit is normally a whole group (its inputs, its outputs and ``groups``). When
the code reshapes the output to ``(groups, C)`` and works per radix slice, a group cannot go
(the radix factor is written in the code) but position ``p`` of every group can: output channels
``p, p + C, ...`` and, on the input side, column ``q`` of every group's weight with the input
channels ``q, q + cin/groups, ...``. ``groups`` is then kept.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .base import RuleContext

aten = torch.ops.aten
_RESHAPES = {("call_method", "view"), ("call_method", "reshape"), ("call_function", torch.reshape),
             ("call_function", aten.view.default), ("call_function", aten.reshape.default),
             ("call_function", aten._unsafe_view.default)}
_DEPTH = 4  # per-channel ops (norm, activation, dropout) between the conv and the reshape


def split_into_groups(ctx: RuleContext, groups: int) -> bool:
    """Is this conv's output, through ops that keep its shape, reshaped to ``(N, groups, C, ...)``?"""
    out = ctx.out_shape
    if out is None or len(out) < 3:
        return False
    frontier = [ctx.node]
    for _ in range(_DEPTH):
        nxt = []
        for node in frontier:
            for user in node.users:
                shape = ctx.traced.shape(user)
                if shape is None or not user.args or user.args[0] is not node:
                    continue
                if (user.op, user.target) in _RESHAPES:
                    if len(shape) >= 3 and shape[0] == out[0] and shape[1] == groups and shape[2] * groups == out[1]:
                        return True
                elif tuple(shape) == tuple(out):
                    nxt.append(user)
        frontier = nxt
    return False


def couple_group_positions(ctx: RuleContext, x: fx.Node, cdim: int, weight, groups: int) -> None:
    """Units are positions within the groups: output channel j is unit ``j % (cout / groups)``;
    input channel i is column ``i % (cin / groups)`` of the weight."""
    cin, cout = ctx.shape(x)[cdim], ctx.out_shape[cdim]
    ctx.eq(ctx.out(cdim), weight(0))
    ctx.slots(ctx.out(cdim), ctx.virtual("group_positions", cout // groups), cout // groups)
    ctx.slots(ctx.v(x, cdim), weight(1), cin // groups)
