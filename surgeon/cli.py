"""The ``surgeon`` command line: ``inspect``, ``shrink`` and ``export`` a model named by a SPEC.

    surgeon inspect torchvision:resnet50
    surgeon shrink torchvision:resnet50 --target 0.5 --out small.pt --onnx r50.onnx --report report.html
    surgeon export small.pt --onnx small.onnx

A SPEC is ``torchvision:NAME``, ``timm:NAME``, ``hf:PATH`` (a local config file or model folder;
random weights), ``file.py:FUNCTION`` (returns a model, or ``(model, example_input)``) or a
checkpoint written by ``surgeon shrink --out`` (see :mod:`surgeon.checkpoint`). Files are read
without running code from them (``torch.load(weights_only=True)``, safetensors, numpy without
pickle); a whole pickled model loads only with ``--trust-pickle``. Exit codes: 0 done, 1 the
work failed, 2 bad usage. Progress goes to stderr; ``--json`` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import inspect
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .graph.trace import shapes_of
from .specs import (LOSS_CRITERIA, SPEC_HELP, Failure, Loaded, UsageError,  # noqa: F401
                    load_data, load_spec, parse_shape)

__all__ = ["main", "load_spec", "load_data", "shrink_options", "UsageError", "Failure"]

class Progress:
    """One line per step on stderr, with a live elapsed-time spinner when stderr is a terminal."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())

    @contextlib.contextmanager
    def step(self, text: str):
        if self.quiet:
            yield
            return
        t0 = time.perf_counter()
        stop = threading.Event()
        spinner = None
        if self.live:
            def spin():
                frames = "|/-\\"
                i = 0
                while not stop.wait(0.2):
                    self.stream.write(f"\rsurgeon: {text} {frames[i % 4]} {time.perf_counter() - t0:.0f}s")
                    self.stream.flush()
                    i += 1
            spinner = threading.Thread(target=spin, daemon=True)
            spinner.start()
        else:
            self.stream.write(f"surgeon: {text} ...")
            self.stream.flush()
        ok = False
        try:
            yield
            ok = True
        finally:
            stop.set()
            if spinner:
                spinner.join()
            lead = f"\rsurgeon: {text}" if self.live else ""
            self.stream.write(f"{lead} {'done' if ok else 'failed'} ({time.perf_counter() - t0:.1f}s)\n")
            self.stream.flush()


# ---- commands ------------------------------------------------------------------------------------
def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _analyze(model: nn.Module, x: Any, args):
    from . import analyze

    try:
        return analyze(model, x, _names(args.ignore), getattr(args, "uniform", None), getattr(args, "layers", False))
    except AttributeError as exc:
        raise UsageError(f"--ignore names a module the model does not have ({exc})") from exc


def _round_to(text: str) -> int | str | None:
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or an integer") from None
    return n or None


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=1, default=str) if args.json else text)


def _check_out(path: str | None, flag: str) -> None:
    if path and not Path(path).resolve().parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {Path(path).parent} does not exist; create it first")


def _load(args, prog: Progress) -> Loaded:
    shape = parse_shape(args.input) if args.input else None
    with prog.step(f"loading {args.spec}"):
        return load_spec(args.spec, shape, trust_pickle=args.trust_pickle)


def _group_rows(a) -> list[dict]:
    flops, params = a.cost("flops").base or 1.0, a.cost("params").base or 1.0
    return [{"id": g.id, "kind": g.kind.value, "units": g.n_units, "prunable": g.prunable, "reason": g.reason,
             "flops_share": round(g.flops_per_unit * g.n_units / flops, 5),
             "params_share": round(g.params_per_unit * g.n_units / params, 5),
             "tensors": sorted({m.name for m in g.tensors})} for g in a.groups]


