"""Normalisation layers: batch/instance norm (per channel), layer norm and RMSNorm (over the
trailing dims), group norm (per group of channels)."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ...slicing.fixers import has_fixer
from .base import RuleContext, register
from .shape import SIZE_ARG, _find_attr, _probe
from .sizes_attr import sizes_from_attr
from .width import depends_on_width, follow_size, reads_sizes

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
    if ctx.arg(5, "training", False) or vals[0] is None:
        _batch_statistics(ctx, ctx.arg(0))


def _batch_statistics(ctx: RuleContext, x) -> None:
    """Statistics taken from the input itself (training mode, or no running statistics: weight
    standardisation) reduce over every dim but the channels': removing indices there changes them."""
    for d in range(len(ctx.shape(x))):
        if d != _channel_dim(ctx, x):
            ctx.inexact(ctx.v(x, d), "normalised over this dim (batch statistics)")


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
    if ctx.node.target is torch.ops.aten.batch_norm.default and (ctx.arg(5, "training") or vals[2] is None):
        _batch_statistics(ctx, x)


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


@reads_sizes
@register(F.layer_norm, F.rms_norm, torch.ops.aten.layer_norm, torch.ops.aten.rms_norm)
def layer_norm_fn(ctx: RuleContext) -> None:
    shape = ctx.arg(1, "normalized_shape")
    w = ctx.arg(2, "weight")
    b = ctx.arg(3, "bias") if ctx.node.target not in (F.rms_norm, torch.ops.aten.rms_norm.default) else None
    if isinstance(b, float):
        b = None
    items = _normalized_items(ctx, shape)
    couple_trailing_norm(ctx, ctx.arg(0), len(items), (lambda k: ctx.v(w, k)) if w is not None else None,
                         (lambda k: ctx.v(b, k)) if b is not None else None)
    if ctx.traced.mode == "fx":
        _check_normalized(ctx, items)
    else:  # an exported graph writes every size as a number
        _exported_normalized(ctx, items, w is not None)


SIZE_ARG[torch.ops.aten.layer_norm] = SIZE_ARG[torch.ops.aten.rms_norm] = 1


def _exported_normalized(ctx: RuleContext, items: list, affine: bool) -> None:
    """``nn.LayerNorm`` recorded by torch.export as ``aten.layer_norm(x, [64], ...)``: its own
    ``normalized_shape`` follows pruning (from the weight's shape, or set by surgery when it has
    no weight). A literal from any other code is frozen and left to the width probe."""
    nd = len(ctx.out_shape)
    path = _owner_path(ctx)
    owner = _owner(ctx)
    written = tuple(ctx.value(i) for i in items)
    if owner is not None and has_fixer(owner) and tuple(getattr(owner, "normalized_shape", ())) == written:
        if not affine or getattr(owner, "weight", None) is None:
            for k in range(len(items)):
                ctx.attr_fix(path, "normalized_shape", ctx.out(nd - len(items) + k), index=k)
        return
    for k, item in enumerate(items):
        d = nd - len(items) + k
        if type(item) is int and ctx.c.is_channel_like(ctx.out(d)):
            _probe(ctx, ctx.out(d), k, item, _holders(ctx, written, k, item),
                   f"normalized_shape {written} is written in the code")


def _normalized_items(ctx: RuleContext, shape) -> list:
    """``normalized_shape`` as one entry per normalised dim: ints, int-valued nodes, or
    ``(tensor, dim)`` for a node that is a slice of a tensor's shape (``x.shape[-1:]``)."""
    if isinstance(shape, fx.Node):
        ref = ctx.size_refs.get(shape.name)
        if isinstance(ref, tuple) and ref[0] == "shape":
            return [(ref[1], d) for d in ref[2]]
        value = ctx.value(shape)
        return list(value) if isinstance(value, (list, tuple, torch.Size)) else [value]
    return [shape] if isinstance(shape, int) else list(shape)


def _check_normalized(ctx: RuleContext, items: list) -> None:
    """The normalised widths must follow pruning: read from the tensor (tied to it), kept in an
    attribute surgery rewrites (a LayerNorm subclass, or an int attribute), or frozen."""
    nd = len(ctx.out_shape)
    written = tuple(ctx.c.sizes[ctx.v(*i)] if isinstance(i, tuple) else ctx.value(i) for i in items)
    owner = _owner(ctx)
    if owner is not None and has_fixer(owner) and tuple(getattr(owner, "normalized_shape", ())) == written:
        return  # F.layer_norm(x, self.normalized_shape, ...) inside a LayerNorm subclass
    for k, item in enumerate(items):
        d = nd - len(items) + k
        key = ctx.out(d)
        if isinstance(item, tuple) and ctx.c.sizes[ctx.v(*item)] == ctx.c.sizes[key]:
            n = ctx.c.sizes[key]  # x.shape[-1:]: the width read from a tensor
            ctx.rel(key, ctx.v(*item), np.arange(n), np.arange(n))
        elif isinstance(item, fx.Node) and follow_size(ctx, key, item):
            continue
        elif type(item) is int and (found := _holders(ctx, written, k, item)):
            for module, attr, *at in found:  # self.dim written into the call: surgery updates it
                ctx.attr_fix(module, attr, key, index=at[0] if at else None)
        else:
            depends_on_width(ctx, [key], d, f"normalized_shape {written} is written in the code")


def _holders(ctx: RuleContext, written: tuple, k: int, item: int) -> list[tuple]:
    """Where entry ``k`` of a ``normalized_shape`` written into the call is kept: entry ``k`` of a
    tuple attribute equal to the whole shape that ``forward`` read (OLMo's parameter-free norm
    keeps ``self.normalized_shape = (hidden,)``) as ``(module, attr, k)``, else an int attribute
    equal to it as ``(module, attr)``."""
    return sizes_from_attr(ctx, list(written), k) or list(_find_attr(ctx, item))


def _owner_path(ctx: RuleContext) -> str | None:
    stack = ctx.node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else k for k, v in stack.items()]
    return paths[-1] if paths else None


def _owner(ctx: RuleContext) -> nn.Module | None:
    """The innermost module whose forward made this call."""
    path = _owner_path(ctx)
    try:
        return ctx.traced.model.get_submodule(path) if path is not None else None
    except AttributeError:
        return None


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
