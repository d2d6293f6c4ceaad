"""PyTorch to an ONNX file: the dynamo exporter first, the TorchScript exporter as the fallback.

The dynamo exporter runs ``torch.export`` and the onnxscript optimizer (constant folding,
BatchNorm folding). An example of batch size 1 would let ``torch.export`` specialise the batch
dimension to 1 (its 0/1 rule), so a file meant to take any batch is traced at batch 2.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._atomic import write_bytes
from ..graph.trace import _quiet_torch_logs
from ._base import at_batch, batch_of, flat_inputs
from ._files import data_files

__all__ = ["capture", "input_names", "first_line"]

log = logging.getLogger("surgeon.exporters.onnx")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def input_names(args: tuple, kwargs: dict) -> list[str]:
    return [f"input_{i}" for i in range(len(args))] + list(kwargs)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress, log whole graphs when they fail and emit deprecation
    warnings; none of it is ours to show (the reason of a failure is, and we keep it)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), _quiet_torch_logs():
        warnings.simplefilter("ignore")
        yield


def first_line(exc: BaseException) -> str:
    """The root cause of an exporter failure in one line (the outer errors only say which step)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def _dynamo(model: nn.Module, args: tuple, kwargs: dict, path: str, opset: int | None, dynamic_batch: bool) -> None:
    names = input_names(args, kwargs)
    shapes = None
    if dynamic_batch:
        if batch_of(args, kwargs) == 1:
            args, kwargs = at_batch(args, kwargs, 2)
        dim = torch.export.Dim.AUTO
        shapes = tuple({0: dim} if a.dim() else {} for a in args) if args else \
            {k: ({0: dim} if v.dim() else {}) for k, v in kwargs.items()}
    with _quiet():
        torch.onnx.export(model, args, path, kwargs=kwargs or None, opset_version=opset, dynamo=True,
                          verbose=False, dynamic_shapes=shapes, external_data=False, input_names=names)
    if dynamic_batch:
        _check_dynamic(path, names)


def _check_dynamic(path: str, names: list[str]) -> None:
    """torch.export silently fixes the batch size when the model's code pins it; refuse that file."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    for i in graph.input:
        dims = i.type.tensor_type.shape.dim
        if i.name in names and dims and not dims[0].dim_param:
            raise RuntimeError(f"the batch dimension of input {i.name} was fixed to {dims[0].dim_value}")


def _torchscript(model: nn.Module, args: tuple, kwargs: dict, path: str, opset: int | None,
                 dynamic_batch: bool) -> None:
    names = input_names(args, kwargs)
    axes = {n: {0: "batch"} for n in names} if dynamic_batch else None
    with _quiet():
        torch.onnx.export(model, args + tuple(kwargs.values()), path, opset_version=opset or 17, dynamo=False,
                          input_names=names, dynamic_axes=axes, do_constant_folding=True)


@dataclass
class _Capture:
    model: weakref.ref
    key: tuple
    data: bytes
    exporter: str
    notes: tuple[str, ...]


_last: list[_Capture] = []  # the latest capture: exporting one model to several formats traces it once
_CACHE_BYTES = 1 << 29


def _key(model: nn.Module, args: tuple, kwargs: dict, opset: int | None, dynamic_batch: bool) -> tuple:
    """What a capture depends on: the modules, every tensor's storage, shape and version (any
    in-place change bumps it), the inputs' shapes and the options. A stale hit would still be
    caught by the parity check that follows every capture."""
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    return (tuple((n, type(m)) for n, m in model.named_modules()),
            tuple((n, t.data_ptr(), t._version, tuple(t.shape), t.dtype) for n, t in tensors),
            tuple((tuple(t.shape), t.dtype, t.device.type) for t in flat_inputs(args, kwargs)), opset, dynamic_batch)


def capture(model: nn.Module, args: tuple, kwargs: dict, path: str, opset: int | None, dynamic_batch: bool,
            notes: list[str]) -> str:
    """Write ``model`` to ``path``; return which exporter did it ("dynamo" or "torchscript").

    The model must be in eval mode and gradients off (the caller's job). A dynamo failure is
    logged with its reason and recorded in ``notes``; a TorchScript failure propagates. The
    same unchanged model exported again reuses the previous capture.
    """
    key = _key(model, args, kwargs, opset, dynamic_batch)
    hit = next((c for c in _last if c.model() is model and c.key == key), None)
    if hit is not None:
        write_bytes(path, hit.data)
        notes.extend(hit.notes)
        return hit.exporter
    mine: list[str] = []
    exporter = _capture(model, args, kwargs, path, opset, dynamic_batch, mine)
    notes.extend(mine)
    _last.clear()
    if not data_files(path) and os.path.getsize(path) <= _CACHE_BYTES:  # the bytes alone are the whole file
        _last.append(_Capture(weakref.ref(model), key, Path(path).read_bytes(), exporter, tuple(mine)))
    return exporter


def _capture(model: nn.Module, args: tuple, kwargs: dict, path: str, opset: int | None, dynamic_batch: bool,
             notes: list[str]) -> str:
    try:
        _dynamo(model, args, kwargs, path, opset, dynamic_batch)
        return "dynamo"
    except Exception as exc:  # noqa: BLE001 - any dynamo failure means: try the other exporter
        reason = f"dynamo exporter failed ({first_line(exc)})"
        log.warning("%s; falling back to the TorchScript exporter", reason)
        notes.append(reason + "; used the TorchScript exporter")
    _torchscript(model, args, kwargs, path, opset, dynamic_batch)
    return "torchscript"
