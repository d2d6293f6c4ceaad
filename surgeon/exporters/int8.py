"""int8 that pays off on CPUs: which quantization, and which nodes stay fp32, chosen by measurement.

>>> shares({"Conv": 90.0, "MatMul": 10.0})["conv"]
0.9
>>> choose_mode(shares({"MatMul": 9.0, "Conv": 1.0}), calibrated=False)
'dynamic'

* :func:`choose_mode`: static QDQ (per-channel int8 weights, uint8 activations) whenever calibration
  data is given; without it, dynamic quantization only for models whose multiply-adds are mostly
  in MatMul/Gemm (transformers: dynamic quantization computes activation ranges at run time, which
  only pays where the matrix products dominate); otherwise :class:`CalibrationNeeded`, rather than
  a file slower than the fp32 one (onnxruntime's dynamic ConvInteger is).
* :func:`plan_precision`: the nodes to keep in fp32. The file is quantized once; then each kind of
  weighted node (Conv, DepthwiseConv, MatMul, Gemm) is timed in both precisions in the whole model
  (:func:`time_kinds`: the file as quantized against the file with that kind given back its float
  weights and float input, onnxruntime CPU, one thread, one sample (:func:`one_sample`),
  interleaved, the median of the per-pair ratios); a kind stays fp32 where int8 is not faster.
  The ops whose per-tensor int8 error is large (LayerNormalization, GELU, Softmax, Sigmoid, the
  layer-scale Mul) are not quantized (:data:`KEPT_FP32`), and the tensors whose int8 copy has the
  worst signal-to-noise ratio on the calibration data keep fp32 (:func:`noisy_tensors`,
  :func:`bypass`); glue on fp32 paths, the outputs, and the nodes whose int8 error the output
  feels most stay fp32 too, the last only where that error is worth the time they add, measured
  (:mod:`.int8_paths`).
  Every decision comes with its reason, which the export report lists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ._base import ExportError

__all__ = ["CalibrationNeeded", "NodeTiming", "Precision", "shares", "macs_by_kind", "choose_mode", "node_kinds",
           "plan_precision", "time_kinds", "one_sample", "node_macs", "float_weights", "fp32_sources", "bypass",
           "noisy_tensors", "QUANTIZED_OPS", "KEPT_FP32", "DYNAMIC_SHARE"]

log = logging.getLogger("surgeon.exporters.onnx")

DYNAMIC_SHARE = 0.5  # MatMul/Gemm share of the multiply-adds above which dynamic int8 pays off
COMPUTE = ("Conv", "MatMul", "Gemm")
# ops quantized besides the compute ops: they keep the int8 flow between convolutions (QLinearAdd,
# pooling, reshapes), so that no Dequantize/Quantize pair sits between two int8 nodes
GLUE = ("Add", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Flatten", "Reshape",
        "Transpose", "Squeeze", "Unsqueeze", "Resize", "Split", "Pad")
QUANTIZED_OPS = COMPUTE + GLUE
# int8 is a poor fit for their outputs (wide or heavy-tailed ranges, or exponentials): left fp32
KEPT_FP32 = {"LayerNormalization": "normalisation: per-tensor int8 loses its small variances",
             "Softmax": "exponential: int8 flattens the attention distribution",
             "Gelu": "its negative tail is below one int8 step", "Erf": "GELU's tail (as Erf)",
             "Sigmoid": "saturating: int8 error is largest near 0 and 1", "Mul": "layer scales and gates",
             "Div": "division amplifies int8 error"}
SNR_DB = 20.0  # a quantized tensor's signal-to-noise ratio below this keeps its node fp32 (1% noise)


class CalibrationNeeded(ExportError):
    """int8 was asked for a model that only static quantization makes faster, without calibration data."""


@dataclass(frozen=True)
class NodeTiming:
    """One node's time (ms, onnxruntime CPU) in fp32 and in int8, measured at its own shapes."""

    fp32_ms: float
    int8_ms: float

    @property
    def int8_slower(self) -> bool:
        return self.int8_ms >= self.fp32_ms


