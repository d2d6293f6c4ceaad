"""Normalisation layers: batch/instance norm (per channel), layer norm and RMSNorm (over the
trailing dims), group norm (per group of channels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import RuleContext, register

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _channel_dim(ctx: RuleContext, x) -> int:
    return 1 if len(ctx.shape(x)) > 1 else 0


def couple_channel_norm(ctx: RuleContext, x, members) -> None:
    ctx.same_dims(x, ctx.node)
    c = ctx.out(_channel_dim(ctx, x))
    for key in members:
        ctx.eq(c, key)


@register(*BATCH_NORMS)
def batch_norm_module(ctx: RuleContext) -> None:
    names = ("weight", "bias", "running_mean", "running_var")
    keys = [ctx.p(q, 0) for q in (ctx.param(n) for n in names) if q]
    couple_channel_norm(ctx, ctx.arg(0), keys)
    if not keys:  # nothing to slice: the width lives only in the attribute
        ctx.attr_fix(ctx.node.target, "num_features", ctx.out(_channel_dim(ctx, ctx.arg(0))))


@register(F.batch_norm, F.instance_norm)
def batch_norm_fn(ctx: RuleContext) -> None:
    names = ("running_mean", "running_var", "weight", "bias")
    vals = [ctx.arg(i + 1, n) for i, n in enumerate(names)]
    couple_channel_norm(ctx, ctx.arg(0), [ctx.v(v, 0) for v in vals if v is not None])


@register(torch.ops.aten.batch_norm, torch.ops.aten._native_batch_norm_legit_no_training,
          torch.ops.aten.instance_norm)
def batch_norm_aten(ctx: RuleContext) -> None:  # (input, weight, bias, running_mean, running_var, ...)
    x = ctx.arg(0)
    vals = [ctx.arg(i) for i in (1, 2, 3, 4)]
    shapes = ctx.out_shapes()
    if shapes:  # _native_batch_norm_legit_no_training returns (out, mean, invstd)
        for d in range(len(ctx.shape(x))):
            ctx.eq(ctx.v(x, d), ctx.out(d, 0))
        c = ctx.out(1, 0)
    else:
        ctx.same_dims(x, ctx.node)
        c = ctx.out(1)
    for v in vals:
        if v is not None:
            ctx.eq(c, ctx.v(v, 0))


def couple_trailing_norm(ctx: RuleContext, x, n_norm: int, weight, bias) -> None:
    ctx.same_dims(x, ctx.node)
    nd = len(ctx.shape(x))
    for k in range(n_norm):
        d = nd - n_norm + k
        ctx.inexact(ctx.out(d), "normalised over this dim")
        if weight is not None:
            ctx.eq(ctx.out(d), weight(k))
        if bias is not None:
            ctx.eq(ctx.out(d), bias(k))


@register(nn.LayerNorm, nn.RMSNorm)
def layer_norm_module(ctx: RuleContext) -> None:
    w, b = ctx.param("weight"), ctx.param("bias")
    n = len(ctx.module.normalized_shape)
    couple_trailing_norm(ctx, ctx.arg(0), n, (lambda k: ctx.p(w, k)) if w else None,
                         (lambda k: ctx.p(b, k)) if b else None)
    if not w:  # forward passes normalized_shape itself: it must follow pruning
        nd = len(ctx.out_shape)
        for k in range(n):
            ctx.attr_fix(ctx.node.target, "normalized_shape", ctx.out(nd - n + k), index=k)


@register(F.layer_norm, F.rms_norm, torch.ops.aten.layer_norm, torch.ops.aten.rms_norm)
def layer_norm_fn(ctx: RuleContext) -> None:
    shape = ctx.arg(1, "normalized_shape")
    w = ctx.arg(2, "weight")
    b = ctx.arg(3, "bias") if ctx.node.target not in (F.rms_norm, torch.ops.aten.rms_norm.default) else None
    if isinstance(b, float):
        b = None
    couple_trailing_norm(ctx, ctx.arg(0), len(shape), (lambda k: ctx.v(w, k)) if w is not None else None,
                         (lambda k: ctx.v(b, k)) if b is not None else None)


def couple_group_norm(ctx: RuleContext, x, groups: int, members) -> None:
    ctx.same_dims(x, ctx.node)
    c = ctx.out(1)
    for key in members:
        ctx.eq(c, key)
    n = ctx.c.sizes[c]
    ctx.slots(c, ctx.virtual("slots", n // groups), n // groups)
    ctx.inexact(c, "group norm statistics mix the channels of a group")


@register(nn.GroupNorm)
def group_norm_module(ctx: RuleContext) -> None:
    keys = [ctx.p(q, 0) for q in (ctx.param("weight"), ctx.param("bias")) if q]
    couple_group_norm(ctx, ctx.arg(0), ctx.module.num_groups, keys)
    if not keys:
        ctx.attr_fix(ctx.node.target, "num_channels", ctx.out(1))


@register(F.group_norm, torch.ops.aten.group_norm)
def group_norm_fn(ctx: RuleContext) -> None:
    keys = [ctx.v(v, 0) for v in (ctx.arg(2, "weight"), ctx.arg(3, "bias")) if v is not None]
    couple_group_norm(ctx, ctx.arg(0), ctx.arg(1, "num_groups"), keys)
