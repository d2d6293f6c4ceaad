"""Export a model to a dense ONNX file, check it in onnxruntime, and make it ready for the edge.

>>> import torch, tempfile, os
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> path = os.path.join(tempfile.mkdtemp(), "net.onnx")
>>> report = export(net, torch.randn(1, 4), path)
>>> report.weights == report.params - report.folded, report.max_rel_error < 1e-4
(True, True)

The steps, each on a file in a scratch folder beside ``path``:

1. capture: the dynamo exporter (``torch.export`` + onnxscript's optimizer, which folds
   BatchNorm), or the TorchScript exporter when dynamo fails (the reason is logged and noted);
2. ``simplify``: onnxslim (constant folding, fusions, dead code), kept if it matches PyTorch;
3. the accounting of the fp32 file's weights (see :class:`ExportReport`);
4. ``dtype="fp16"`` or ``quantize="auto" | "dynamic" | "static"``: the edge file (int8: see
   :mod:`surgeon.exporters.int8` for the choice of mode and the nodes kept fp32);
5. ``ort_format``: the ``.ort`` file beside ``path``;
6. publish: the files are renamed into place (weights past 2 GiB, protobuf's limit, in
   ``path + ".data"``, renamed before ``path``), then checked where they now lie: parity of the
   file against PyTorch on the example input and, with ``dynamic_batch``, a second batch size
   (fp16 and int8 files also by top-1 agreement: on held-out calibration samples when calibration
   data is given, else on random inputs), the ``.ort`` file likewise. If
   a check fails or anything is interrupted, what was at the destination before is put back.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..graph.trace import eval_mode, normalize_inputs
from ..verify import first_tensor
from . import _edge, _files, _runtime
from . import calibration as _calibration
from ._account import Accounting, account, count_weights, watch
from ._base import ExportError, at_batch, batch_of, flat_inputs
from ._capture import capture, first_line, input_names

__all__ = ["export", "ExportReport", "ExportError"]

log = logging.getLogger(__name__)

RTOL = {"fp32": 1e-4, "fp16": 1e-2}
AGREEMENT_SAMPLES = 32  # random inputs for the top-1 agreement of fp16, int8 and .ort files


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote and how well it matches PyTorch.

    For fp32 and fp16 files ``weights == params - folded - unused + derived - eliminated``,
    every term but ``weights`` predicted from the model (see :mod:`surgeon.exporters._account`),
    and ``eliminated`` is 0 unless the model holds degenerate values (all-zero biases, which the
    optimizers drop): the file holds exactly the model's parameters up to BatchNorm folding and
    precomputed constants, so it is dense, not masked. For int8 files ``weights`` counts the int8
    weights and their float scales, and the errors are those of the int8 file (judge it by
    ``agreement``).
    """

    path: str
    exporter: str  # "dynamo" or "torchscript"
    file_bytes: int  # the .onnx file and its external data file
    weights: int  # elements of the file's weight tensors (float, and int8 for quantized files)
    params: int  # parameters of the model
    bn_folded: int  # BatchNorm layers folded into the conv/linear that feeds them
    folded: int  # parameters that BatchNorm folding removed, net of the biases it adds to convs
    unused: int  # parameters the forward never reads (auxiliary heads in eval mode)
    derived: int  # tensors the file holds that are no parameters (statistics of BatchNorms left in
    #               the graph, precomputed position biases and masks), less the parameters they absorb
    eliminated: int  # what else the fp32 file lacks (all-zero biases an optimizer dropped)
    max_abs_error: float  # worst over the example input and the second batch size
    max_rel_error: float
    batch_sizes: tuple[int, ...]  # batch sizes the parity was checked on
    latency_ms: float  # onnxruntime CPU, median of 10 runs on the example input
    data_path: str | None = None  # the weights beside ``path`` when they pass protobuf's 2 GiB limit
    dtype: str = "fp32"
    quantize: str | None = None
    agreement: float | None = None  # top-1 agreement with PyTorch (fp16 and int8 files), on agreement_inputs
    ort_path: str | None = None
    ort_max_rel_error: float | None = None  # the .ort file against PyTorch
    ort_agreement: float | None = None  # the .ort file's top-1 agreement with PyTorch
    simplified: bool = False
    notes: tuple[str, ...] = field(default=())
    agreement_inputs: str | None = None  # what agreement was measured on: held-out real samples or random inputs
    fp32_nodes: tuple[str, ...] = field(default=())  # static int8: the nodes left fp32, one line per reason

    @property
    def bn_was_folded(self) -> bool:
        return self.bn_folded > 0


