"""Runtimes that latency is measured on, and the interleaved timing every comparison uses.

A runtime turns a model into something callable on a fixed input and times it:

* ``"ort-cpu"``: the model is exported to ONNX (TorchScript exporter, in memory) and run by
  onnxruntime's CPU provider with ``threads`` intra-op threads (1 by default: one core is what a
  planner can rely on when the machine is shared);
* ``"torch-cuda"``: PyTorch eager in fp16, channels_last, ``cudnn.benchmark``, timed with CUDA events.

Timing is noisy on shared machines, so two models are never timed one after the other: runs of A
and B alternate (A, B, A, B, ...) and the answer is the median of the per-pair ratios B/A, which
cancels the slow drifts (another process taking the core) that would bias two separate medians.

Clocks: with one onnxruntime thread the run executes on the calling thread, so ``clock="cpu"``
(the default there) reads that thread's CPU time (``time.thread_time``): what the wall clock
would read on an idle core. On a shared machine the wall clock of a 40 ms run includes the time
slices the OS gave other processes (measured here under a load of 6 on 2 cores: ResNet-50 128 ms
wall, 42 ms thread CPU time, 39 ms wall when idle) while a 0.3 ms layer mostly runs between
them, which would skew every comparison of long and short runs. Cache and memory-bandwidth
contention still show in CPU time. Several threads and CUDA use the wall clock (CUDA events).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..graph.trace import eval_mode, normalize_inputs

__all__ = ["RUNTIMES", "Runner", "runner", "interleaved", "calibrated", "Timing", "onnx_bytes"]

RUNTIMES = ("ort-cpu", "torch-cuda")


def onnx_bytes(model: nn.Module, example_input: Any) -> bytes:
    """``model`` on ``example_input`` as an ONNX file in memory: the TorchScript exporter (fast and
    quiet; with grad mode on, so that nn.MultiheadAttention does not take its fused fast path,
    which that exporter cannot write), else the dynamo exporter."""
    args, kwargs = normalize_inputs(example_input)
    with eval_mode(model), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            buf = io.BytesIO()
            with torch.enable_grad():
                torch.onnx.export(model, args + tuple(kwargs.values()), buf, opset_version=17, dynamo=False,
                                  do_constant_folding=True)
            return buf.getvalue()
        except Exception:  # noqa: BLE001 - an op the TorchScript exporter lacks: try dynamo
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "model.onnx")
                torch.onnx.export(model, args, path, kwargs=kwargs or None, dynamo=True, external_data=False)
                with open(path, "rb") as f:
                    return f.read()


Runner = Callable[[], None]


def _ort_runner(model: nn.Module, example_input: Any, threads: int) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        sess = ort.InferenceSession(onnx_bytes(model, example_input), sess_options=so,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the exporter and onnxruntime raise their own types
        raise ValueError(f"cannot time {type(model).__name__} in onnxruntime (exported with the TorchScript "
                         f"ONNX exporter): {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}; "
                         f"plan against metric='flops' without runtime= instead") from exc
    args, kwargs = normalize_inputs(example_input)
    values = list(args) + list(kwargs.values())
    feeds = {i.name: v.detach().cpu().numpy() for i, v in zip(sess.get_inputs(), values)}
    return lambda: sess.run(None, feeds)


def _cuda_runner(model: nn.Module, example_input: Any) -> Runner:
    import copy

    torch.backends.cudnn.benchmark = True
    net = copy.deepcopy(model).eval().cuda().half().to(memory_format=torch.channels_last)
    args, kwargs = normalize_inputs(example_input)

    def move(v):
        v = v.cuda()
        v = v.half() if v.is_floating_point() else v
        return v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v

    args = tuple(move(a) for a in args)
    kwargs = {k: move(v) for k, v in kwargs.items()}

    def run():
        with torch.no_grad():
            net(*args, **kwargs)
    return run


def runner(model: nn.Module, example_input: Any, runtime: str = "ort-cpu", threads: int = 1) -> Runner:
    """A zero-argument callable that runs ``model`` once on ``example_input`` in ``runtime``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of {list(RUNTIMES)}")
    if runtime == "ort-cpu":
        return _ort_runner(model, example_input, threads)
    return _cuda_runner(model, example_input)


def _clock(runtime: str, clock: str = "wall"):
    """``start() -> token`` and ``stop(token) -> ms`` for one run on ``runtime``."""
    if clock == "cpu":
        return time.thread_time, lambda t0: (time.thread_time() - t0) * 1e3
    if runtime == "torch-cuda":
        def start():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            return a, b

        def stop(tok):
            a, b = tok
            b.record()
            b.synchronize()
            return a.elapsed_time(b)
        return start, stop
    return time.perf_counter, lambda t0: (time.perf_counter() - t0) * 1e3


@dataclass(frozen=True)
class Timing:
    """Medians (ms) of each runner and the median of the per-round ratios ``other / first``."""

    ms: tuple[float, ...]
    ratios: tuple[float, ...]  # one per runner after the first: median of runner_i / runner_0
    spread: tuple[float, ...]  # interquartile range of those per-round ratios (the noise)
    rounds: int


def interleaved(runners: list[Runner], runtime: str = "ort-cpu", *, rounds: int = 20, warmup: int = 3,
                inner: int | Sequence[int] = 1, budget_s: float | None = None, clock: str = "wall",
                min_rounds: int = 5) -> Timing:
    """Time runners in alternation (r0, r1, ..., r0, r1, ...); the order within a round rotates.

    ``inner`` runs per timing, one count for all or one per runner (layers that take
    microseconds); ``budget_s`` stops early once at least ``min_rounds`` rounds ran and the time
    is spent; ``clock`` is "wall" or "cpu" (this thread's CPU time: one onnxruntime thread only)."""
    start, stop = _clock(runtime, clock)
    inner = [inner] * len(runners) if isinstance(inner, int) else list(inner)
    for r in runners:
        for _ in range(warmup):
            r()
    times = [[] for _ in runners]
    t_begin = time.perf_counter()
    for k in range(rounds):
        order = list(range(len(runners)))
        order = order[k % len(order):] + order[: k % len(order)]
        for i in order:
            tok = start()
            for _ in range(inner[i]):
                runners[i]()
            times[i].append(stop(tok) / inner[i])
        if budget_s is not None and k + 1 >= min_rounds and time.perf_counter() - t_begin > budget_s:
            break
    arr = np.asarray(times)
    ratios = arr[1:] / arr[0]
    q = np.percentile(ratios, [25, 75], axis=1) if len(ratios) else np.zeros((2, 0))
    return Timing(tuple(float(np.median(t)) for t in arr), tuple(float(np.median(r)) for r in ratios),
                  tuple(float(h - lo) for lo, h in zip(q[0], q[1])), arr.shape[1])


def calibrated(runners: list[Runner], runtime: str, *, min_ms: float = 0.5, rounds: int = 7,
               clock: str = "wall") -> Timing:
    """:func:`interleaved` with each runner repeated enough to take ``min_ms`` per timing."""
    start, stop = _clock(runtime, clock)
    inner = []
    for r in runners:
        r()
        tok = start()
        r()
        inner.append(max(1, min(200, int(min_ms / max(stop(tok), 1e-4)))))
    return interleaved(runners, runtime, rounds=rounds, warmup=1, inner=inner, clock=clock)