def cmd_inspect(args, prog: Progress) -> int:
    _check_out(args.viz, "--viz")
    loaded = _load(args, prog)
    with prog.step("tracing, coupling and grouping"):
        a = _analyze(loaded.model, loaded.example_input, args)
    rows = _group_rows(a)
    if args.viz:
        from . import visualize

        with prog.step(f"drawing {args.viz}"):
            visualize(loaded.model, loaded.example_input, args.viz, analysis=a, title=args.spec)
    flops, params = a.cost("flops").base, a.cost("params").base
    data = {"spec": args.spec, "model": type(loaded.model).__name__, "input": shapes_of(loaded.example_input),
            "capture": a.traced.mode, "ops": len(a.traced.gm.graph.nodes), "flops": flops, "params": params,
            "groups": rows, "prunable": sum(r["prunable"] for r in rows), "viz": args.viz}
    lines = [f"{args.spec} ({data['model']}): {data['ops']} ops captured by {a.traced.mode}, "
             f"{flops / 1e9:.3f} GFLOPs, {params / 1e6:.2f}M params, {len(rows)} groups "
             f"({data['prunable']} prunable)",
             f"{'id':>5}  {'kind':<8}{'units':>7}  {'FLOPs':>7}  {'params':>7}  status"]
    for r in rows:
        status = "prunable" if r["prunable"] else f"kept whole: {r['reason']}"
        lines.append(f"{r['id']:>5}  {r['kind']:<8}{r['units']:>7}  {r['flops_share']:>7.1%}  "
                     f"{r['params_share']:>7.1%}  {status}")
    if args.viz:
        lines.append(f"wrote {args.viz}")
    _emit(args, data, "\n".join(lines))
    return 0


def shrink_options(args) -> dict:
    """Every shrink option of the command line, as the keyword arguments ``surgeon.shrink`` takes
    (``surgeon.shrink(model, x, **shrink_options(args))``); ``--data`` is read here, once."""
    if args.data and getattr(args, "batches", None) is None:
        args.batches = load_data(args.data, args.trust_pickle)
    return {"target": args.target, "metric": args.metric, "criterion": args.criterion, "round_to": args.round_to,
            "ignore": _names(args.ignore), "min_keep": args.min_keep, "uniform": args.uniform,
            "layers": args.layers, "runtime": args.runtime, "data": getattr(args, "batches", None),
            "compensate": args.compensate}


def _cut(a, model: nn.Module, x: Any, args):
    """Plan, apply, measure and re-aim through the API's one landing loop (:mod:`surgeon.landing`),
    keeping the plan so that it can be saved and drawn; returns (small, plan, its FLOPs)."""
    from .api import shrink_landing
    from .errors import SurgeonError
    from .options import ShrinkConfig

    try:
        landing = shrink_landing(model, x, ShrinkConfig.of(**shrink_options(args)), analysis=a)
    except SurgeonError as exc:
        raise Failure(str(exc)) from exc
    return landing.model, landing.plan, landing.flops


def _criterion(args):
    """The criterion named by --criterion, built with the --data batches when it reads data."""
    from .criteria import get_criterion

    return get_criterion(args.criterion, data=getattr(args, "batches", None)) if _reads_data(args.criterion) \
        else args.criterion


def _reads_data(name: str) -> bool:
    from . import criteria

    factory = getattr(criteria, "CRITERIA", {}).get(name)
    with contextlib.suppress(TypeError, ValueError):
        return factory is not None and "data" in inspect.signature(factory).parameters
    return False


def _shrink_checks(args) -> None:
    """Every flag checked before the model is loaded, each failure with what to change."""
    from .graph.cost import METRICS

    if args.metric not in METRICS:
        raise UsageError(f"--metric {args.metric} is not supported yet; use one of {', '.join(METRICS)}")
    if not 0 < args.target <= 1:
        raise UsageError(f"--target {args.target} must be in (0, 1]: the fraction of the {args.metric} to keep")
    if isinstance(args.round_to, int) and args.round_to < 0:
        raise UsageError("--round-to must be 'auto', 0 (no rounding) or a positive integer")
    for flag in ("out", "onnx", "plan", "report", "viz"):
        _check_out(getattr(args, flag), f"--{flag}")
    _runtime_checks(args)
    _data_checks(args)