@dataclass(frozen=True)
class _Request:
    """The arguments of one export, checked."""

    path: Path
    ort_path: Path | None
    opset: int | None
    dynamic_batch: bool
    simplify: bool
    dtype: str
    quantize: str | None
    calibration: list[tuple[tuple, dict]]
    rtol: float
    holdout: list[tuple[tuple, dict]]  # calibration samples kept apart for the top-1 agreement
    measure: bool  # time the nodes in both precisions to choose the ones kept fp32


def _require() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx extra: pip install 'surgeon[onnx]'") from exc


def _check_path(path: Any, ort_format: bool) -> tuple[Path, Path | None]:
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder; pass a file path such as {path / 'model.onnx'}")
    folder = path.parent
    if not folder.exists():
        raise ExportError(f"cannot write {path}: folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise ExportError(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {path}: folder {folder} is not writable; pass a path in a writable folder")
    ort_path = path.with_suffix(".ort") if ort_format else None
    if ort_path is not None and ort_path == path:
        raise ValueError(f"with ort_format=True the ONNX file needs another suffix than .ort, got {path}")
    return path, ort_path


def _check_options(dtype: Any, quantize: Any, calibration: Any, dynamic_batch: bool,
                   args: tuple, kwargs: dict) -> list[tuple[tuple, dict]]:
    if dtype not in _edge.DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; pass dtype='fp32' (default) or dtype='fp16' "
                         f"(for int8 use quantize='dynamic' or quantize='static')")
    if quantize not in _edge.QUANTIZE:
        raise ValueError(f"unknown quantize mode {quantize!r}; pass quantize=None, 'auto', 'dynamic' or 'static'")
    if quantize is not None and dtype != "fp32":
        raise ValueError(f"int8 quantization starts from the fp32 file; pass dtype='fp32' with quantize={quantize!r}")
    if quantize == "static" and calibration is None:  # "auto" says what to pass once it knows the model
        raise ValueError("quantize='static' needs calibration=: an iterable of example inputs, each given like "
                         "example_input (for instance [torch.randn(1, 3, 224, 224) for _ in range(32)], "
                         "better a few hundred real samples)")
    if quantize not in ("static", "auto") and calibration is not None:
        raise ValueError(f"calibration is only used by quantize='static' or 'auto' (got quantize={quantize!r}); "
                         f"drop it or pass quantize='auto'")
    samples = _edge.calibration_samples(calibration, normalize_inputs)
    if quantize in ("static", "auto") and calibration is not None and not samples:
        raise ValueError("calibration is empty; pass at least one example input for quantize='static'")
    want = [t.shape for t in flat_inputs(args, kwargs)]
    for i, (a, k) in enumerate(samples):
        got = [t.shape for t in flat_inputs(a, k)]
        fits = len(got) == len(want) and all(
            g[1:] == w[1:] and len(g) == len(w) and (dynamic_batch or g[:1] == w[:1]) for g, w in zip(got, want))
        if not fits:
            raise ValueError(f"calibration sample {i} has input shapes {[tuple(s) for s in got]}, the example "
                             f"{[tuple(s) for s in want]}; each sample must be given like example_input")
    return samples