@dataclass(frozen=True)
class Precision:
    """Which nodes stay fp32 and why, and what int8 saves where it is used."""

    exclude: tuple[str, ...]  # node names left fp32
    reasons: tuple[tuple[str, str], ...]  # (node, reason) for each of them
    saved_ms: float  # measured fp32 - int8 time of the quantized compute nodes (one thread)
    notes: tuple[str, ...] = ()  # what was measured besides, one line each (the output error)

    def summary(self) -> list[str]:
        """One line per reason, with how many nodes it kept fp32."""
        counts: dict[str, list[str]] = {}
        for node, why in self.reasons:
            counts.setdefault(why, []).append(node)
        return [f"{len(nodes)} node(s) left fp32 ({why}): {', '.join(nodes[:4])}{', ...' if len(nodes) > 4 else ''}"
                for why, nodes in counts.items()] + list(self.notes)


def node_macs(model) -> dict[str, float]:
    """Multiply-adds of each named Conv, MatMul and Gemm node of an ONNX model with inferred shapes."""
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    macs: dict[str, float] = {}
    for k, node in enumerate(model.graph.node):
        if node.op_type not in COMPUTE:
            continue
        out = shapes.get(node.output[0])
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if not out or not w:
            continue
        if node.op_type == "Conv":  # output elements x (in channels / group) x kernel
            n = float(np.prod(out)) * float(np.prod(w[1:]))
        else:  # output elements x the reduced dimension
            trans = any(a.name == "transB" and a.i for a in node.attribute) if node.op_type == "Gemm" else False
            n = float(np.prod(out)) * float(w[-1] if trans else (w[-2] if len(w) > 1 else w[0]))
        macs[node.name or f"#{k}:{node.op_type}"] = n
    return macs


def macs_by_kind(model) -> dict[str, float]:
    """Multiply-adds of the Conv, MatMul and Gemm nodes of an ONNX model with inferred shapes, by op type."""
    types = {n.name or f"#{k}:{n.op_type}": n.op_type for k, n in enumerate(model.graph.node)}
    macs: dict[str, float] = {}
    for name, n in node_macs(model).items():
        macs[types[name]] = macs.get(types[name], 0.0) + n
    return macs


def shares(macs: Mapping[str, float]) -> dict[str, float]:
    """The shares of the multiply-adds in convolutions ("conv") and matrix products ("matmul")."""
    total = sum(macs.values()) or 1.0
    conv = macs.get("Conv", 0.0) / total
    return {"conv": conv, "matmul": 1.0 - conv if macs else 0.0}


def choose_mode(share: Mapping[str, float], calibrated: bool) -> str:
    """``"static"`` with calibration data, ``"dynamic"`` for a MatMul-dominated model without;
    :class:`CalibrationNeeded` otherwise (dynamic int8 would make the file slower than fp32)."""
    if calibrated:
        return "static"
    if share["matmul"] > DYNAMIC_SHARE:
        return "dynamic"
    raise CalibrationNeeded(
        f"int8 without calibration data would be dynamic quantization, which makes this model slower than "
        f"its fp32 file ({share['conv']:.0%} of its multiply-adds are in convolutions, which onnxruntime runs "
        f"slower as dynamic ConvInteger); pass calibration data: on the command line --calibration with a "
        f"folder of images, a .pt/.npz of input tensors or file.py:FUNCTION returning a list of inputs; in "
        f"the API calibration=[inputs like example_input, ...] (a few hundred real samples are best)")


def node_kinds(model) -> dict[str, str]:
    """Each named node's kind: its op type, or ``DepthwiseConv`` for a Conv with one input channel per group."""
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    kinds = {}
    for n in model.graph.node:
        if not n.name:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        w = weights.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        kinds[n.name] = "DepthwiseConv" if group > 1 and w is not None and w[1] == 1 else n.op_type
    return kinds


