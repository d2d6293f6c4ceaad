"""The ``surgeon`` command line: ``inspect``, ``shrink`` and ``export`` a model named by a SPEC.

    surgeon inspect torchvision:resnet50
    surgeon shrink torchvision:resnet50 --target 0.5 --onnx r50.onnx --report report.html
    surgeon export small.pt --onnx small.onnx

A SPEC is ``torchvision:NAME``, ``timm:NAME``, ``hf:PATH`` (a local config file or model folder;
random weights), ``file.py:FUNCTION`` (returns a model, or ``(model, example_input)``) or a saved
``.pt`` model (``torch.save(model, path)``). Exit codes: 0 done, 1 the work failed, 2 bad usage.
Progress goes to stderr; ``--json`` prints one JSON document on stdout.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .graph.trace import shapes_of

__all__ = ["main", "load_spec", "UsageError", "Failure"]

PREFIXES = ("torchvision", "timm", "hf")
SPEC_HELP = ("torchvision:NAME, timm:NAME, hf:PATH (config file or folder), file.py:FUNCTION, "
             "or a saved model.pt")


class UsageError(Exception):
    """The command line is wrong: exit code 2, with what to change."""


class Failure(Exception):
    """The work itself failed: exit code 1."""


# ---- model specs -----------------------------------------------------------------------------
@dataclass
class Loaded:
    model: nn.Module
    example_input: Any
    spec: str


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``"1x3x224x224"``) -> ``(1, 3, 224, 224)``.

    >>> parse_shape("1,3,224,224"), parse_shape("1x128")
    ((1, 3, 224, 224), (1, 128))
    """
    if not re.fullmatch(r"\s*\d+(\s*[,x]\s*\d+)*\s*", text) or any(int(d) < 1 for d in re.findall(r"\d+", text)):
        raise UsageError(f"--input {text!r} is not a shape; write positive sizes like 1,3,224,224")
    return tuple(int(d) for d in re.findall(r"\d+", text))


def _need(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"this spec needs {module}, which is not installed: pip install {extra}") from exc


def _torchvision(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    tv = _need("torchvision", "torchvision")
    try:
        model = tv.models.get_model(name, weights=None)
    except ValueError as exc:
        close = difflib.get_close_matches(name, tv.models.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise UsageError(f"torchvision has no model '{name}'{hint}") from exc
    size = 224
    with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
        size = int(tv.models.get_model_weights(name).DEFAULT.transforms().crop_size[0])
    return model, (1, 3, size, size)


def _timm(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    timm = _need("timm", "timm")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise UsageError(f"timm has no model '{name}'{hint}")
    model = timm.create_model(name, pretrained=False)
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    return model, (1, *size)


def _hf(path: str) -> tuple[nn.Module, None]:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"hf: {path} does not exist; pass a local folder with config.json or a config file "
                         "(surgeon never downloads)")
    if p.is_dir() and not (p / "config.json").exists():
        raise UsageError(f"hf: {path} has no config.json; pass a model folder or a config.json file")
    transformers = _need("transformers", "transformers")
    try:
        config = transformers.AutoConfig.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"hf: cannot read a config from {path}: {exc}") from exc
    if hasattr(config, "use_cache"):
        config.use_cache = False  # a cache object in the output cannot be traced
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    return model, None


def _load_factory(file: str, func: str) -> Loaded:
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{file} not found; SPEC file.py:FUNCTION needs an existing Python file")
    spec = importlib.util.spec_from_file_location(f"_surgeon_spec_{abs(hash(str(path.resolve())))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file; reported with what to fix
        raise Failure(f"importing {file} raised {type(exc).__name__}: {exc}; fix the file") from exc
    factory = getattr(module, func, None)
    if not callable(factory):
        have = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise UsageError(f"{file} has no function '{func}'; define it or name one of: {', '.join(have) or 'none'}")
    try:
        out = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory; reported with what to fix
        raise Failure(f"factory {file}:{func}() raised {type(exc).__name__}: {exc}; fix the factory") from exc
    example = None
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], nn.Module):
        out, example = out
    if not isinstance(out, nn.Module):
        raise Failure(f"factory {file}:{func}() returned {type(out).__name__}; return an nn.Module "
                      "or (model, example_input)")
    return Loaded(out, example, f"{file}:{func}")


def _load_saved(file: str) -> Loaded:
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{file} not found; pass a model saved with torch.save(model, '{path.name}')")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - pickle errors come in every type
        raise Failure(f"cannot load {file} ({type(exc).__name__}: {exc}); is it a torch.save file "
                      "whose model classes are importable here?") from exc
    example = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        obj, example = obj["model"], obj.get("example_input")
    if not isinstance(obj, nn.Module):
        what = "a state_dict" if isinstance(obj, dict) else type(obj).__name__
        raise UsageError(f"{file} holds {what}, not a model; save the whole module with "
                         "torch.save(model, path), or use file.py:FUNCTION to build it")
    return Loaded(obj, example, file)