def _request(model: Any, example_input: Any, path: Any, opset: Any, dynamic_batch: bool, simplify: bool,
             dtype: Any, quantize: Any, calibration: Any, ort_format: bool, rtol: float | None,
             measure: bool = True):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = normalize_inputs(example_input)
    if isinstance(calibration, (str, os.PathLike)):
        calibration = _calibration.load(calibration, example_input)
    samples = _check_options(dtype, quantize, calibration, dynamic_batch, args, kwargs)
    held = len(samples) // 5 if len(samples) >= 2 else 0  # a fifth of the samples judge the file, at least one
    samples, holdout = (samples[:-max(held, 1)], samples[-max(held, 1):]) if len(samples) >= 2 else (samples, [])
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 7):
        raise ValueError(f"opset must be an ONNX opset number (for instance 18) or None, got {opset!r}")
    if dynamic_batch and batch_of(args, kwargs) is None:
        raise ValueError("dynamic_batch=True needs an example input with a batch dimension; "
                         "pass dynamic_batch=False")
    file, ort_path = _check_path(path, ort_format)
    return (args, kwargs), _Request(file, ort_path, opset, bool(dynamic_batch), bool(simplify), dtype, quantize,
                                    samples, RTOL[dtype] if rtol is None else float(rtol), holdout, bool(measure))


def export(model: nn.Module, example_input: Any, path: str | os.PathLike, *, opset: int | None = None,
           dynamic_batch: bool = True, simplify: bool = True, dtype: str = "fp32", quantize: str | None = None,
           calibration: Iterable[Any] | str | os.PathLike | None = None, ort_format: bool = False,
           rtol: float | None = None, mixed_precision: bool = True) -> ExportReport:
    """Write ``model`` to ``path`` as ONNX, check it in onnxruntime and return an :class:`ExportReport`.

    ``dtype``: ``"fp32"`` or ``"fp16"`` (float16 weights and compute, float32 inputs and outputs).
    ``quantize``: ``None``, ``"auto"`` (int8 that pays off: static with ``calibration``, dynamic for
    MatMul-dominated models without it, else :class:`.int8.CalibrationNeeded` saying what to pass),
    ``"dynamic"`` (int8 weights) or ``"static"`` (int8 weights and activations, calibrated on
    ``calibration``: an iterable of inputs given like ``example_input``, or a folder of images, a
    ``.pt``/``.npz`` file or ``file.py:FUNCTION``, see :mod:`surgeon.exporters.calibration`). A fifth
    of the calibration samples is held out for the top-1 agreement the report gives.
    ``mixed_precision``: static int8 times each Conv/MatMul/Gemm in both precisions and keeps fp32
    where int8 is slower, and the nodes whose int8 error reaches the output most where that is worth
    their measured time (the report's ``fp32_nodes`` says which and why); False skips the timing
    and that search (up to a minute or two on large models).
    ``ort_format``: also write ``path`` with the suffix ``.ort`` for ONNX Runtime Mobile.
    ``rtol``: the relative error that fails the export (default 1e-4 for fp32, 1e-2 for fp16);
    int8 files are judged by their top-1 agreement, which the report gives.

    Weights past protobuf's 2 GiB limit go to ``path + ".data"`` beside it (``data_path`` in the
    report): keep the two files together.

    Raises :class:`ExportError` when the file cannot be written or disagrees with PyTorch, and
    ``ValueError`` for an unknown option; what was at ``path`` (and beside it) is left as it was
    then, and so on any other failure or Ctrl-C.
    """
    _require()
    (args, kwargs), req = _request(model, example_input, path, opset, dynamic_batch, simplify, dtype, quantize,
                                   calibration, ort_format, rtol, mixed_precision)
    try:
        scratch = tempfile.mkdtemp(prefix=f".{req.path.name}.", dir=req.path.parent)
    except OSError as exc:
        raise ExportError(f"cannot write in folder {req.path.parent}: {exc}; pass a path in a writable folder") from exc
    try:
        built = _build(model, args, kwargs, req, scratch)
        # the weights a previous export left beside path go, unless this export writes them again
        with _files.publish(built.moves, scratch, retire=_files.previous_data(req.path)):
            return _checked(model, args, kwargs, req, built)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class _Built:
    """The files an export built in its scratch folder, and what is known of them before publishing."""

    exporter: str
    acc: Accounting
    cases: list  # (args, kwargs, reference or None) the files are checked on
    simplified: bool
    edge: bool  # the published file is not the fp32 file itself (fp16 or int8)
    quantize: str | None  # the int8 mode used ("auto" resolved)
    fp32_nodes: tuple[str, ...]  # static int8: the nodes left fp32, one line per reason
    data_path: Path | None  # the external data file, at its destination
    moves: list[tuple[Path, Path]]  # (built, destination), in the order they are renamed
    notes: list[str]


