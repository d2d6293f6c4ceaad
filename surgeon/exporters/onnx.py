"""Export a model to a dense ONNX file and check it in onnxruntime.

>>> import torch, tempfile, os
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> path = os.path.join(tempfile.mkdtemp(), "net.onnx")
>>> report = export(net, torch.randn(1, 4), path)
>>> report.weights == sum(p.numel() for p in net.parameters()), report.max_rel_error < 1e-4
(True, True)
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SurgeonError
from ..graph.trace import eval_mode, normalize_inputs
from ..verify import first_tensor, max_rel_error

__all__ = ["export", "ExportReport", "ExportError"]

log = logging.getLogger(__name__)


class ExportError(SurgeonError):
    """The ONNX file could not be written, or onnxruntime disagrees with PyTorch."""


@dataclass(frozen=True)
class ExportReport:
    path: str
    exporter: str  # "dynamo" or "torchscript"
    file_bytes: int
    weights: int  # elements in the file's initializers
    max_abs_error: float
    max_rel_error: float
    latency_ms: float  # onnxruntime CPU, median of a few runs on the example input
    notes: tuple[str, ...] = field(default=())


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx extra: pip install 'surgeon[onnx]'") from exc


def _torch_export(model, args, kwargs, path, opset, dynamic_batch, notes) -> str:
    names = [f"input_{i}" for i in range(len(args))] + list(kwargs)
    try:
        shapes = None
        if dynamic_batch:
            dim = torch.export.Dim.AUTO
            shapes = tuple({0: dim} for _ in args) if args else {k: {0: dim} for k in kwargs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, path, kwargs=kwargs or None, opset_version=opset, dynamo=True, verbose=False,
                              dynamic_shapes=shapes, external_data=False, input_names=names)
        return "dynamo"
    except Exception as exc:  # noqa: BLE001 - fall back to the TorchScript exporter, logged
        reason = f"dynamo exporter failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        log.info("%s; falling back to the TorchScript exporter", reason)
        notes.append(reason)
    axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args + tuple(kwargs.values()), path, opset_version=opset or 17,
                          dynamo=False, input_names=names, dynamic_axes=axes)
    return "torchscript"


def _initializer_count(path: str) -> int:
    import onnx

    m = onnx.load(path)
    total = 0
    graphs = [m.graph]
    while graphs:
        g = graphs.pop()
        total += sum(int(np.prod(t.dims)) for t in g.initializer)
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
                    total += int(np.prod(attr.t.dims)) if attr.t.dims else 0
                graphs.extend(attr.graphs)
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
    return total


def export(model: nn.Module, example_input: Any, path: str | os.PathLike, *, opset: int | None = None,
           dynamic_batch: bool = True, rtol: float = 1e-4) -> ExportReport:
    """Write ``model`` to ``path`` as ONNX, run it in onnxruntime and compare with PyTorch.

    Raises :class:`ExportError` if the relative error exceeds ``rtol`` (nothing is left at
    ``path`` then).
    """
    _require()
    import onnxruntime as ort

    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ExportError(f"cannot write {path}: folder {path.parent} does not exist")
    args, kwargs = normalize_inputs(example_input)
    notes: list[str] = []
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with eval_mode(model), torch.no_grad():
            exporter = _torch_export(model, args, kwargs, tmp, opset, dynamic_batch, notes)
            ref = first_tensor(model(*args, **kwargs))
        sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        feeds = {i.name: v.numpy() for i, v in zip(sess.get_inputs(), list(args) + list(kwargs.values()))}
        out = torch.from_numpy(sess.run(None, feeds)[0])
        rel = max_rel_error(ref, out)
        abs_err = float((ref.double() - out.double()).abs().max())
        if not rel <= rtol:
            raise ExportError(f"onnxruntime output differs from PyTorch: relative error {rel:.2e} > {rtol:.0e}")
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - t0) * 1e3)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return ExportReport(str(path), exporter, path.stat().st_size, _initializer_count(str(path)), abs_err, rel,
                        statistics.median(times), tuple(notes))