def _data_checks(args) -> None:
    """--criterion and --data together: read the data now, so a bad file fails before any work."""
    batches = shrink_options(args)["data"]
    if batches is not None and not (_reads_data(args.criterion) or args.compensate):
        raise UsageError(f"--data is read by the data-aware criteria (taylor, fisher, activation) and by "
                         f"--compensate; with --criterion {args.criterion} it would be ignored: add one of them")
    if batches is None and _reads_data(args.criterion):
        raise UsageError(f"--criterion {args.criterion} scores units on calibration data: pass --data FILE "
                         "(a .pt tensor or list of batches, or an .npy/.npz file)")
    if args.criterion in LOSS_CRITERIA and any(isinstance(b, torch.Tensor) for b in batches or ()):
        raise UsageError(f"--criterion {args.criterion} differentiates a loss, which needs targets: --data must "
                         "hold (inputs, targets) pairs (a list of pairs, a dict {'x': ..., 'y': ...} or an .npz "
                         "with arrays x and y) or dicts with input_ids")
    try:  # a data-aware criterion is built now, which checks its batches
        _criterion(args) if _reads_data(args.criterion) else _check_criterion(args.criterion)
    except (ValueError, TypeError, ImportError) as exc:
        raise UsageError(f"--criterion {args.criterion}: {exc}") from exc


def _check_criterion(name: str) -> None:
    from . import criteria

    known = getattr(criteria, "CRITERIA", None)
    if known is not None and name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(f"unknown criterion; {hint}use one of {', '.join(sorted(known))}")


def _runtime_checks(args) -> None:
    if args.metric == "latency" and args.runtime is None:
        raise UsageError("--metric latency is measured on a runtime: add --runtime ort-cpu or --runtime torch-cuda")
    if args.runtime == "torch-cuda" and not torch.cuda.is_available():
        raise UsageError("--runtime torch-cuda needs a CUDA GPU and torch sees none "
                         "(torch.cuda.is_available() is False); use --runtime ort-cpu")
    if args.runtime == "ort-cpu" and importlib.util.find_spec("onnxruntime") is None:
        raise UsageError("--runtime ort-cpu times layers in onnxruntime, which is not installed: "
                         "pip install onnxruntime")


def _ort_pair(model: nn.Module, x: Any, onnx_rep) -> tuple[float, int, float]:
    """onnxruntime latency of the original (exported here, batch fixed: it is only timed) and of
    the shrunk file; returns (latency before, file size before, latency after)."""
    from .exporters.onnx import export
    from .viz import report as rp

    with tempfile.TemporaryDirectory() as tmp:
        before = export(model, x, Path(tmp) / "before.onnx", dynamic_batch=False)
        return rp.ort_latency_ms(before.path, x), before.file_bytes, rp.ort_latency_ms(onnx_rep.path, x)


