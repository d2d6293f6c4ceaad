"""File-to-file steps for edge runtimes: simplify (onnxslim), fp16, int8, ORT format.

Each step reads one file and writes another in the caller's scratch folder, so a failure
never leaves a half-written result where the user asked for it; the files surgeon writes itself
go through :func:`._files.save_model` (atomic, weights past 2 GiB in an external data file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from typing import Any, Iterable

import numpy as np

from .._atomic import atomic_path
from . import _files
from ._base import ExportError, flat_inputs

__all__ = ["simplify", "to_fp16", "quantize", "to_ort", "DTYPES", "QUANTIZE"]

log = logging.getLogger("surgeon.exporters.onnx")

DTYPES = ("fp32", "fp16")
QUANTIZE = (None, "auto", "dynamic", "static")


def simplify(src: str, dst: str, notes: list[str]) -> bool:
    """onnxslim (constant folding, fusions, dead code) from ``src`` to ``dst``; False if it failed.

    Weight tying is skipped: it merges tensors only because their values happen to be equal (the
    zero biases of a freshly initialised model), which says nothing about the architecture.
    """
    try:
        import onnxslim
    except ImportError:
        reason = "onnxslim is not installed (pip install 'surgeon[onnx]'); the file is not simplified"
        log.warning(reason)
        notes.append(reason)
        return False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(src, skip_optimizations=["weight_tying"])
        _files.save_model(slim, dst)
        return True
    except Exception as exc:  # noqa: BLE001 - a failed simplification only costs size, not correctness
        reason = f"onnxslim failed ({type(exc).__name__}: {str(exc)[:200]}); the file is not simplified"
        log.warning(reason)
        notes.append(reason)
        return False


def to_fp16(src: str, dst: str) -> None:
    """Weights and compute in float16, inputs and outputs kept float32 (onnxruntime's converter).

    onnxruntime's CPU provider wraps float16 nodes it has no kernel for in casts to float32, so
    the file runs everywhere; GPU and NPU runtimes run it in half precision.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(src), keep_io_types=True)
    _files.save_model(model, dst)


