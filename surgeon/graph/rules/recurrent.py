"""Recurrent layers: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and their cells.

A hidden unit i owns row i of every gate block of ``weight_ih_l{k}``, ``weight_hh_l{k}`` and the
biases (4 blocks for LSTM: i, f, g, o; 3 for GRU: r, z, n; 1 for RNN), column i of
``weight_hh_l{k}`` (the recurrence reads it back) and, with ``proj_size``, column i of
``weight_hr_l{k}``. ``hidden_size`` is one attribute for every layer and direction, so unit i of
all of them is one unit (that also keeps ``h_n`` / ``c_n``, which stack the layers, whole). The
output's feature dim is ``[forward, backward]`` concatenated, so index j of it, and column j of
the next layer's ``weight_ih``, belong to unit ``j % width``. With ``proj_size`` the projected
width (what the output, ``h_n`` and the recurrence carry) is a group of its own.

Captures: torch.fx keeps the modules as leaves (``rnn_module``, ``rnn_cell_module``; an LSTM's
``(h_n, c_n)`` is a tuple inside the result, named ``node#1#j`` as the ``getitem`` rule names it);
torch.export records ``aten.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu`` (``.input``) with the
weights as one flat list, and the cells as ``aten.lstm_cell`` / ``gru_cell`` / ... An initial state
ties to the units it feeds (an encoder's state handed to a decoder makes them one group); a state
tuple used any other way freezes the units. The packed overloads (``aten.lstm.data``) and a
``PackedSequence`` input have no rule: their dims are frozen by default.

Removing a unit is exact when the initial state is zero: with its rows zeroed an LSTM unit has
``g = tanh(0) = 0``, so ``c`` stays 0 and ``h = o * tanh(c) = 0``; a GRU unit has ``n = 0``, so
``h = z * h_prev`` stays 0; an RNN unit is ``tanh(0) = 0``.

FLOPs: torch's native kernels count as ``2 x tokens x (numel of every weight matrix)`` through
``mm``/``addmm``, but the fused kernels that CPU LSTMs (oneDNN: ``mkldnn_rnn_layer``) and CUDA
RNNs (cuDNN: ``_cudnn_rnn``) run have no formula in ``torch.utils.flop_counter``, so they counted
0. The same formula is registered for them here (unless torch has one), so the counters see the
same number on every path.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.utils.flop_counter import flop_registry, register_flop_formula

from .base import RuleContext, register

__all__ = ["GATES", "rnn_flops"]

aten = torch.ops.aten

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_CELL_GATES = {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


# -- FLOPs of the fused kernels ----------------------------------------------------------------------
def rnn_flops(tokens: int, weight_shapes) -> int:
    """``2 x tokens x`` the elements of every weight matrix (biases are not multiply-adds)."""
    return 2 * int(tokens) * sum(int(np.prod(s)) for s in weight_shapes if s is not None and len(s) == 2)


def _tokens(input_shape, batch_sizes) -> int:
    if batch_sizes:  # packed: one row per real token
        return int(sum(batch_sizes))
    return int(np.prod(input_shape[:-1]))


def _mkldnn_rnn_layer(input, weight0, weight1, weight2, weight3, *args, out_shape=None, **kwargs) -> int:
    batch_sizes = args[3] if len(args) > 3 else kwargs.get("batch_sizes")
    return rnn_flops(_tokens(input, batch_sizes), [weight0, weight1])


def _cudnn_rnn(input, weight, *args, out_shape=None, **kwargs) -> int:
    batch_sizes = args[12] if len(args) > 12 else kwargs.get("batch_sizes")
    return rnn_flops(_tokens(input, batch_sizes), weight)


def _miopen_rnn(input, weight, *args, out_shape=None, **kwargs) -> int:
    batch_sizes = args[10] if len(args) > 10 else kwargs.get("batch_sizes")
    return rnn_flops(_tokens(input, batch_sizes), weight)


for _name, _formula in (("mkldnn_rnn_layer", _mkldnn_rnn_layer), ("_cudnn_rnn", _cudnn_rnn),
                        ("miopen_rnn", _miopen_rnn)):
    _packet = getattr(torch.ops.aten, _name, None)
    if _packet is not None and _packet not in flop_registry:  # torch's own formula wins
        register_flop_formula(_packet)(_formula)


# -- coupling ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Stack:
    """One recurrent stack as a rule sees it: per (layer, direction) the weight refs
    ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` (None where absent), named by ``key(ref, dim)``."""

    gates: int
    hidden: int
    proj: int
    dirs: int
    cells: tuple[tuple[Any, ...], ...]
    key: Callable[[Any, int], Any]


def _gate_rows(ctx: RuleContext, key, hidden, n_hidden: int) -> None:
    """Row ``g * H + i`` of a gate-stacked dim belongs to hidden unit ``i``."""
    n = ctx.c.sizes[key]
    ctx.rel(key, hidden, np.arange(n), np.arange(n) % n_hidden)


def _repeated(ctx: RuleContext, key, unit, width: int) -> None:
    """Index ``j`` of a ``[forward, backward]`` concatenation belongs to unit ``j % width``."""
    n = ctx.c.sizes[key]
    ctx.rel(key, unit, np.arange(n), np.arange(n) % width)


def _couple_stack(ctx: RuleContext, st: _Stack, features) -> tuple:
    """Tie every weight of the stack to the hidden (and projected) units and to the input's
    ``features`` dim. Returns (hidden, carried) virtual dims; declares the cost."""
    h, p = st.hidden, st.proj
    width = p or h
    hidden = ctx.virtual("hidden", h)
    carried = ctx.virtual("proj", p) if p else hidden  # what the output and the recurrence carry
    weights = []
    for i, (w_ih, w_hh, b_ih, b_hh, w_hr) in enumerate(st.cells):
        for ref in (w_ih, w_hh, b_ih, b_hh):
            if ref is not None:
                _gate_rows(ctx, st.key(ref, 0), hidden, h)
        ctx.eq(st.key(w_hh, 1), carried)
        if i < st.dirs:  # layer 0 (each direction) reads the input
            ctx.eq(st.key(w_ih, 1), features)
        else:  # later layers read [forward, backward] of the one below
            _repeated(ctx, st.key(w_ih, 1), carried, width)
        weights += [w_ih, w_hh]
        if p and w_hr is not None:
            ctx.eq(st.key(w_hr, 1), hidden)
            ctx.eq(st.key(w_hr, 0), carried)
            weights.append(w_hr)
    dims = [(st.key(w, 0), st.key(w, 1)) for w in weights]
    sizes = [ctx.c.sizes[a] * ctx.c.sizes[b] for a, b in dims]
    for (a, b), n in zip(dims, sizes):  # each matrix's share of the FLOPs scales with both its dims
        ctx.cost([a, b], n / sum(sizes))
    return hidden, carried


def _state(ctx: RuleContext, keys: list, unit) -> None:
    """A state tensor (``h_0``, ``h_n``, ``c_n``): its last dim is ``unit``; the leading dims
    (layers x directions, batch) carry no channels and are only marked as seen."""
    for key in keys[:-1]:
        ctx.touched.add(key)
    ctx.eq(keys[-1], unit)


def _dims(ctx: RuleContext, v) -> list:
    shape = ctx.shape(v)
    return [ctx.v(v, d) for d in range(len(shape))] if shape is not None else []


def _sequence(ctx: RuleContext, x, out_index: int, carried, width: int) -> None:
    """The output sequence: leading dims follow the input, features are ``[fwd, bwd]``."""
    xs = ctx.shape(x)
    for d in range(len(xs) - 1):
        ctx.eq(ctx.v(x, d), ctx.out(d, out_index))
    _repeated(ctx, ctx.out(-1, out_index), carried, width)


def _initial(ctx: RuleContext, hx, units: tuple) -> None:
    """``hx`` given: ``h_0`` carries the output width, ``c_0`` the hidden width."""
    if isinstance(hx, fx.Node) and isinstance(ctx.traced.info[hx.name].shape, list):
        states = [(hx, j) for j in range(len(ctx.traced.info[hx.name].shape))]  # (h_0, c_0) as one node
    else:
        states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
    for s, unit in zip(states, units):
        if isinstance(s, (fx.Node, tuple)) and ctx.shape(s) is not None:
            _state(ctx, _dims(ctx, s), unit)


def _nested(ctx: RuleContext, index: int, j: int, shape) -> list:
    """The dims of element ``j`` of the tuple that is element ``index`` of this node's result
    (``(h_n, c_n)`` of an LSTM), named as :func:`~surgeon.graph.rules.shape.getitem` names them."""
    return [ctx.c.add(("v", f"{ctx.node.name}#{index}#{j}", d), n) for d, n in enumerate(shape)]


def _escapes(ctx: RuleContext) -> bool:
    """Is the result, or its ``(h_n, c_n)`` tuple, used other than by taking elements or as the
    initial state of another recurrent module (an encoder's state handed to a decoder)?"""
    def takes_elements(user: fx.Node) -> bool:
        return user.target is operator.getitem and isinstance(user.args[1], int)

    def starts_from(user: fx.Node, state: fx.Node) -> bool:
        return (user.op == "call_module" and isinstance(ctx.traced.submodule(user.target), nn.RNNBase)
                and state not in user.args[:1] and user.kwargs.get("input") is not state)

    for user in ctx.node.users:
        if not takes_elements(user):
            return True
        nested = isinstance(ctx.traced.info[user.name].shape, list)  # (h_n, c_n); a GRU's h_n is a tensor
        if nested and not all(takes_elements(u) or starts_from(u, user) for u in user.users):
            return True
    return False


@register(nn.RNNBase)
def rnn_module(ctx: RuleContext) -> None:
    m: nn.RNNBase = ctx.module
    x = ctx.arg(0, "input")
    if not isinstance(x, fx.Node) or ctx.shape(x) is None or m.mode not in GATES:
        return  # a PackedSequence, or an unknown mode: every dim is frozen by default
    names = ("weight_ih_l{}{}", "weight_hh_l{}{}", "bias_ih_l{}{}", "bias_hh_l{}{}", "weight_hr_l{}{}")
    cells = tuple(tuple(ctx.param(n.format(k, sfx)) for n in names)
                  for k in range(m.num_layers) for sfx in ("", "_reverse")[:2 if m.bidirectional else 1])
    st = _Stack(GATES[m.mode], m.hidden_size, m.proj_size, 2 if m.bidirectional else 1, cells, ctx.p)
    hidden, carried = _couple_stack(ctx, st, ctx.v(x, -1))
    _sequence(ctx, x, 0, carried, m.proj_size or m.hidden_size)
    shapes = ctx.out_shapes()
    state = shapes[1] if len(shapes) > 1 else None
    if isinstance(state, list):  # LSTM: (h_n, c_n)
        for j, unit in enumerate((carried, hidden)):
            _state(ctx, _nested(ctx, 1, j, state[j]), unit)
    elif state is not None:  # GRU / RNN: h_n
        _state(ctx, [ctx.out(d, 1) for d in range(len(state))], carried)
    _initial(ctx, ctx.arg(1, "hx"), (carried, hidden))
    if _escapes(ctx):
        reason = "the recurrent layer's state tuple is used whole, not by its elements"
        ctx.freeze(hidden, reason)
        ctx.freeze(carried, reason)


_ATEN_STACKS = {aten.lstm: "LSTM", aten.gru: "GRU", aten.rnn_tanh: "RNN_TANH", aten.rnn_relu: "RNN_RELU"}


@register(*_ATEN_STACKS)
def rnn_aten(ctx: RuleContext) -> None:
    """``aten.lstm.input(x, hx, params, has_biases, num_layers, dropout, train, bidirectional,
    batch_first)`` (and gru / rnn_tanh / rnn_relu): what torch.export records for the modules."""
    if ctx.node.target._overloadname != "input":
        return  # the packed (.data) overload: every dim is frozen by default
    x, hx, params = ctx.arg(0), ctx.arg(1), list(ctx.arg(2))
    has_biases, layers, dirs = bool(ctx.arg(3)), int(ctx.arg(4)), 2 if ctx.arg(7) else 1
    gates = GATES[_ATEN_STACKS[ctx.node.target.overloadpacket]]
    stride = len(params) // (layers * dirs)
    with_proj = stride == 3 + 2 * has_biases
    cells = []
    for i in range(layers * dirs):
        got = params[i * stride:(i + 1) * stride]
        w_ih, w_hh = got[0], got[1]
        b_ih, b_hh = (got[2], got[3]) if has_biases else (None, None)
        cells.append((w_ih, w_hh, b_ih, b_hh, got[-1] if with_proj else None))
    w_hh = ctx.shape(cells[0][1])
    proj = ctx.shape(cells[0][4])[0] if with_proj else 0
    st = _Stack(gates, w_hh[0] // gates, proj, dirs, tuple(cells), ctx.v)
    hidden, carried = _couple_stack(ctx, st, ctx.v(x, -1))
    _sequence(ctx, x, 0, carried, proj or st.hidden)
    for j, unit in enumerate((carried, hidden)[:len(ctx.out_shapes()) - 1]):  # h_n (, c_n)
        _state(ctx, [ctx.out(d, j + 1) for d in range(len(ctx.out_shapes()[j + 1]))], unit)
    _initial(ctx, hx, (carried, hidden))


@register(nn.RNNCellBase)
def rnn_cell_module(ctx: RuleContext) -> None:
    m: nn.RNNCellBase = ctx.module
    gates = next((g for cls, g in _CELL_GATES.items() if isinstance(m, cls)), None)
    x = ctx.arg(0, "input")
    if gates is None or not isinstance(x, fx.Node) or ctx.shape(x) is None:
        return
    refs = tuple(ctx.param(n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")) + (None,)
    _cell(ctx, _Stack(gates, m.hidden_size, 0, 1, (refs,), ctx.p), x, ctx.arg(1, "hx"))


_ATEN_CELLS = {aten.lstm_cell: 4, aten.gru_cell: 3, aten.rnn_tanh_cell: 1, aten.rnn_relu_cell: 1}


@register(*_ATEN_CELLS)
def rnn_cell_aten(ctx: RuleContext) -> None:
    """``aten.lstm_cell(x, [h, c], w_ih, w_hh, b_ih, b_hh)``, ``aten.gru_cell(x, h, ...)``, ..."""
    gates = _ATEN_CELLS[ctx.node.target.overloadpacket]
    refs = tuple(ctx.arg(i) for i in range(2, 6)) + (None,)
    hidden = ctx.shape(refs[1])[1]
    _cell(ctx, _Stack(gates, hidden, 0, 1, (refs,), ctx.v), ctx.arg(0), ctx.arg(1))


def _cell(ctx: RuleContext, st: _Stack, x, hx) -> None:
    """One step: ``h' (, c')`` keep the input's batch dim and carry the hidden units."""
    hidden, _ = _couple_stack(ctx, st, ctx.v(x, -1))
    outs = [0, 1] if st.gates == 4 else [None]  # LSTM cells return (h, c)
    for i in outs:
        for d in range(len(ctx.shape(x)) - 1):
            ctx.eq(ctx.v(x, d), ctx.out(d, i))
        ctx.eq(ctx.out(-1, i), hidden)
    _initial(ctx, hx, (hidden, hidden))
