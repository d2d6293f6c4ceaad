"""Running a file in onnxruntime (CPU): parity with PyTorch, top-1 agreement, latency."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..graph.trace import eval_mode
from ..verify import first_tensor, max_rel_error
from ._base import ExportError, at_batch, flat_inputs

__all__ = ["Parity", "session", "run_file", "parity", "agreement", "top1", "latency_ms"]

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass(frozen=True)
class Parity:
    max_abs_error: float
    max_rel_error: float
    batch_sizes: tuple[int, ...]


def session(path: str, *, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # onnxruntime's own warnings (unused initializers...) are not ours
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot load {path}: {type(exc).__name__}: {exc}") from exc


def _feeds(sess, args: tuple, kwargs: dict) -> dict[str, np.ndarray]:
    values = flat_inputs(args, kwargs)
    declared = sess.get_inputs()
    if len(declared) != len(values):
        raise ExportError(f"the file takes {len(declared)} inputs, the model {len(values)}: "
                          f"inputs that the model ignores or reads as constants are dropped by the exporter")
    return {i.name: v.detach().cpu().numpy().astype(_NUMPY.get(i.type, v.detach().cpu().numpy().dtype))
            for i, v in zip(declared, values)}


def run_file(sess, args: tuple, kwargs: dict) -> torch.Tensor:
    """The file's first output on (args, kwargs), as a float tensor."""
    try:
        out = sess.run(None, _feeds(sess, args, kwargs))[0]
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        shapes = [tuple(t.shape) for t in flat_inputs(args, kwargs)]
        raise ExportError(f"onnxruntime fails to run the file on inputs of shape {shapes}: "
                          f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return torch.from_numpy(np.asarray(out, dtype=np.float64))


def _reference(model: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        return first_tensor(model(*args, **kwargs)).detach().cpu().double()


def parity(sess, model: nn.Module, cases: list[tuple[tuple, dict, torch.Tensor | None]]) -> Parity:
    """Worst absolute and relative error of the file against PyTorch over ``cases``
    ((args, kwargs, reference or None to compute it))."""
    worst_abs = worst_rel = 0.0
    sizes = []
    for i, (args, kwargs, ref) in enumerate(cases):
        ref = _reference(model, args, kwargs) if ref is None else ref.detach().cpu().double()
        try:
            out = run_file(sess, args, kwargs)
        except ExportError as exc:
            if i == 0:
                raise
            raise ExportError(f"{exc}; the file runs on the example's batch size only: pass dynamic_batch=False "
                              f"if the model needs a fixed batch size") from exc
        if out.shape != ref.shape:
            raise ExportError(f"the file's output has shape {tuple(out.shape)}, PyTorch's {tuple(ref.shape)}")
        if not torch.isfinite(out).all():
            raise ExportError("the file's output holds NaN or infinity where PyTorch's does not")
        worst_abs = max(worst_abs, float((ref - out).abs().max()) if ref.numel() else 0.0)
        worst_rel = max(worst_rel, max_rel_error(ref, out) if ref.numel() else 0.0)
        first = flat_inputs(args, kwargs)
        sizes.append(int(first[0].shape[0]) if first and first[0].dim() else 1)
    return Parity(worst_abs, worst_rel, tuple(sizes))


def agreement(sess, model: nn.Module, args: tuple, kwargs: dict, samples: int, batch: int) -> float:
    """Fraction of random inputs (drawn like the example) on which the file's top-1 class equals
    the PyTorch model's; the class is the argmax of the last dimension of the first output."""
    same = total = 0
    for i in range(0, samples, batch):
        a, k = at_batch(args, kwargs, min(batch, samples - i), seed=1000 + i)
        ref = _reference(model, a, k)
        out = run_file(sess, a, k)
        same += int((ref.argmax(-1) == out.argmax(-1)).sum())
        total += ref.argmax(-1).numel()
    return same / max(total, 1)


def top1(sess, model: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """Whether the file's top-1 class equals PyTorch's on (args, kwargs), per row (bool tensor)."""
    return _reference(model, args, kwargs).argmax(-1) == run_file(sess, args, kwargs).argmax(-1)


def latency_ms(sess, args: tuple, kwargs: dict, runs: int = 10) -> float:
    """Median wall time of one run on the example input, after two warm-up runs."""
    feeds = _feeds(sess, args, kwargs)
    for _ in range(2):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