def plan_precision(kinds: Mapping[str, str], timings: Mapping[str, NodeTiming],
                   noisy: Mapping[str, float] | None = None, accurate: Mapping[str, float] | None = None,
                   glue: tuple[str, ...] = ()) -> Precision:
    """The nodes to keep fp32 and why, from their kinds (``kinds``: name -> :func:`node_kinds`),
    the measured ``timings`` of each kind (kind -> the whole model's time with that kind in fp32
    and in int8, :func:`time_kinds`), ``noisy`` (name -> signal-to-noise ratio in dB of its
    quantized output, for the nodes below :data:`SNR_DB`), ``accurate`` (name -> the share of the
    output error its fp32 copy removes, :func:`.int8_paths.sensitive_nodes`) and ``glue`` (glue
    nodes on fp32 paths, :func:`.int8_paths.float_glue`). ``exclude`` lists the weighted nodes that
    keep float weights: those in ``accurate`` and those whose kind is slower in int8."""
    exclude, reasons = [], []
    glue_set = set(glue)
    for name, kind in kinds.items():
        t = timings.get(kind)
        if name in (accurate or {}):
            exclude.append(name)
            reasons.append((f"{name} ({accurate[name]:.0%})", "int8 error on the calibration data: alone in fp32, "
                                                             "it removes the share shown of the output error"))
        elif name in (noisy or {}):
            reasons.append((name, f"int8 error on the calibration data: output SNR below {SNR_DB:.0f} dB"))
        elif kind in KEPT_FP32:
            reasons.append((name, f"{kind}: {KEPT_FP32[kind]}"))
        elif name in glue_set:
            reasons.append((name, f"{kind} on an fp32 path (it reads an fp32 node or feeds only fp32 nodes)"))
        elif t is not None and t.int8_slower:
            exclude.append(name)
            reasons.append((name, f"{kind}: measured slower in int8 (model {t.int8_ms:.2f} ms with it int8, "
                                  f"{t.fp32_ms:.2f} ms with it fp32)"))
    saved = sum(t.fp32_ms - t.int8_ms for t in timings.values() if not t.int8_slower)
    return Precision(tuple(exclude), tuple(reasons), saved)