def _report(args, loaded: Loaded, a, small, p, flops_after: float, onnx_rep, t0: float,
            prog: Progress) -> dict:
    """Measure both models, write the report; returns the latency figures."""
    from .criteria import checked_scores, get_criterion
    from .verify import count_params
    from .viz import graph_data
    from .viz import report as rp

    model, x = loaded.model, loaded.example_input
    notes: list[str] = []
    with prog.step("measuring before and after"):
        lat_b = None
        if onnx_rep is not None:
            try:
                lat_b, size_b, lat_a = _ort_pair(model, x, onnx_rep)
                size_a, runtime, kind = onnx_rep.file_bytes, "onnxruntime CPU", "ONNX"
            except Exception as exc:  # noqa: BLE001 - fall back to torch timings, with the reason
                notes.append(f"the original model could not be exported for timing ({type(exc).__name__}: "
                             f"{str(exc)[:200]}); latency and sizes are torch's")
        if lat_b is None:
            lat_b, lat_a = rp.torch_latency_ms(model, x), rp.torch_latency_ms(small, x)
            size_b, size_a, runtime, kind = rp.saved_bytes(model), rp.saved_bytes(small), \
                f"torch CPU, {torch.get_num_threads()} threads", "torch.save"
    notes.append(f"input {shapes_of(x)}; FLOPs counted with torch.utils.flop_counter's formulas")
    with prog.step(f"writing {args.report}"):
        scores = checked_scores(get_criterion(_criterion(args)), model, list(a.groups))
        data = graph_data(a, plan=p, scores=scores, title=args.spec)
        rep = rp.ShrinkReport(args.spec, rp.Measure(a.cost("flops").base, count_params(model), size_b, lat_b),
                              rp.Measure(flops_after, count_params(small), size_a, lat_a), runtime, kind,
                              rp.layer_widths(model, small), p, data, time.perf_counter() - t0, notes)
        rp.write_report(args.report, rep)
    return {"before_ms": round(lat_b, 3), "after_ms": round(lat_a, 3), "runtime": runtime,
            "file_bytes_before": size_b, "file_bytes_after": size_a}


def cmd_shrink(args, prog: Progress) -> int:
    from .verify import count_params

    _shrink_checks(args)
    t0 = time.perf_counter()
    loaded = _load(args, prog)
    _check_save(args, loaded)
    model, x = loaded.model, loaded.example_input
    with prog.step("tracing, coupling and grouping"):
        a = _analyze(model, x, args)
    with prog.step(f"planning and cutting to {args.target} of the {args.metric}"):
        small, p, flops_after = _cut(a, model, x, args)
    flops_before, params_before, params_after = a.cost("flops").base, count_params(model), count_params(small)
    data = {"spec": args.spec, "input": shapes_of(x), "target": args.target, "metric": args.metric,
            "flops_before": flops_before, "flops_after": flops_after, "flops_ratio": flops_after / flops_before,
            "params_before": params_before, "params_after": params_after,
            "params_ratio": params_after / params_before if params_before else 1.0,
            "groups_shrunk": sum(d.kept < d.units for d in p.decisions), "groups": len(p.decisions),
            "files": {}}
    onnx_rep = _write_files(args, loaded, a, small, p, data, prog)
    if args.report:
        data["latency"] = _report(args, loaded, a, small, p, flops_after, onnx_rep, t0, prog)
        data["files"]["report"] = args.report
    data["seconds"] = round(time.perf_counter() - t0, 2)
    text = [f"{args.spec}: FLOPs {flops_before / 1e9:.3f}G -> {flops_after / 1e9:.3f}G "
            f"({data['flops_ratio']:.3f}), params {params_before / 1e6:.2f}M -> {params_after / 1e6:.2f}M "
            f"({data['params_ratio']:.3f}); {data['groups_shrunk']} of {data['groups']} groups shrink"]
    if "latency" in data:
        lat = data["latency"]
        text.append(f"latency ({lat['runtime']}): {lat['before_ms']:.2f} ms -> {lat['after_ms']:.2f} ms")
    text += [f"wrote {v} ({k})" for k, v in data["files"].items()]
    if not data["files"]:
        text.append("nothing written: pass --out, --onnx, --plan, --report or --viz to keep the result")
    _emit(args, data, "\n".join(text))
    return 0