def _build(model: nn.Module, args: tuple, kwargs: dict, req: _Request, scratch: str) -> _Built:
    """Capture, simplify, account, convert: every file the export publishes, in ``scratch``."""
    import onnx

    notes: list[str] = []
    raw = os.path.join(scratch, "raw.onnx")
    with eval_mode(model), torch.no_grad():
        with watch(model, flat_inputs(args, kwargs)) as seen:
            ref = first_tensor(model(*args, **kwargs))
        try:
            exporter = capture(model, args, kwargs, raw, req.opset, req.dynamic_batch, notes)
        except Exception as exc:  # noqa: BLE001 - both exporters failed: say so with the reason
            raise ExportError(f"neither the dynamo nor the TorchScript exporter could export "
                              f"{type(model).__name__}: {first_line(exc)}; the dynamo exporter's reason is "
                              f"in the log") from exc
    cases = _cases(args, kwargs, ref, req.dynamic_batch)
    fp32, simplified = _fp32_file(model, raw, cases, req, scratch, notes)
    acc = account(model, seen, onnx.load(fp32, load_external_data=False))  # shapes suffice, not the weights
    if acc.eliminated:
        notes.append(f"the file holds {-acc.eliminated} more weights than predicted" if acc.eliminated < 0 else
                     f"{acc.eliminated} parameters are missing from the file beyond BatchNorm folding "
                     f"(all-zero biases or constants the optimizers removed)")
    out = Path(scratch) / "out"  # the files under their final names, apart from the steps' own files
    out.mkdir()
    final = out / req.path.name
    edge, mode, prec = _edge_file(fp32, final, req, scratch, input_names(args, kwargs))
    data = [(d, req.path.parent / d.name) for d in _files.data_files(final)]
    ort = []
    if req.ort_path is not None:
        _edge.to_ort(str(final), str(out / req.ort_path.name))
        ort = [(out / req.ort_path.name, req.ort_path)]
    moves = data + ort + [(final, req.path)]  # the .onnx last, once its weights are in place
    return _Built(exporter, acc, cases, simplified, edge, mode, tuple(prec.summary()) if prec else (),
                  data[0][1] if data else None, moves, notes)


def _checked(model: nn.Module, args: tuple, kwargs: dict, req: _Request, built: _Built) -> ExportReport:
    """Load the published files where they lie, check them against PyTorch and report."""
    import onnx

    sess = _runtime.session(str(req.path))  # the file as written, reading its data file beside it
    checked = _runtime.parity(sess, model, built.cases)
    if req.quantize is None:
        _fail_if(checked, req.rtol, req.dtype)
    agreement, inputs = _agreement(sess, model, args, kwargs, req) if built.edge else (None, None)
    ort = _check_ort(req, model, args, kwargs, built.cases) if req.ort_path else (None, None)
    names = {n for n, _ in model.named_parameters()}
    acc = built.acc
    return ExportReport(
        path=str(req.path), exporter=built.exporter, file_bytes=_files.total_bytes(req.path),
        weights=count_weights(onnx.load(str(req.path), load_external_data=False), names), params=acc.params,
        bn_folded=acc.bn_folded, folded=acc.folded, unused=acc.unused, derived=acc.derived,
        eliminated=acc.eliminated, max_abs_error=checked.max_abs_error, max_rel_error=checked.max_rel_error,
        batch_sizes=checked.batch_sizes, latency_ms=_runtime.latency_ms(sess, args, kwargs),
        data_path=str(built.data_path) if built.data_path else None, dtype=req.dtype, quantize=built.quantize,
        agreement=agreement, ort_path=str(req.ort_path) if req.ort_path else None, ort_max_rel_error=ort[0],
        ort_agreement=ort[1], simplified=built.simplified, notes=tuple(built.notes), agreement_inputs=inputs,
        fp32_nodes=built.fp32_nodes)


