"""torchvision helpers that fx keeps as leaf functions (``torch.fx.wrap``): Swin's window
attention and patch merging, and the relative position bias lookup."""

from __future__ import annotations

import numpy as np

from .base import RuleContext, register

SWIN = "fn:torchvision.models.swin_transformer."


@register(SWIN + "shifted_window_attention")
def shifted_window_attention(ctx: RuleContext) -> None:
    """The function derives head_dim from the input width (``C // num_heads``), so input channel
    i, row i of each of q/k/v and column i of the projection form one unit, and units take the
    same position in every head so ``num_heads`` is kept."""
    x, w_qkv, w_proj = ctx.arg(0, "input"), ctx.arg(1, "qkv_weight"), ctx.arg(2, "proj_weight")
    heads = ctx.arg(5, "num_heads")
    b_qkv, b_proj = ctx.node.kwargs.get("qkv_bias"), ctx.node.kwargs.get("proj_bias")
    xs = ctx.shape(x)
    c = xs[-1]
    for d in range(len(xs) - 1):
        ctx.eq(ctx.v(x, d), ctx.out(d))
    ctx.eq(ctx.v(x, -1), ctx.v(w_qkv, 1))
    ctx.eq(ctx.out(-1), ctx.v(w_proj, 0))
    if b_proj is not None:
        ctx.eq(ctx.out(-1), ctx.v(b_proj, 0))
    if b_qkv is not None:
        ctx.eq(ctx.v(w_qkv, 0), ctx.v(b_qkv, 0))
    idx = np.arange(c)
    for block in range(3):
        ctx.rel(ctx.v(w_qkv, 0), ctx.v(x, -1), block * c + idx, idx)
    ctx.rel(ctx.v(w_proj, 1), ctx.v(x, -1), idx, idx)
    ctx.slots(ctx.v(x, -1), ctx.virtual("head_slots", c // heads), c // heads)
    ctx.inexact(ctx.v(x, -1), "the attention scale depends on head_dim")
    ws = ctx.arg(4, "window_size")
    win = int(np.prod(ws))
    # the function pads H and W up to multiples of the window before attending
    padded = [-(-n // w) * w for n, w in zip(xs[-3:-1], ws)]
    tokens = int(np.prod(xs[:-3])) * int(np.prod(padded))
    ctx.cost_parts([(2.0 * tokens * c * 3 * c, [ctx.v(w_qkv, 0), ctx.v(w_qkv, 1)]),
                    (2.0 * tokens * c * c, [ctx.v(w_proj, 0), ctx.v(w_proj, 1)]),
                    (4.0 * tokens * win * c, [ctx.v(x, -1)])])


@register(SWIN + "_patch_merging_pad")
def patch_merging_pad(ctx: RuleContext) -> None:
    """Four strided spatial slices concatenated on channels: out[b*C + i] comes from in[i]."""
    x = ctx.arg(0)
    xs = ctx.shape(x)
    for d in range(len(xs) - 3):
        ctx.eq(ctx.v(x, d), ctx.out(d))
    c = xs[-1]
    idx = np.arange(c)
    for block in range(4):
        ctx.rel(ctx.v(x, -1), ctx.out(-1), idx, block * c + idx)


@register(SWIN + "_get_relative_position_bias")
def relative_position_bias(ctx: RuleContext) -> None:
    """Per-head bias tables: heads are never removed here, so every dim is left frozen."""
