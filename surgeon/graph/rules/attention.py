"""Attention: ``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention``.

``nn.MultiheadAttention`` requires its embedding width to equal the query's width, so the inner
width (heads x head_dim) and the residual width it reads must shrink together. The rule ties
residual channel i to inner channel i, and inner channel i to slot ``i % head_dim``: a unit is
one position of every head, so ``num_heads`` is kept, ``head_dim`` and ``embed_dim`` shrink.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import RuleContext, register


@register(nn.MultiheadAttention)
def multihead_attention(ctx: RuleContext) -> None:
    m: nn.MultiheadAttention = ctx.module
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn or not (q is k is v):
        return  # cross-attention or extra biases: every dim is frozen by default
    qs = ctx.shape(q)
    e, h = m.embed_dim, m.num_heads
    batch_first = m.batch_first
    w_in, w_out = ctx.param("in_proj_weight"), ctx.param("out_proj.weight")
    b_in, b_out = ctx.param("in_proj_bias"), ctx.param("out_proj.bias")
    # the attention output is element 0 of a tuple; its layout follows the query's
    for d in range(len(qs) - 1):
        ctx.eq(ctx.v(q, d), ctx.out(d, 0))
    ctx.eq(ctx.v(q, -1), ctx.p(w_in, 1))
    ctx.eq(ctx.out(-1, 0), ctx.p(w_out, 0))
    if b_out:
        ctx.eq(ctx.p(w_out, 0), ctx.p(b_out, 0))
    if b_in:
        ctx.eq(ctx.p(w_in, 0), ctx.p(b_in, 0))
    idx = np.arange(e)
    resid, inner = ctx.v(q, -1), ctx.p(w_out, 1)
    for block in range(3):
        ctx.rel(ctx.p(w_in, 0), inner, block * e + idx, idx)
    ctx.rel(resid, inner, idx, idx)
    ctx.slots(inner, ctx.virtual("head_slots", e // h), e // h)
    ctx.inexact(inner, "the attention scale depends on head_dim")
    # cost: in_proj and out_proj scale with both widths, the attention products with one
    tokens = qs[0] * qs[1]
    seq = qs[1] if batch_first else qs[0]
    ctx.cost_parts([(2.0 * tokens * e * 3 * e, [ctx.p(w_in, 0), ctx.p(w_in, 1)]),
                    (2.0 * tokens * e * e, [ctx.p(w_out, 0), ctx.p(w_out, 1)]),
                    (4.0 * tokens * seq * e, [inner])])


@register(F.scaled_dot_product_attention, torch.ops.aten.scaled_dot_product_attention)
def sdpa(ctx: RuleContext) -> None:
    """q (..., L, E) · k (..., S, E) -> softmax -> · v (..., S, Ev): E is contracted, S is
    softmaxed over, L and Ev pass through; leading dims broadcast."""
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    qs, os_ = ctx.shape(q), ctx.out_shape
    nb = len(os_) - 2
    for x in (q, k, v):
        xs = ctx.shape(x)
        off = nb - (len(xs) - 2)
        for d in range(len(xs) - 2):
            if xs[d] == os_[d + off]:
                ctx.eq(ctx.v(x, d), ctx.out(d + off))
    ctx.eq(ctx.v(q, -1), ctx.v(k, -1))
    ctx.eq(ctx.v(k, -2), ctx.v(v, -2))
    ctx.eq(ctx.v(q, -2), ctx.out(-2))
    ctx.eq(ctx.v(v, -1), ctx.out(-1))
    _attn_mask(ctx, ctx.arg(3, "attn_mask"), k)
    if ctx.arg(6, "scale") is None:
        ctx.inexact(ctx.v(q, -1), "the default attention scale depends on head_dim")
    ctx.inexact(ctx.v(k, -2), "softmax over keys")
    if nb >= 2:
        ctx.c.kinds[ctx.out(nb - 1)] = "head"  # (batch, heads, L, E): a unit of this dim is a head
    batch = float(np.prod(os_[:-2]))
    s = ctx.shape(k)[-2]
    lead = [ctx.out(d) for d in range(nb)]
    ctx.cost_parts([(2.0 * batch * qs[-2] * s * qs[-1], lead + [ctx.out(-2), ctx.v(k, -2), ctx.v(q, -1)]),
                    (2.0 * batch * qs[-2] * s * os_[-1], lead + [ctx.out(-2), ctx.v(k, -2), ctx.out(-1)])])


def _attn_mask(ctx: RuleContext, mask, k) -> None:
    """The mask (or additive bias, T5's position bias) broadcasts against the scores
    ``(..., L, S)``: a dim as wide as the scores' is tied to it (a per-head bias goes with its
    head), a broadcast (size-1) dim ties nothing."""
    ms = ctx.shape(mask)
    if ms is None:
        return
    os_ = ctx.out_shape
    scores = [ctx.out(d) for d in range(len(os_) - 1)] + [ctx.v(k, -2)]
    sizes = list(os_[:-1]) + [ctx.shape(k)[-2]]
    off = len(scores) - len(ms)
    for d, n in enumerate(ms):
        if d + off >= 0 and n == sizes[d + off]:
            ctx.eq(ctx.v(mask, d), scores[d + off])
        elif n == 1:
            ctx.touched.add(ctx.v(mask, d))
