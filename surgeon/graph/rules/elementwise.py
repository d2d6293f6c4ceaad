"""Elementwise ops: activations and other unary maps, binary ops with broadcasting, softmax."""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import RuleContext, register

aten = torch.ops.aten

UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Threshold,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Identity,
)
UNARY_FUNCTIONS = (
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.hardtanh,
    F.softplus, F.softsign, F.logsigmoid, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.abs, torch.neg,
    torch.sin, torch.cos, torch.erf, torch.square, torch.clamp, torch.clip, torch.nan_to_num,
    torch.sign, torch.floor, torch.ceil, torch.round, operator.neg, operator.pos, torch.log2,
    torch.exp2, torch.log1p, torch.expm1, torch.reciprocal, torch.relu_, F.relu_, F.hardtanh_,
    F.leaky_relu_, F.elu_, torch.clone, torch.detach,
    aten.relu, aten.relu_, aten.gelu, aten.silu, aten.silu_, aten.sigmoid, aten.tanh,
    aten.hardswish, aten.hardswish_, aten.hardsigmoid, aten.hardtanh, aten.hardtanh_,
    aten.leaky_relu, aten.elu, aten.mish, aten.softplus, aten.dropout, aten.clone, aten.exp,
    aten.log, aten.sqrt, aten.rsqrt, aten.abs, aten.neg, aten.sin, aten.cos, aten.erf,
    aten.clamp, aten.clamp_min, aten.clamp_max, aten.pow, aten.alias, aten.detach,
    aten.contiguous, aten.lift_fresh_copy, aten._to_copy, aten.square,
    aten.reciprocal, aten.log1p, aten.expm1,
)
UNARY_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "sqrt", "rsqrt", "abs",
    "neg", "clamp", "clamp_", "clamp_min", "clip", "contiguous", "clone", "detach", "float",
    "half", "bfloat16", "double", "type", "square", "pow", "pow_", "sin", "cos",
    "erf", "reciprocal", "sign", "exp_", "mul_scalar", "requires_grad_", "cpu", "cuda",
)


def unary(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    if ctx.shape(x) is None:
        return
    ctx.same_dims(x, ctx.node)


register(*UNARY_MODULES, *UNARY_FUNCTIONS, *(f"method:{m}" for m in UNARY_METHODS),
         "fn:torchvision.ops.stochastic_depth.stochastic_depth")(unary)

BINARY = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.pow,
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.mod,
    operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne,
    operator.and_, operator.or_,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.maximum, torch.minimum, torch.pow, torch.where, torch.lerp,
    torch.addcmul, torch.addcdiv, torch.masked_fill, torch.eq, torch.gt, torch.lt,
    aten.add, aten.add_, aten.sub, aten.sub_, aten.mul, aten.mul_, aten.div, aten.div_,
    aten.maximum, aten.minimum, aten.where, aten.masked_fill, aten.rsub, aten.eq, aten.ne,
    aten.bitwise_and, aten.bitwise_or, aten.bitwise_not, aten.logical_not, aten.logical_and,
    aten.lt, aten.gt, aten.le, aten.ge, aten.__and__, aten.__or__, aten.__xor__, aten.bitwise_xor,
    aten.logical_or, aten.floor_divide, aten.remainder, aten.masked_fill_, aten.copy_,
)
BINARY_METHODS = (
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "masked_fill", "masked_fill_",
    "where", "maximum", "minimum", "lerp", "addcmul", "eq", "ne", "gt", "lt"
)


def binary(ctx: RuleContext) -> None:
    """Broadcasting: each tensor operand's dim is tied to the output dim it lines up with."""
    if ctx.out_shape is None:
        return
    operands = list(ctx.node.args) + list(ctx.node.kwargs.values())
    tensors = [a for a in operands if ctx.shape(a) is not None]
    ctx.broadcast(tensors, ctx.node)


register(*BINARY, *(f"method:{m}" for m in BINARY_METHODS))(binary)


def _softmax_dim(ctx: RuleContext) -> int | None:
    if isinstance(ctx.module, (nn.Softmax, nn.LogSoftmax)):
        return ctx.module.dim
    return ctx.arg(1, "dim")


@register(nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
          "method:softmax", "method:log_softmax", aten.softmax, aten._softmax, aten._log_softmax,
          aten.log_softmax)
def softmax(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    ctx.same_dims(x, ctx.node)
    dim = _softmax_dim(ctx)
    if dim is not None:
        ctx.inexact(ctx.out(dim), "softmax over this dim")


@register(F.normalize)
def normalize(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    ctx.same_dims(x, ctx.node)
    ctx.inexact(ctx.out(ctx.arg(2, "dim", 1)), "normalised over this dim")


@register(F.glu, nn.GLU)
def glu(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    dim = ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim", -1)
    xs = ctx.shape(x)
    dim %= len(xs)
    for d in range(len(xs)):
        if d != dim:
            ctx.eq(ctx.v(x, d), ctx.out(d))
    half = xs[dim] // 2
    idx = np.arange(half)
    ctx.rel(ctx.v(x, dim), ctx.out(dim), idx, idx)
    ctx.rel(ctx.v(x, dim), ctx.out(dim), idx + half, idx)