def _default_input(model: nn.Module, shape: tuple[int, ...] | None) -> Any:
    """Random tokens for a transformers text model, pixels for one that sees images, else randn."""
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    if config is not None and main == "input_ids":
        longest = getattr(config, "max_position_embeddings", 32) or 32
        shape = shape or (1, min(32, longest))
        return {"input_ids": torch.randint(0, getattr(config, "vocab_size", 100), shape)}
    if config is not None and main == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = size[0] if isinstance(size, (tuple, list)) else size
        shape = shape or (1, getattr(config, "num_channels", 3), size, size)
        return {"pixel_values": torch.randn(shape)}
    return torch.randn(shape or (1, 3, 224, 224))


def load_spec(spec: str, shape: tuple[int, ...] | None = None) -> Loaded:
    """Build the model a SPEC names and its example input (``shape`` overrides the default)."""
    prefix, sep, rest = spec.partition(":")
    builders: dict[str, Callable] = {"torchvision": _torchvision, "timm": _timm, "hf": _hf}
    if sep and prefix in builders:
        if not rest:
            raise UsageError(f"'{spec}' names no model; write {prefix}:NAME")
        model, default = builders[prefix](rest)
        x = _default_input(model, shape or default) if prefix != "hf" else _default_input(model, shape)
        return Loaded(model.eval(), x, spec)
    if spec.endswith((".pt", ".pth")):
        loaded = _load_saved(spec)
    elif ".py:" in spec:
        file, _, func = spec.rpartition(":")
        loaded = _load_factory(file, func)
    elif spec.endswith(".py"):
        raise UsageError(f"name the function that builds the model: {spec}:FUNCTION")
    elif sep:
        raise UsageError(f"unknown model spec prefix '{prefix}:' in '{spec}'; use {SPEC_HELP}")
    else:
        raise UsageError(f"'{spec}' is not a model spec; use {SPEC_HELP}")
    if shape is not None or loaded.example_input is None:
        loaded.example_input = _default_input(loaded.model, shape)
    loaded.model.eval()
    return loaded


# ---- progress on stderr ------------------------------------------------------------------------
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
def _analyze(model: nn.Module, x: Any, ignore: str | None):
    from .analysis import analyze

    names = [n.strip() for n in (ignore or "").split(",") if n.strip()]
    try:
        return analyze(model, x, names)
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
        return load_spec(args.spec, shape)


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
        a = _analyze(loaded.model, loaded.example_input, args.ignore)
    rows = _group_rows(a)
    if args.viz:
        from .viz import visualize

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


def _cut(a, model: nn.Module, x: Any, args):
    """Plan and apply, re-aiming while the independent counter disagrees (as surgeon.shrink does),
    keeping the plan so that it can be saved and drawn."""
    from .api import apply, plan
    from .errors import SurgeonError
    from .verify import count_params, measure

    base, want = a.cost(args.metric).base, args.target
    goal, best = want, None
    for _ in range(4):
        try:
            p = plan(model, x, goal, metric=args.metric, criterion=args.criterion, round_to=args.round_to,
                     analysis=a)
            small = apply(model, p)
            flops, shapes = measure(small, x)
        except SurgeonError as exc:
            raise Failure(str(exc)) from exc
        if shapes != a.traced.reference_shapes:
            raise Failure(f"the shrunk model's output shapes changed ({a.traced.reference_shapes} -> {shapes}); "
                          "this is a bug in a coupling rule: please report it; --ignore MODULE keeps a module whole")
        got = (flops if args.metric == "flops" else count_params(small)) / base
        if best is None or abs(got - want) < best[3]:
            best = (small, p, flops, abs(got - want))
        if abs(got - want) <= 0.004 or want >= 1.0 or got <= 0:
            break
        goal = min(1.0, max(1e-6, goal * want / got))
    return best[0], best[1], best[2]


def _shrink_checks(args) -> None:
    from .graph.cost import METRICS

    if args.metric not in METRICS:
        raise UsageError(f"--metric {args.metric} is not supported yet; use one of {', '.join(METRICS)}")
    if not 0 < args.target <= 1:
        raise UsageError(f"--target {args.target} must be in (0, 1]: the fraction of the {args.metric} to keep")
    if isinstance(args.round_to, int) and args.round_to < 0:
        raise UsageError("--round-to must be 'auto', 0 (no rounding) or a positive integer")
    for flag in ("out", "onnx", "plan", "report", "viz"):
        _check_out(getattr(args, flag), f"--{flag}")