def _fp32_file(model: nn.Module, raw: str, cases: list, req: _Request, scratch: str,
               notes: list[str]) -> tuple[str, bool]:
    """The simplified file if it matches PyTorch, else the exporter's own file (checked here when an
    edge file is made from it, else once published). Returns (path, simplified)."""
    rtol = req.rtol if req.dtype == "fp32" and req.quantize is None else RTOL["fp32"]
    slim = os.path.join(scratch, "fp32.onnx")
    if req.simplify and _edge.simplify(raw, slim, notes):
        checked = _runtime.parity(_runtime.session(slim), model, cases)
        if checked.max_rel_error <= rtol:
            return slim, True
        reason = (f"onnxslim changed the results (relative error {checked.max_rel_error:.1e}); "
                  f"kept the file unsimplified")
        log.warning(reason)
        notes.append(reason)
    if req.quantize is not None or req.dtype != "fp32":
        _fail_if(_runtime.parity(_runtime.session(raw), model, cases), rtol, "fp32")
    return raw, False


def _cases(args: tuple, kwargs: dict, ref: torch.Tensor, dynamic_batch: bool) -> list:
    """The example input, and with a dynamic batch a second batch size (random inputs)."""
    cases = [(args, kwargs, ref)]
    if dynamic_batch:
        b = batch_of(args, kwargs)
        a2, k2 = at_batch(args, kwargs, 3 if b == 2 else 2, seed=1)
        cases.append((a2, k2, None))
    return cases


def _fail_if(p: _runtime.Parity, rtol: float, what: str) -> None:
    if not p.max_rel_error <= rtol:
        raise ExportError(f"the {what} file differs from PyTorch: relative error {p.max_rel_error:.2e} > {rtol:.0e} "
                          f"(batch sizes {list(p.batch_sizes)}, max absolute error {p.max_abs_error:.2e}); "
                          f"please report the model, and try simplify=False or opset= meanwhile")


def _edge_file(fp32: str, final: Path, req: _Request, scratch: str, names: list[str]):
    """Write the file the user asked for at ``final``; returns (True if it is not the fp32 file
    itself, the int8 mode used, the precision plan of a static int8 file)."""
    if req.quantize is not None:
        int8 = os.path.join(scratch, "int8.onnx")
        try:
            mode, prec = _edge.quantize(fp32, int8, req.quantize, names, req.calibration, scratch, req.measure)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises many kinds of errors
            raise ExportError(f"onnxruntime.quantization could not quantize the file ({req.quantize}): "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from exc
        _files.finalize(int8, final)  # onnxruntime names its data file after int8.onnx
        return True, mode, prec
    if req.dtype == "fp16":
        try:
            _edge.to_fp16(fp32, str(final))
        except Exception as exc:  # noqa: BLE001 - the float16 converter raises many kinds of errors
            raise ExportError(f"the float16 conversion failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
        return True, None, None
    _files.finalize(fp32, final)
    return False, None, None


def _agreement(sess, model: nn.Module, args: tuple, kwargs: dict, req: _Request) -> tuple[float, str]:
    """Top-1 agreement with PyTorch on the held-out calibration samples, else on random inputs;
    and which inputs those were."""
    if req.holdout:
        same = total = 0
        for a, k in req.holdout:
            hits = _runtime.top1(sess, model, a, k)
            same, total = same + int(hits.sum()), total + int(hits.numel())
        return same / max(total, 1), f"{total} held-out calibration samples"
    batch = 8 if req.dynamic_batch else (batch_of(args, kwargs) or 1)
    samples = AGREEMENT_SAMPLES if req.dynamic_batch else batch * max(1, AGREEMENT_SAMPLES // batch)
    why = "one calibration sample, none to hold out" if req.calibration else "no calibration data given"
    return (_runtime.agreement(sess, model, args, kwargs, samples, batch),
            f"{samples} random inputs ({why}: the agreement says little about real data)")


def _check_ort(req: _Request, model: nn.Module, args: tuple, kwargs: dict, cases: list) -> tuple[float, float]:
    """Check the published ``.ort`` file like the ONNX file: its relative error against PyTorch, and
    its top-1 agreement on random inputs."""
    sess = _runtime.session(str(req.ort_path))
    checked = _runtime.parity(sess, model, cases)
    if req.quantize is None:
        _fail_if(checked, req.rtol, f"{req.dtype} .ort")
    return checked.max_rel_error, _agreement(sess, model, args, kwargs, req)[0]
