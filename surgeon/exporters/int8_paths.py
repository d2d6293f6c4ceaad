"""Where int8 error reaches the output: fp32 paths kept fp32, and the compute nodes whose int8 error
the output feels most, found by measurement on the calibration data.

>>> import onnx
>>> from onnx import helper as h, TensorProto as T
>>> g = h.make_graph([h.make_node("LayerNormalization", ["x", "s"], ["n"], name="ln"),
...                   h.make_node("Transpose", ["n"], ["t"], name="tr"),
...                   h.make_node("Relu", ["t"], ["r"], name="relu"),
...                   h.make_node("Softmax", ["r"], ["y"], name="sm")], "g",
...                  [h.make_tensor_value_info("x", T.FLOAT, [1, 4])], [h.make_tensor_value_info("y", T.FLOAT, [4, 1])],
...                  [h.make_tensor("s", T.FLOAT, [4], [1.0] * 4)])
>>> float_glue(h.make_model(g))
('relu', 'tr')

Three measures, each for a reason the int8 files of ConvNeXt-style models showed:

* :func:`float_glue`: the glue ops (Add, Transpose, Reshape, ...) that stay fp32. An Add that
  reads an fp32 node's output (a residual stream after a layer-scale Mul) or a Transpose that only
  feeds a LayerNorm would, quantized, put one int8 rounding on the residual stream per block,
  where nothing runs in int8 to pay for it; 18 such roundings in a row cost ConvNeXt most of its
  top-1 agreement.
* :func:`float_paths`: an fp32 node reads the fp32 tensor, not its Quantize/Dequantize copy, where
  the tensor is computed in fp32 anyway (the copy then serves only int8 readers), and the model's
  outputs are never quantized (uint8 logits tie the near-equal classes).
* :func:`sensitive_nodes`: each weighted compute node is given back its fp32 weights and input in
  turn and the output error on a calibration batch measured; the nodes whose fp32 copy cuts that
  error most per multiply-add are shortlisted (:data:`GAIN`, :data:`WORTH`, :data:`FP32_MACS`),
  and kept fp32 only if they halve the error at least (:data:`CUT`) and the time they add, measured
  (:func:`time_cost`), is small against the error they remove (:data:`PAYOFF`). Their multiply-adds
  say little of that time: one fp32 depthwise conv inside MobileNet's int8 chain costs its
  Quantize/Dequantize pair and two layout changes, a twentieth to a tenth of the whole model's time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .int8 import COMPUTE, GLUE, QUANTIZED_OPS, _copy, _prune, _session, float_weights, fp32_sources, node_macs

__all__ = ["float_glue", "float_paths", "output_error", "sensitive_nodes", "time_cost", "Sensitivity", "MOVES",
           "FP32_MACS", "GAIN", "WORTH", "ERR_OK", "SEARCH_S", "CUT", "PAYOFF", "COST_ROUNDS"]

MOVES = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")  # layout only: no arithmetic to save
FP32_MACS = 0.10  # at most this share of the multiply-adds is given back fp32 for accuracy
GAIN = 0.05  # a node stays fp32 for accuracy if that alone cuts the output error by this share
WORTH = 10.0  # ... and by this many times its share of the multiply-adds (a first cut; time decides)
ERR_OK = 1e-5  # output error (MSE / variance) below which no node is searched: int8 is as good as fp32
SEARCH_S = 60.0  # seconds the search may take (cheapest nodes first); the rest stay int8
CUT = 0.5  # fp32 nodes stay fp32 if they cut the output error by half at least (3 dB): less is not worth their time
PAYOFF = 3.0  # ... and by this many times the share of time they add
COST_ROUNDS = 11  # interleaved rounds that time the fp32 nodes' cost


def _graph_maps(model):
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return producer, readers


def float_glue(model) -> tuple[str, ...]:
    """The glue nodes (:data:`.int8.GLUE`) of the fp32 ``model`` to leave unquantized: those that
    read the output of an fp32 node, and the layout ops (:data:`MOVES`) whose readers all run in
    fp32 (to a fixpoint). A Relu or a pooling before fp32 readers stays int8: fused into the int8
    node before it, it costs nothing and adds no rounding of its own."""
    producer, readers = _graph_maps(model)
    outputs = {o.name for o in model.graph.output}
    fp32 = {id(n) for n in model.graph.node if n.op_type not in QUANTIZED_OPS}
    changed = True
    while changed:
        changed = False
        for n in model.graph.node:
            if id(n) in fp32 or n.op_type not in GLUE:
                continue
            data = n.input if n.op_type in ("Add", "Concat") else n.input[:1]  # not a Reshape's shape
            reads_fp32 = any(i in producer and id(producer[i]) in fp32 for i in data)
            users = [u for o in n.output for u in readers.get(o, [])]
            feeds_fp32 = (n.op_type in MOVES and bool(users) and all(id(u) in fp32 for u in users)
                          and not outputs.intersection(n.output))
            if reads_fp32 or feeds_fp32:
                fp32.add(id(n))
                changed = True
    return tuple(sorted(n.name for n in model.graph.node if id(n) in fp32 and n.op_type in GLUE and n.name))


def float_paths(qdq, fp32_nodes: set[str]):
    """A copy of ``qdq`` where the nodes that run in fp32 (an op not quantized, or one named in
    ``fp32_nodes``) read a tensor computed in fp32 directly instead of its Dequantize copy, and the
    graph outputs are not quantized."""
    model = _copy(qdq)

    def runs_fp32(n) -> bool:
        return n.name in fp32_nodes or n.op_type not in QUANTIZED_OPS + ("QuantizeLinear", "DequantizeLinear")

    inputs = {i.name for i in model.graph.input}
    quant = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    origin = {n.output[0]: quant[n.input[0]] for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in quant}  # before any clamp fp32_sources adds
    source = fp32_sources(model)
    producer, _ = _graph_maps(model)
    for n in model.graph.node:
        if not runs_fp32(n) or n.op_type == "Clip" and n.name.endswith(".clamped"):
            continue
        for k, i in enumerate(n.input):
            x = origin.get(i)
            if x is not None and (x in inputs or (x in producer and runs_fp32(producer[x]))):
                n.input[k] = source[i]
    _unquantize_outputs(model, source, producer)
    _prune(model)
    return model


def _unquantize_outputs(model, source: Mapping[str, str], producer: Mapping) -> None:
    """Graph outputs written by a Dequantize: the node before the Quantize writes them in fp32."""
    for out in model.graph.output:
        x = source.get(out.name)
        if x is None or x not in producer:
            continue
        for n in model.graph.node:
            n.input[:] = [out.name if i == x else i for i in n.input]
            if n.op_type == "DequantizeLinear" and out.name in n.output:
                n.output[:] = [f"{out.name}.int8"]
        producer[x].output[:] = [out.name if o == x else o for o in producer[x].output]


def output_error(model, feed: dict, ref: list[np.ndarray]) -> float:
    """The mean squared error of ``model``'s outputs on ``feed`` against ``ref``, over their variance."""
    got = _session(model).run(None, feed)
    err = sum(float(((g.astype(np.float64) - r) ** 2).mean()) for g, r in zip(got, ref))
    return err / max(sum(float(r.var()) for r in ref), 1e-30)


