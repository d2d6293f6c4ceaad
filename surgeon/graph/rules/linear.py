"""Linear layers (module, ``F.linear``, HF ``Conv1D``), embeddings, PReLU and matmul-like ops."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from .base import RuleContext, register


def couple_linear(ctx: RuleContext, x, weight, bias, w_in: int = 1, w_out: int = 0) -> None:
    xs = ctx.shape(x)
    for d in range(len(xs) - 1):
        ctx.eq(ctx.v(x, d), ctx.out(d))
    ctx.eq(ctx.v(x, -1), weight(w_in))
    ctx.eq(ctx.out(-1), weight(w_out))
    if bias is not None:
        ctx.eq(ctx.out(-1), bias(0))
    ctx.cost([weight(0), weight(1)])


@register(nn.Linear)
def linear_module(ctx: RuleContext) -> None:
    w, b = ctx.param("weight"), ctx.param("bias")
    couple_linear(ctx, ctx.arg(0, "input"), lambda d: ctx.p(w, d),
                  (lambda d: ctx.p(b, d)) if b else None)


@register("fn:transformers.pytorch_utils.Conv1D", "fn:transformers.modeling_utils.Conv1D")
def hf_conv1d(ctx: RuleContext) -> None:  # weight is (in, out)
    w, b = ctx.param("weight"), ctx.param("bias")
    couple_linear(ctx, ctx.arg(0), lambda d: ctx.p(w, d), (lambda d: ctx.p(b, d)) if b else None, 0, 1)


@register(F.linear, torch.ops.aten.linear)
def linear_fn(ctx: RuleContext) -> None:
    w, b = ctx.arg(1, "weight"), ctx.arg(2, "bias")
    couple_linear(ctx, ctx.arg(0, "input"), lambda d: ctx.v(w, d),
                  (lambda d: ctx.v(b, d)) if b is not None else None)


@register(torch.ops.aten.addmm)
def addmm(ctx: RuleContext) -> None:  # bias + x @ w
    b, x, w = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    ctx.eq(ctx.v(x, 0), ctx.out(0))
    ctx.eq(ctx.v(x, 1), ctx.v(w, 0))
    ctx.eq(ctx.out(1), ctx.v(w, 1))
    ctx.broadcast([b], ctx.node)
    ctx.cost([ctx.v(w, 0), ctx.v(w, 1)])


@register(nn.Embedding)
def embedding_module(ctx: RuleContext) -> None:
    ids = ctx.arg(0, "input")
    for d in range(len(ctx.shape(ids))):
        ctx.eq(ctx.v(ids, d), ctx.out(d))
    w = ctx.param("weight")
    ctx.eq(ctx.out(-1), ctx.p(w, 1))
    ctx.freeze(ctx.p(w, 0), "vocabulary rows are kept")


@register(F.embedding, torch.ops.aten.embedding)
def embedding_fn(ctx: RuleContext) -> None:
    if ctx.node.target is F.embedding:
        ids, w = ctx.arg(0, "input"), ctx.arg(1, "weight")
    else:
        w, ids = ctx.arg(0, "weight"), ctx.arg(1, "indices")
    for d in range(len(ctx.shape(ids))):
        ctx.eq(ctx.v(ids, d), ctx.out(d))
    ctx.eq(ctx.out(-1), ctx.v(w, 1))
    ctx.freeze(ctx.v(w, 0), "vocabulary rows are kept")


@register(nn.PReLU)
def prelu_module(ctx: RuleContext) -> None:
    x = ctx.arg(0)
    ctx.same_dims(x, ctx.node)
    w = ctx.param("weight")
    n = ctx.module.weight.numel()
    if n > 1:
        ctx.eq(ctx.out(1 if len(ctx.out_shape) > 1 else 0), ctx.p(w, 0))
    else:
        ctx.freeze(ctx.p(w, 0), "single shared PReLU slope")


@register(F.prelu, torch.ops.aten.prelu, torch.ops.aten._prelu_kernel)
def prelu_fn(ctx: RuleContext) -> None:
    x, w = ctx.arg(0), ctx.arg(1)
    ctx.same_dims(x, ctx.node)
    if ctx.shape(w)[0] > 1:
        ctx.eq(ctx.out(1 if len(ctx.out_shape) > 1 else 0), ctx.v(w, 0))


@register(operator.matmul, torch.matmul, torch.bmm, torch.mm, "method:matmul", "method:bmm",
          "method:mm", torch.ops.aten.matmul, torch.ops.aten.bmm, torch.ops.aten.mm)
def matmul(ctx: RuleContext) -> None:
    a, b = ctx.arg(0), ctx.arg(1)
    sa, sb, so = ctx.shape(a), ctx.shape(b), ctx.out_shape
    if len(sa) < 2 or len(sb) < 2:
        return  # vector products: leave every dim to the auto-freeze
    ctx.eq(ctx.v(a, -1), ctx.v(b, -2))  # contraction: a zeroed unit contributes nothing
    ctx.eq(ctx.v(a, -2), ctx.out(-2))
    ctx.eq(ctx.v(b, -1), ctx.out(-1))
    nb = len(so) - 2
    for x, sx in ((a, sa), (b, sb)):
        off = nb - (len(sx) - 2)
        for d in range(len(sx) - 2):
            if sx[d] == so[d + off]:
                ctx.eq(ctx.v(x, d), ctx.out(d + off))
    ctx.cost([ctx.out(d) for d in range(len(so))] + [ctx.v(a, -1)])


@register(torch.einsum, torch.ops.aten.einsum)
def einsum(ctx: RuleContext) -> None:
    eqn = ctx.arg(0).replace(" ", "")
    operands = list(ctx.node.args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if "..." in eqn or "->" not in eqn:
        return  # implicit output or ellipsis: leave to the auto-freeze
    lhs, rhs = eqn.split("->")
    letters: dict[str, object] = {}
    for spec, x in zip(lhs.split(","), operands):
        for d, ch in enumerate(spec):
            key = ctx.v(x, d)
            if ch in letters:
                if ctx.c.sizes[letters[ch]] == ctx.c.sizes[key]:
                    ctx.eq(letters[ch], key)
            else:
                letters[ch] = key
    for d, ch in enumerate(rhs):
        ctx.eq(letters[ch], ctx.out(d))
    ctx.cost(list(letters.values()))