# ---- mixed precision as graph edits of one quantized file ------------------------------------------------
def _prune(model) -> None:
    """Drop the nodes whose outputs nothing reads, and the initializers no node reads."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def float_weights(qdq, float_model, names):
    """A copy of the QDQ model ``qdq`` where the nodes ``names`` read their original float weights
    and bias from ``float_model`` and their input before its Quantize/Dequantize pair: they run in
    fp32, their output still quantized for int8 neighbours."""
    import onnx

    model = _copy(qdq)
    orig = {n.name: n for n in float_model.graph.node}
    inits = {i.name: i for i in float_model.graph.initializer}
    have = {i.name for i in model.graph.initializer}
    taken = {o for n in model.graph.node for o in n.output}  # the quantizer names a Dequantize output after the weight
    source = fp32_sources(model)  # the activation before its pair, clamped where a Relu was folded into it
    for n in model.graph.node:
        if n.name not in names or n.name not in orig:
            continue
        if n.input[0] in source:  # read the float activation: onnxruntime quantizes a Conv or Gemm between
            n.input[0] = source[n.input[0]]  # a Dequantize and a Quantize itself (WeightBiasQuantization)
        for k in range(1, min(len(n.input), len(orig[n.name].input))):
            src = orig[n.name].input[k]
            if src not in inits:
                continue
            name = f"{src}.float" if src in taken else src
            n.input[k] = name
            if name not in have:
                init = onnx.TensorProto()
                init.CopyFrom(inits[src])
                init.name = name
                model.graph.initializer.append(init)
                have.add(name)
    _prune(model)
    return model


def fp32_sources(model) -> dict[str, str]:
    """Each Dequantize output of a Quantize/Dequantize pair in ``model`` -> the fp32 tensor to read
    instead: the Quantize's input, or, where the pair's range starts at 0, that input clipped to the
    range (a Clip node added after the Quantize): the quantizer drops a Relu or Clip(0, 6) before a
    Quantize whose range already clamps as they do, so reading the bare input would lose them."""
    import onnx

    consts = {i.name: i for i in model.graph.initializer}
    quant = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    sources, clamped, nodes = {}, {}, []
    made = {o for n in model.graph.node for o in n.output}
    for n in model.graph.node:  # in graph order: a Quantize comes before its Dequantize
        nodes.append(n)
        if n.op_type == "DequantizeLinear" and n.input[0] in quant:
            sources[n.output[0]] = clamped.get(n.input[0], quant[n.input[0]])
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or n.input[1] not in consts or n.input[2] not in consts:
            continue
        zero, scale = onnx.numpy_helper.to_array(consts[n.input[2]]), onnx.numpy_helper.to_array(consts[n.input[1]])
        if zero.size != 1 or zero.dtype != np.uint8 or int(zero.reshape(-1)[0]) != 0 or scale.size != 1:
            continue
        x = n.input[0]
        name, lo, hi = f"{x}.clamped", f"{x}.clamp_lo", f"{x}.clamp_hi"
        clamped[n.output[0]] = name
        if name in made:  # an earlier edit of this file added it (a bypass, then fp32 weights)
            continue
        model.graph.initializer.extend([onnx.numpy_helper.from_array(np.zeros((), np.float32), lo),
                                        onnx.numpy_helper.from_array((scale.reshape(()) * 255).astype(np.float32), hi)])
        nodes.append(onnx.helper.make_node("Clip", [x, lo, hi], [name], name=name))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return sources


def bypass(qdq, tensors):
    """A copy of ``qdq`` without the Quantize/Dequantize pairs on ``tensors``: they stay fp32."""
    model = _copy(qdq)
    outputs = {o.name for o in model.graph.output}
    quant = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    pairs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quant
             and quant[n.input[0]] in tensors and n.output[0] not in outputs}
    rename = {dq: x for dq, x in fp32_sources(model).items() if dq in pairs}
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    _prune(model)
    return model


def one_sample(model, feed: dict) -> dict:
    """``feed`` cut to its first sample in the inputs whose batch dimension ``model`` leaves free:
    what an edge device runs, and what the timings measure."""
    free = {i.name for i in model.graph.input
            if i.type.tensor_type.shape.dim and not i.type.tensor_type.shape.dim[0].HasField("dim_value")}
    return {k: v[:1] if k in free and getattr(v, "ndim", 0) else v for k, v in feed.items()}


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])


def time_kinds(qdq, float_model, kinds: Mapping[str, str], feed: dict, rounds: int = 7) -> dict[str, NodeTiming]:
    """The whole model timed with each weighted kind (Conv, DepthwiseConv, MatMul, Gemm) in int8 (as
    ``qdq``) and in fp32 (its nodes reading float weights, the rest unchanged), interleaved on
    onnxruntime CPU with one thread (thread CPU time); kind -> :class:`NodeTiming`, the fp32 time
    from the median of the per-pair ratios."""
    from ..latency.runtime import interleaved

    inits = {i.name for i in float_model.graph.initializer}
    groups: dict[str, set[str]] = {}
    for n in float_model.graph.node:
        if n.op_type in COMPUTE and len(n.input) > 1 and n.input[1] in inits and n.name in kinds:
            groups.setdefault(kinds[n.name], set()).add(n.name)
    if not groups:
        return {}
    sessions = [_session(qdq)] + [_session(float_weights(qdq, float_model, names)) for names in groups.values()]
    runs = [lambda s=s: s.run(None, feed) for s in sessions]
    t = interleaved(runs, "ort-cpu", rounds=rounds, warmup=2, clock="cpu")
    return {kind: NodeTiming(t.ms[0] * r, t.ms[0]) for kind, r in zip(groups, t.ratios)}


# ---- the per-layer error of a quantized file -------------------------------------------------------------
def noisy_tensors(qdq, feeds: list[dict], limit_db: float = SNR_DB) -> dict[str, tuple[str, float]]:
    """The tensors of the QDQ model ``qdq`` whose int8 copy has a signal-to-noise ratio below
    ``limit_db`` on ``feeds`` (the error int8 adds at that tensor, not the error accumulated before
    it): tensor -> (the node that computes it, the ratio in dB)."""
    import onnx
    import onnxruntime as ort

    model = _copy(qdq)
    producer = {o: n.name for n in model.graph.node for o in n.output}
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    dequantized = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    pairs = []  # (float tensor, its dequantized copy, the representable range)
    for q in model.graph.node:
        if q.op_type == "QuantizeLinear" and q.output[0] in dequantized and q.input[1] in consts \
                and q.input[0] in producer:
            scale = consts[q.input[1]].astype(np.float64)
            zero = consts[q.input[2]].astype(np.float64) if len(q.input) > 2 and q.input[2] in consts else 0.0
            pairs.append((q.input[0], dequantized[q.output[0]], ((0 - zero) * scale, (255 - zero) * scale)))
    have = {o.name for o in model.graph.output}
    for name in sorted({t for p in pairs for t in p[:2]} - have):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the Q/DQ pairs apart
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    for feed in feeds:
        got = dict(zip(names, sess.run(None, feed)))
        for x, dq, (lo, hi) in pairs:
            # the rounding error only: a range that starts at 0 is a ReLU fused into the quantization
            a, b = np.clip(got[x].astype(np.float64), lo, hi), got[dq].astype(np.float64)
            signal[x] = signal.get(x, 0.0) + float((a * a).sum())
            noise[x] = noise.get(x, 0.0) + float(((a - b) ** 2).sum())
    snr = {x: float(10 * np.log10(max(signal[x], 1e-30) / max(noise[x], 1e-30))) for x in signal}
    return {x: (producer[x], v) for x, v in snr.items() if v < limit_db}