@dataclass(frozen=True)
class Sensitivity:
    """What :func:`sensitive_nodes` found: the nodes kept fp32 for accuracy (name -> the share of
    the output error its fp32 copy alone removes), the output error all int8 and with them fp32,
    and one line per decision taken (the measured time they cost, or why none was kept)."""

    chosen: Mapping[str, float]
    before: float
    after: float
    notes: tuple[str, ...] = ()


def _gains(qdq, float_model, feed: dict, ref: list, base: float, fp32_nodes: set[str],
           seconds: float) -> dict[str, float]:
    """Each affordable weighted compute node -> the share of the output error its fp32 copy alone
    removes, cheapest first until ``seconds`` are spent."""
    inits = {i.name for i in float_model.graph.initializer}
    macs = node_macs(float_model)
    total = sum(macs.values())
    candidates = sorted((n.name for n in float_model.graph.node if n.op_type in COMPUTE and n.name in macs
                         and len(n.input) > 1 and n.input[1] in inits and WORTH * macs[n.name] <= total),
                        key=lambda name: macs[name])  # cheapest first; one past 1 / WORTH of the MACs never pays
    gains, start = {}, time.perf_counter()
    for name in candidates:
        if time.perf_counter() - start > seconds:
            break
        trial = float_paths(float_weights(qdq, float_model, {name}), fp32_nodes | {name})
        gains[name] = (base - output_error(trial, feed, ref)) / base
    return gains