def _write_files(args, loaded: Loaded, a, small: nn.Module, p, data: dict, prog: Progress):
    """--out, --plan, --onnx and --viz, each written whole or not at all; recorded in ``data``.
    Returns the ONNX export's report (None without --onnx)."""
    from . import _atomic

    model, x = loaded.model, loaded.example_input
    rep = None
    if args.out:
        with prog.step(f"saving {args.out}"):
            _save_out(args, loaded, small, p)
        data["files"]["out"] = args.out
    if args.plan:
        _atomic.write_text(args.plan, p.to_json(indent=1))
        data["files"]["plan"] = args.plan
    if args.onnx:
        from .exporters.onnx import export

        with prog.step(f"exporting {args.onnx} and checking it in onnxruntime"):
            rep = export(small, x, args.onnx)
        data["files"]["onnx"] = args.onnx
        data["onnx"] = {"file_bytes": rep.file_bytes, "weights": rep.weights,
                        "max_rel_error": rep.max_rel_error, "latency_ms": rep.latency_ms}
    if args.viz:
        from . import visualize

        with prog.step(f"drawing {args.viz}"):
            visualize(model, x, args.viz, plan=p, analysis=a, criterion=_criterion(args), title=args.spec)
        data["files"]["viz"] = args.viz
    return rep


def _is_hf(model: nn.Module) -> bool:
    return callable(getattr(model, "save_pretrained", None))


def _check_save(args, loaded: Loaded) -> None:
    """Refuse an --out that cannot be written, before any time is spent shrinking."""
    from . import checkpoint

    if not args.out:
        return
    out = Path(args.out)
    if not _is_hf(loaded.model):
        if out.is_dir():
            raise UsageError(f"--out {args.out} is a folder; this model is saved as one file: pass e.g. --out small.pt")
        if loaded.factory is None:
            raise UsageError(f"--out: {args.spec} is a pickled model, with no factory to rebuild it from, and "
                             "surgeon saves only weights and the plan (no code); build the model with a "
                             "file.py:FUNCTION spec (a function that returns the model) or torchvision:/timm:")
        return
    if args.uniform is False:
        raise UsageError("--no-uniform prunes widths a Hugging Face config cannot describe, so the --out folder "
                         "could not be reloaded with from_pretrained; drop --no-uniform to save it")
    if out.suffix.lower() in (".pt", ".pth", ".safetensors", ".bin", ".onnx"):
        raise UsageError(f"--out {args.out}: a Hugging Face model is saved with save_pretrained into a folder; "
                         "pass a folder path such as small/")
    if loaded.source is not None and out.resolve() == loaded.source.resolve():
        raise UsageError(f"--out {args.out} is the folder the model was read from; pass a new folder")
    try:
        checkpoint.check_pretrained_dest(out)
    except checkpoint.CheckpointError as exc:
        raise UsageError(f"--out {exc}") from exc


def _save_out(args, loaded: Loaded, small: nn.Module, p) -> None:
    from . import checkpoint

    try:
        if not _is_hf(small):
            checkpoint.save(small, (*loaded.plans, p), loaded.factory, args.out, loaded.shape)
            return
        with contextlib.suppress(ImportError, AttributeError):  # its bars would break the progress line
            importlib.import_module("transformers").utils.logging.disable_progress_bar()
        config = getattr(small, "config", None)
        saved = {k: getattr(config, k) for k in loaded.restore}
        try:  # the values the config had before tracing changed them (use_cache) go into the folder
            for k, v in loaded.restore.items():
                setattr(config, k, v)
            checkpoint.save_pretrained(small, args.out)
        finally:
            for k, v in saved.items():
                setattr(config, k, v)
    except checkpoint.CheckpointError as exc:
        raise UsageError(f"--out {exc}") from exc


def _export_options(args) -> dict:
    """Precision flags mapped onto surgeon.exporters.onnx.export's options, if it has them."""
    from .exporters.onnx import export

    params = inspect.signature(export).parameters
    opts: dict[str, Any] = {}
    if args.fp16:
        if "dtype" not in params:
            raise UsageError("--fp16 is not supported yet by surgeon.exporters.onnx.export; export fp32 for now")
        opts["dtype"] = "fp16"
    if args.int8:
        if "quantize" not in params:
            raise UsageError("--int8 is not supported yet by surgeon.exporters.onnx.export; export fp32 for now")
        opts["quantize"] = "auto"  # static with --calibration, dynamic for transformers, else an error
        if args.calibration is not None:
            opts["calibration"] = args.calibration  # read by surgeon.exporters.calibration (no pickles)
        if args.no_mixed_precision:
            opts["mixed_precision"] = False
    elif args.calibration is not None or args.no_mixed_precision:
        raise UsageError("--calibration and --no-mixed-precision go with --int8")
    if args.opset is not None:
        opts["opset"] = args.opset
    return opts


