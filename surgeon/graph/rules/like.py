"""Ops shaped like another tensor: ``x.view_as(y)``, ``x.reshape_as(y)``, ``x.expand_as(y)``.

The output has ``y``'s shape, so each dim of ``y`` is the output's dim; ``x`` is regrouped or
broadcast to it as by ``view``/``expand``. Weight standardisation (timm's ``StdConv2d``) reads
its weight back this way: ``batch_norm(w.reshape(1, out, -1)).reshape_as(w)``.
"""

from __future__ import annotations

import torch

from .base import RuleContext, register
from .shape import regroup

aten = torch.ops.aten


def _tie_reference(ctx: RuleContext) -> None:
    other = ctx.arg(1, "other")
    if ctx.shape(other) is not None and ctx.shape(other) == ctx.out_shape:
        ctx.same_dims(other, ctx.node)


@register("method:view_as", "method:reshape_as", aten.view_as, aten.reshape_as)
def reshape_as(ctx: RuleContext) -> None:
    regroup(ctx, ctx.arg(0))
    _tie_reference(ctx)


@register("method:expand_as", aten.expand_as)
def expand_as(ctx: RuleContext) -> None:
    ctx.broadcast([ctx.arg(0)], ctx.node)
    _tie_reference(ctx)