def _ort_pair(model: nn.Module, x: Any, onnx_rep) -> tuple[float, int, float]:
    """onnxruntime latency of the original (exported here, batch fixed: it is only timed) and of
    the shrunk file; returns (latency before, file size before, latency after)."""
    from .exporters.onnx import export
    from .viz import report as rp

    with tempfile.TemporaryDirectory() as tmp:
        before = export(model, x, Path(tmp) / "before.onnx", dynamic_batch=False)
        return rp.ort_latency_ms(before.path, x), before.file_bytes, rp.ort_latency_ms(onnx_rep.path, x)


def _report(args, loaded: Loaded, a, small, p, flops_after: float, onnx_rep, t0: float, prog: Progress) -> dict:
    """Measure both models, write the report; returns the latency figures."""
    from .criteria import get_criterion
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
        scores = get_criterion(args.criterion).score(model, a.groups)
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
    model, x = loaded.model, loaded.example_input
    with prog.step("tracing, coupling and grouping"):
        a = _analyze(model, x, args.ignore)
    with prog.step(f"planning and cutting to {args.target} of the {args.metric}"):
        small, p, flops_after = _cut(a, model, x, args)
    flops_before, params_before, params_after = a.cost("flops").base, count_params(model), count_params(small)
    data = {"spec": args.spec, "input": shapes_of(x), "target": args.target, "metric": args.metric,
            "flops_before": flops_before, "flops_after": flops_after, "flops_ratio": flops_after / flops_before,
            "params_before": params_before, "params_after": params_after,
            "params_ratio": params_after / params_before if params_before else 1.0,
            "groups_shrunk": sum(d.kept < d.units for d in p.decisions), "groups": len(p.decisions),
            "files": {}}
    if args.out:
        with prog.step(f"saving {args.out}"):
            torch.save(small, args.out)
        data["files"]["out"] = args.out
    if args.plan:
        p.save(args.plan)
        data["files"]["plan"] = args.plan
    onnx_rep = None
    if args.onnx:
        from .exporters.onnx import export

        with prog.step(f"exporting {args.onnx} and checking it in onnxruntime"):
            onnx_rep = export(small, x, args.onnx)
        data["files"]["onnx"] = args.onnx
        data["onnx"] = {"file_bytes": onnx_rep.file_bytes, "weights": onnx_rep.weights,
                        "max_rel_error": onnx_rep.max_rel_error, "latency_ms": onnx_rep.latency_ms}
    if args.viz:
        from .viz import visualize

        with prog.step(f"drawing {args.viz}"):
            visualize(model, x, args.viz, plan=p, analysis=a, criterion=args.criterion, title=args.spec)
        data["files"]["viz"] = args.viz
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
        opts["quantize"] = "dynamic"
    if args.opset is not None:
        opts["opset"] = args.opset
    return opts


def cmd_export(args, prog: Progress) -> int:
    import dataclasses

    from .errors import SurgeonError
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="surgeon", description="Graph-based structural pruning for PyTorch.",
                                 epilog=f"SPEC: {SPEC_HELP}. Exit codes: 0 done, 1 failed, 2 bad usage.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("inspect", help="list the pruning groups as a table")
    _common(p)
    p.add_argument("--ignore", metavar="MODULES", help="comma-separated modules to keep whole")
    p.add_argument("--viz", metavar="PATH", help="also draw the groups (.html page or .dot)")
    p.set_defaults(run=cmd_inspect)
    p = sub.add_parser("shrink", help="shrink to a fraction of the cost; save, export, report")
    _common(p)
    p.add_argument("--target", type=float, default=0.5, help="fraction of the cost to keep (default 0.5)")
    p.add_argument("--metric", default="flops", choices=("flops", "params", "latency"))
    p.add_argument("--round-to", type=_round_to, default="auto", metavar="N",
                   help="keep widths multiples of N; 'auto' (default) rounds where the target allows, 0 never")
    p.add_argument("--criterion", default="l2", help="unit scores: l2 (default), l1, bn_scale, random")
    p.add_argument("--ignore", metavar="MODULES", help="comma-separated modules to keep whole")
    p.add_argument("--out", metavar="PATH.pt", help="save the shrunk model (torch.save of the module)")
    p.add_argument("--onnx", metavar="PATH.onnx", help="export the shrunk model to ONNX")
    p.add_argument("--plan", metavar="PATH.json", help="save the plan as JSON")
    p.add_argument("--report", metavar="PATH.html", help="write the shrink report")
    p.add_argument("--viz", metavar="PATH", help="draw the groups with the plan (.html or .dot)")
    p.set_defaults(run=cmd_shrink)
    p = sub.add_parser("export", help="export a model to ONNX, checked in onnxruntime")
    _common(p)
    p.add_argument("--onnx", metavar="PATH.onnx", required=True, help="where to write the ONNX file")
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute")
    p.add_argument("--int8", action="store_true", help="int8 weights (dynamic quantisation)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.set_defaults(run=cmd_export)
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