def cmd_export(args, prog: Progress) -> int:
    import dataclasses

    from . import SurgeonError
    from .exporters.onnx import export

    if args.fp16 and args.int8:
        raise UsageError("choose one of --fp16 and --int8")
    _check_out(args.onnx, "--onnx")
    opts = _export_options(args)
    loaded = _load(args, prog)
    with prog.step(f"exporting {args.onnx} and checking it in onnxruntime"):
        try:
            rep = export(loaded.model, loaded.example_input, args.onnx, **opts)
        except (SurgeonError, ImportError) as exc:
            raise Failure(str(exc)) from exc
    data = {"spec": args.spec, "input": shapes_of(loaded.example_input), **dataclasses.asdict(rep)}
    text = (f"wrote {rep.path}: {rep.file_bytes / 1e6:.2f} MB, {rep.weights / 1e6:.2f}M weights, "
            f"onnxruntime max relative error {rep.max_rel_error:.1e}, {rep.latency_ms:.2f} ms per run")
    if rep.quantize:
        text += "".join([f"\n{rep.quantize} int8: top-1 agreement with PyTorch {rep.agreement:.3f} on "
                         f"{rep.agreement_inputs}"] + [f"\n  {line}" for line in rep.fp32_nodes])
    _emit(args, data, text)
    return 0


# ---- parser and entry point ---------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    p.add_argument("--input", metavar="SHAPE", help="example input shape, e.g. 1,3,224,224 "
                   "(token ids for transformers text models)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--seed", type=int, default=0, help="random seed for weights and inputs (default 0)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="DANGEROUS: load .pt files with full pickle, which RUNS CODE FROM THE FILE; only for "
                        "files you made or fully trust (by default .pt files load with weights_only=True)")


def _min_keep(text: str) -> int | float:
    """``"0.1"`` -> a fraction of each group's units; ``"2"`` -> a count of units."""
    if re.fullmatch(r"\s*\d+\s*", text) and int(text) >= 1:
        return int(text)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1) or a unit count >= 1")
    return value