def _shortlist(gains: Mapping[str, float], macs: Mapping[str, float]) -> list[str]:
    """The nodes whose fp32 copy cuts the error by :data:`GAIN` and :data:`WORTH` times their share
    of the multiply-adds, best cut per multiply-add first, within :data:`FP32_MACS`."""
    total = sum(macs.values()) or 1.0
    budget, chosen = FP32_MACS * total, []
    for name in sorted(gains, key=lambda c: gains[c] / max(macs[c], 1.0), reverse=True):
        if gains[name] >= max(GAIN, WORTH * macs[name] / total) and macs[name] <= budget:
            chosen.append(name)
            budget -= macs[name]
    return chosen


def time_cost(qdq, trial, feed: dict, rounds: int = COST_ROUNDS) -> float:
    """The share of time ``trial`` adds to ``qdq`` (onnxruntime CPU, one thread, interleaved, the
    median of the per-round ratios, less 1): an fp32 node inside an int8 chain costs its own fp32
    time and, around it, a Quantize/Dequantize pair and the layout changes onnxruntime's int8
    kernels need, which its share of the multiply-adds does not show."""
    from ..latency.runtime import interleaved

    runs = [lambda s=s: s.run(None, feed) for s in (_session(qdq), _session(trial))]
    return interleaved(runs, "ort-cpu", rounds=rounds, warmup=2, clock="cpu").ratios[0] - 1.0


def sensitive_nodes(qdq, float_model, feed: dict, fp32_nodes: set[str], seconds: float = SEARCH_S,
                    timing_feed: dict | None = None) -> Sensitivity:
    """The weighted compute nodes to give back fp32 for accuracy, by measurement on ``feed``: the
    nodes whose fp32 copy alone cuts the output error most per multiply-add (:func:`_shortlist`),
    kept only if together they cut it by :data:`CUT` at least and by :data:`PAYOFF` times the share
    of time they add, measured on ``timing_feed`` (default ``feed``; :func:`time_cost`); where the
    time is what fails, the better half of them is tried, and so on. The notes say what was measured."""
    ref = [r.astype(np.float64) for r in _session(float_model).run(None, feed)]
    base = output_error(qdq, feed, ref)
    if base <= ERR_OK:
        return Sensitivity({}, base, base)
    gains = _gains(qdq, float_model, feed, ref, base, fp32_nodes, seconds)
    shortlist, notes = _shortlist(gains, node_macs(float_model)), []
    while shortlist:
        final = float_paths(float_weights(qdq, float_model, set(shortlist)), fp32_nodes | set(shortlist))
        after = output_error(final, feed, ref)
        cut, cost = (base - after) / base, time_cost(qdq, final, timing_feed or feed)
        what = f"the {len(shortlist)} node(s) most sensitive to int8 in fp32 cut the output error by {cut:.0%} " \
               f"on a calibration batch at {cost:+.1%} time (measured)"
        if cut >= max(CUT, PAYOFF * max(cost, 0.0)):
            notes.append(f"{what}: kept fp32")
            return Sensitivity({n: gains[n] for n in shortlist}, base, after, tuple(notes))
        if cut < CUT:  # a part of them would cut less still
            notes.append(f"{what}: less than {CUT:.0%}, left int8")
            break
        notes.append(f"{what}: less than {PAYOFF:g}x the time, left int8")
        shortlist = shortlist[:len(shortlist) // 2]
    return Sensitivity({}, base, base, tuple(notes))