class _Reader:
    """onnxruntime's CalibrationDataReader over surgeon-style example inputs."""

    def __init__(self, names: list[str], samples: list[tuple[tuple, dict]]):
        self._feeds = iter([{n: v.detach().cpu().numpy().astype(np.float32) if v.is_floating_point()
                             else v.detach().cpu().numpy() for n, v in zip(names, flat_inputs(a, k))}
                            for a, k in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def all(self) -> list[dict[str, np.ndarray]]:
        return list(self._feeds)

    def rewind(self) -> None:  # newer onnxruntime versions may call it
        pass


def quantize(src: str, dst: str, mode: str, names: list[str], calibration: list[tuple[tuple, dict]],
             scratch: str, measure: bool = True):
    """int8 through ``onnxruntime.quantization``, after its pre-processing (shape inference and
    optimisation, which it asks for before quantizing); returns (the mode used, the
    :class:`.int8.Precision` of a static file or None).

    ``auto``: :func:`.int8.choose_mode` (static with calibration, dynamic for MatMul-dominated
    models, else :class:`.int8.CalibrationNeeded`). ``dynamic``: weights int8 ahead of time,
    activations quantised on the fly (uint8 weights for convolutions: the only ConvInteger
    onnxruntime's CPU provider implements, and slower than float there). ``static``: QDQ format,
    per-channel int8 weights and uint8 activations with ranges calibrated on ``calibration``,
    mixed precision by measurement (:func:`.int8.plan_precision`, :mod:`.int8_paths`; ``measure=False``
    skips the timing and the search for the nodes whose int8 error reaches the output most).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from . import int8

    pre = f"{scratch}/preprocessed.onnx"
    big = _files.total_bytes(src) >= _files.EXTERNAL_DATA_FROM  # protobuf cannot hold these weights inline
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            quant_pre_process(src, pre, skip_symbolic_shape=True, save_as_external_data=big,
                              all_tensors_to_one_file=True)
        except Exception as exc:  # noqa: BLE001 - pre-processing only helps; quantize the plain file
            log.info("onnxruntime's quantization pre-processing failed (%s); quantizing without it", exc)
            pre = src
    model = onnx.shape_inference.infer_shapes(onnx.load(pre, load_external_data=not big))
    if mode == "auto":
        mode = int8.choose_mode(int8.shares(int8.macs_by_kind(model)), calibrated=bool(calibration))
    with contextlib.redirect_stdout(io.StringIO()):
        if mode == "dynamic":
            quantize_dynamic(pre, dst, weight_type=QuantType.QUInt8 if _has_conv(pre) else QuantType.QInt8,
                             use_external_data_format=big)
            return mode, None
        return mode, _static_mixed(pre, dst, model, names, calibration, big, measure)


def _static_mixed(pre: str, dst: str, model, names: list[str], calibration: list, big: bool, measure: bool):
    """Static QDQ once (the ops of :data:`.int8.KEPT_FP32` and the glue on fp32 paths left fp32),
    then mixed precision as edits of that file: fp32 readers read fp32 tensors and the outputs stay
    fp32; the Quantize/Dequantize pairs on the noisiest tensors removed; with ``measure``, the
    weighted nodes whose fp32 copy cuts the output error most on a calibration batch (where that
    is worth the time they add), and each weighted node kind that the whole model runs faster with
    in fp32, given back their float weights; timings on one sample, the latency on the edge."""
    import onnx

    from . import int8, int8_paths

    glue = int8_paths.float_glue(model)
    _static(pre, dst, names, calibration, big, glue)
    kinds = int8.node_kinds(model)
    if big:  # the edits below hold the model in memory: past protobuf's limit, quantize only
        return int8.plan_precision(kinds, {}, glue=glue)
    fp32 = set(glue)
    qdq = int8_paths.float_paths(onnx.load(dst), fp32)
    feeds = _Reader(names, calibration[:1]).all()  # every intermediate tensor is kept: one sample batch
    noisy = int8.noisy_tensors(qdq, feeds)
    if noisy:
        qdq = int8.bypass(qdq, set(noisy))
    timing = int8.one_sample(model, feeds[0])  # the latency of one input, as on the edge
    found = int8_paths.sensitive_nodes(qdq, model, feeds[0], fp32, timing_feed=timing) if measure else None
    accurate = dict(found.chosen) if found else {}
    timings = int8.time_kinds(qdq, model, kinds, timing) if measure else {}
    prec = int8.plan_precision(kinds, timings, {node: db for node, db in noisy.values()}, accurate, glue)
    if prec.exclude:
        qdq = int8_paths.float_paths(int8.float_weights(qdq, model, set(prec.exclude)), fp32 | set(prec.exclude))
    _files.save_model(qdq, dst)
    if found is None or found.before <= int8_paths.ERR_OK:
        return prec
    line = f"output error on a calibration batch (MSE / variance): {found.before:.1e} all int8" + (
        f", {found.after:.1e} with the {len(accurate)} node(s) most sensitive to int8 in fp32" if accurate else "")
    return dataclasses.replace(prec, notes=(line, *found.notes))


def _static(pre: str, dst: str, names: list[str], calibration: list, big: bool, exclude: tuple[str, ...] = ()) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from . import int8

    quantize_static(pre, dst, _Reader(names, calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=list(int8.QUANTIZED_OPS), nodes_to_exclude=list(exclude),
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=big)


def _has_conv(path: str) -> bool:
    import onnx

    return any(n.op_type == "Conv" for n in onnx.load(path, load_external_data=False).graph.node)


def to_ort(src: str, dst: str) -> None:
    """The ORT-format file ONNX Runtime Mobile loads, as ``onnxruntime.tools.convert_onnx_models_to_ort``
    writes it (its "fixed" style: all optimisations baked in, minus the x86-only NCHWc layout)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.save_model_format", "ORT")
    try:
        with atomic_path(dst, ".ort") as tmp:
            so.optimized_model_filepath = str(tmp)
            ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"],
                                 disabled_optimizers=["NchwcTransformer"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime could not convert the file to ORT format: {exc}") from exc


def calibration_samples(calibration: Iterable[Any] | None, normalize) -> list[tuple[tuple, dict]]:
    """The calibration iterable as a list of (args, kwargs); each item is given like ``example_input``."""
    if calibration is None:
        return []
    if isinstance(calibration, (str, bytes)) or not hasattr(calibration, "__iter__"):
        raise ValueError(f"calibration must be an iterable of example inputs (each like example_input), "
                         f"got {type(calibration).__name__}")
    return [normalize(item) for item in calibration]