def _shrink_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", type=float, default=0.5, help="fraction of the cost to keep (default 0.5)")
    p.add_argument("--metric", default="flops", choices=("flops", "params", "latency"),
                   help="what --target is a fraction of (latency needs --runtime)")
    p.add_argument("--runtime", choices=("ort-cpu", "torch-cuda"),
                   help="time the layers on this runtime and prefer cuts that make it faster")
    p.add_argument("--round-to", type=_round_to, default="auto", metavar="N",
                   help="keep widths multiples of N; 'auto' (default) rounds where the target allows, 0 never")
    p.add_argument("--criterion", default="l2", metavar="NAME",
                   help="unit scores: l2 (default), l1, bn_scale, lamp, random, gnn; with --data: taylor, "
                        "fisher, activation")
    p.add_argument("--data", metavar="FILE", help="calibration batches for data-aware criteria and --compensate: "
                   ".pt (a tensor, split into batches of 8; a list of tensors or of (x, y) pairs), .npy or .npz")
    p.add_argument("--compensate", action="store_true",
                   help="refit the layers that read removed units (least squares on --data, else data-free)")
    p.add_argument("--layers", action="store_true", help="also remove whole residual layers")
    p.add_argument("--min-keep", type=_min_keep, default=0.1, metavar="K",
                   help="every group keeps at least K of its units: a fraction (default 0.1) or a count")
    p.add_argument("--uniform", action=argparse.BooleanOptionalAction, default=None,
                   help="repeated layers keep one width, as a Hugging Face config needs (default: on for them)")
    p.add_argument("--ignore", metavar="MODULES", help="comma-separated modules to keep whole")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="surgeon", description="Graph-based structural pruning for PyTorch.",
                                 epilog=f"SPEC: {SPEC_HELP}. Exit codes: 0 done, 1 failed, 2 bad usage.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("inspect", help="list the pruning groups as a table")
    _common(p)
    p.add_argument("--ignore", metavar="MODULES", help="comma-separated modules to keep whole")
    p.add_argument("--layers", action="store_true", help="also list whole residual layers as units")
    p.add_argument("--uniform", action=argparse.BooleanOptionalAction, default=None,
                   help="repeated layers keep one width, as a Hugging Face config needs (default: on for them)")
    p.add_argument("--viz", metavar="PATH", help="also draw the groups (.html page or .dot)")
    p.set_defaults(run=cmd_inspect)
    p = sub.add_parser("shrink", help="shrink to a fraction of the cost; save, export, report")
    _common(p)
    _shrink_flags(p)
    p.add_argument("--out", metavar="PATH", help="save the shrunk model: one safetensors file with the weights, "
                   "the plan and the factory spec (reload: surgeon export PATH, surgeon.checkpoint.load); "
                   "a folder (save_pretrained) for Hugging Face models")
    p.add_argument("--onnx", metavar="PATH.onnx", help="export the shrunk model to ONNX")
    p.add_argument("--plan", metavar="PATH.json", help="save the plan as JSON")
    p.add_argument("--report", metavar="PATH.html", help="write the shrink report")
    p.add_argument("--viz", metavar="PATH", help="draw the groups with the plan (.html or .dot)")
    p.set_defaults(run=cmd_shrink)
    p = sub.add_parser("export", help="export a model to ONNX, checked in onnxruntime")
    _common(p)
    p.add_argument("--onnx", metavar="PATH.onnx", required=True, help="where to write the ONNX file")
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute")
    p.add_argument("--int8", action="store_true", help="int8: static (int8 weights and activations) with "
                   "--calibration; without it dynamic for transformers, an error for convolutional networks")
    p.add_argument("--calibration", metavar="DATA", help="calibration inputs for --int8: a folder of images, "
                   "a .pt (weights_only) / .npy / .npz (no pickle) file of input tensors, or file.py:FUNCTION")
    p.add_argument("--no-mixed-precision", action="store_true",
                   help="with --int8: quantize every supported node instead of timing each in both precisions")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.set_defaults(run=cmd_export)
    from .cli_apply import add_apply  # surgeon apply PLAN IN_DIR OUT_DIR (a checkpoint, shard by shard)
    add_apply(sub)
    from .cli_recover import add_recover  # surgeon recover SMALL --data FILE --out PATH (distillation)
    add_recover(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (0 done, 1 failed, 2 bad usage).

    >>> main(["inspect", "nope:resnet50"])  # the message goes to stderr
    2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad usage (message already on stderr), 0 on --help
        return int(exc.code or 0)
    torch.manual_seed(args.seed)
    if args.trust_pickle:  # said even with --quiet: it is about what runs on this machine
        print("surgeon: warning: --trust-pickle: .pt files are unpickled in full, which runs any code they "
              "contain; use it only on files you made or fully trust", file=sys.stderr)
    try:
        return args.run(args, Progress(quiet=args.quiet))
    except UsageError as exc:
        print(f"surgeon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:
        print(f"surgeon {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - any other failure is exit code 1 with its message
        if os.environ.get("SURGEON_DEBUG"):
            raise
        print(f"surgeon {args.command}: failed: {type(exc).__name__}: {exc}\n"
              "(set SURGEON_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1
