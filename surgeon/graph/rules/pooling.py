"""Pooling, resizing and reductions: channels pass through, spatial dims are the op's own."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import RuleContext, register

aten = torch.ops.aten

POOL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2,
    nn.AvgPool3d: 3, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1,
    nn.LPPool2d: 2, nn.Upsample: None, nn.UpsamplingNearest2d: 2, nn.UpsamplingBilinear2d: 2,
}
POOL_FUNCTIONS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2,
    F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3, F.lp_pool1d: 1,
    F.lp_pool2d: 2, F.interpolate: None, F.upsample: None, torch.avg_pool1d: 1,
    torch.max_pool1d: 1, torch.max_pool2d: 2, torch.adaptive_avg_pool1d: 1,
    aten.max_pool2d: 2, aten.avg_pool2d: 2, aten.adaptive_avg_pool2d: 2,
    aten._adaptive_avg_pool2d: 2, aten.adaptive_avg_pool1d: 1, aten.avg_pool1d: 1,
    aten.max_pool1d: 1, aten.max_pool3d: 3, aten.avg_pool3d: 3, aten.adaptive_avg_pool3d: 3,
    aten.upsample_nearest2d: 2, aten.upsample_bilinear2d: 2, aten.upsample_nearest1d: 1,
    aten.upsample_bicubic2d: 2, aten._upsample_nearest_exact2d: 2,
    aten.max_pool2d_with_indices: 2, aten.adaptive_max_pool2d: 2,
}


def pool(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    xs = ctx.shape(x)
    if ctx.module is not None:
        k = POOL_MODULES.get(type(ctx.module), None)
    else:
        target = ctx.node.target
        k = POOL_FUNCTIONS.get(getattr(target, "overloadpacket", target))
    if k is None:
        k = len(xs) - 2
    tuple_out = ctx.out_shape is None and ctx.out_shapes()
    for d in range(len(xs) - k):
        if tuple_out:  # (values, indices)
            ctx.eq(ctx.v(x, d), ctx.out(d, 0))
        else:
            ctx.eq(ctx.v(x, d), ctx.out(d))


register(*POOL_MODULES, *POOL_FUNCTIONS)(pool)

EXACT = {"sum", "nansum"}


@register(torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp,
          torch.nansum, torch.nanmean, torch.norm, "method:mean", "method:sum", "method:amax",
          "method:amin", "method:std", "method:var", "method:logsumexp", "method:norm",
          "method:nansum", aten.mean, aten.sum, aten.amax, aten.amin, aten.var, aten.std,
          aten.logsumexp, aten.linalg_vector_norm)
def reduce(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    xs = ctx.shape(x)
    name = ctx.node.target if isinstance(ctx.node.target, str) else getattr(ctx.node.target, "__name__", "")
    name = name.split(":")[-1]
    dims = ctx.arg(1, "dim", None)
    if "norm" in name:
        dims = ctx.node.kwargs.get("dim", ctx.arg(2) if name == "norm" else ctx.arg(2, "dim"))
    if dims is None or ctx.out_shape is None:
        return
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = sorted(d % len(xs) for d in dims)
    keep = len(ctx.out_shape) == len(xs)
    o = 0
    for d in range(len(xs)):
        if d in dims:
            ctx.touched.add(ctx.v(x, d))  # removing a unit from a reduction is well defined
            if name not in EXACT:
                ctx.inexact(ctx.v(x, d), f"{name} over this dim")
            if keep:
                o += 1
            continue
        ctx.eq(ctx.v(x, d), ctx.out(o))
        o += 1
