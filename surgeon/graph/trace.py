"""Capture a model as an fx graph with shapes and per-node FLOPs.

``torch.fx.symbolic_trace`` is tried first: it keeps ``nn`` modules as leaves, so rules can be
keyed by module type. When it fails (data-dependent control flow, unsupported Python), the model
is captured with ``torch.export`` (non-strict) and unlifted, which gives an fx graph of ATen ops
whose parameters are ``get_attr`` nodes with the same qualified names as in the user's model.

Capture never mutates the model: training flags are restored, the forward used to propagate
shapes runs in eval mode, so BatchNorm statistics are not touched, and whatever ``forward`` writes
into the model during the capture (a cache of anchors, the last shape seen) is taken back (see
:mod:`surgeon.graph._snapshot`). A model that writes state on its first call is captured as it
runs from its second: one real forward warms it up first, and is taken back too.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .. import _walks
from ..errors import TraceError
from ..slicing.fixers import has_fixer
from ._fxcapture import explicit_forward, _FxCapture, _Tracer
from .partial import partial_capture
from ._snapshot import ReadRecorder, untouched
from .flops import FlopTally, NodeInfo, _describe, _propagate, count_known, no_fast_path  # noqa: F401
from .run import eval_mode, normalize_inputs, run_model, shapes_of  # noqa: F401

log = logging.getLogger(__name__)

__all__ = ["Traced", "trace", "try_trace", "normalize_inputs", "run_model", "shapes_of", "FlopTally", "count_known"]


@dataclass
class Traced:
    """An fx capture of a model: the graph, shapes, FLOPs per node and how it was captured."""

    model: nn.Module
    gm: Any  # fx.GraphModule (export) or _FxCapture (fx): both have .graph and get_submodule
    mode: str  # "fx" or "export"
    info: dict[str, NodeInfo] = field(default_factory=dict)
    output_shape: Any = None
    reference_shapes: Any = None  # shapes_of(model(example_input)), as the user's model returns it
    _tensors: dict | None = field(default=None, repr=False)
    # every op is one whose FLOPs are known without a counter (so grad mode cannot change them)
    plain: bool = False
    _modules: dict | None = field(default=None, repr=False)
    _shapes: dict = field(default_factory=dict, repr=False)
    # plain int (or int list) attributes of user modules that forward read during the capture:
    # (module path, attribute, value); widths a graph may never show (``assert x.shape[1] == self.c``)
    attr_reads: tuple = ()
    warmed: bool = False  # captured after one real forward (the model writes state on its first call)
    # a partial capture (see surgeon.graph.partial): the submodules captured, and those with
    # parameters left to opaque code; empty for a whole-model capture
    parts: tuple = ()
    opaque: tuple = ()

    def same_output(self, shapes: Any) -> bool:
        """Whether a model's output ``shapes`` (as :func:`shapes_of` gives them) match the capture's.
        After a partial capture the opaque code may keep a data-dependent count of rows (a
        detector's boxes), so there the first dim of each tensor is not compared."""
        if not self.parts:
            return shapes == self.reference_shapes
        return _loose(shapes) == _loose(self.reference_shapes)

    @property
    def graph(self) -> fx.Graph:
        return self.gm.graph

    def shape(self, node: Any) -> tuple[int, ...] | None:
        if not isinstance(node, fx.Node):
            return None
        name = node.name
        try:
            return self._shapes[name]  # read by every rule several times: converted once
        except KeyError:
            s = self.info[name].shape
            s = self._shapes[name] = tuple(s) if isinstance(s, torch.Size) else None
            return s

    def total_flops(self) -> int:
        return sum(i.flops for i in self.info.values())

    def submodule(self, target: str) -> nn.Module:
        """``gm.get_submodule(target)`` through a table built once (AttributeError if none)."""
        if self._modules is None:
            self._modules = _walks.modules(_root(self.gm))  # the walk the rest of the call shares
        try:
            return self._modules[target]
        except KeyError:
            return self.gm.get_submodule(target)

    def tensor(self, qualname: str) -> torch.Tensor:
        """A parameter or buffer of the captured graph's root by qualified name (KeyError if none)."""
        return self.tensors()[qualname]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of the captured graph's root by qualified name, aliases
        (one tensor under several names) included. Built once; do not modify."""
        if self._tensors is None:
            root = _root(self.gm)
            self._tensors = dict(_walks.parameters(root))
            self._tensors.update(_walks.buffers(root))
        return self._tensors


def _loose(shapes: Any) -> Any:
    """``shapes`` with the first dim of every tensor shape replaced by ``"*"`` (not compared)."""
    if isinstance(shapes, tuple) and all(isinstance(d, int) for d in shapes):
        return ("*",) + shapes[1:] if shapes else shapes
    if isinstance(shapes, (tuple, list)):
        return type(shapes)(_loose(v) for v in shapes)
    if isinstance(shapes, dict):
        return {k: _loose(v) for k, v in shapes.items()}
    return shapes


def _root(gm: Any) -> nn.Module:
    """The module a capture's node targets name: the user's model (fx) or the GraphModule (export)."""
    return gm.root if isinstance(gm, _FxCapture) else gm


def _fx_capture(model: nn.Module, args: tuple, kwargs: dict) -> _FxCapture:
    sig = inspect.signature(model.forward)
    params = list(sig.parameters.values())
    given = {p.name for p in params[: len(args)]} | set(kwargs)
    concrete = {
        p.name: p.default
        for p in params
        if p.name not in given
        and p.default is not inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    tracer = _Tracer()
    before = set(vars(model))
    try:
        try:
            graph = tracer.trace(model, concrete_args=concrete or None)
        except ValueError as exc:
            if "co_varnames" not in str(exc):
                raise
            # fx rewrites the code of a root forward that takes *args/**kwargs, and cannot where a
            # decorator's wrapper stands in for it (a Hugging Face ``deprecate_kwarg``, say): trace
            # from a function naming exactly the inputs given, which calls forward as the user does
            names = [p.name for p in params[: len(args)]] + [k for k in kwargs if k not in {p.name for p in params[: len(args)]}]
            tracer = _Tracer(root_fn=explicit_forward(type(model).forward, names))
            graph = tracer.trace(model)
    finally:  # fx stores constants made in forward on the root: keep them off the user's model
        constants = {name: vars(model).pop(name) for name in set(vars(model)) - before}
    return _FxCapture(tracer.root, graph, constants)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs whole graphs at WARNING when it fails; the TraceError says enough."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.fx.experimental.symbolic_shapes",
                                              "torch._export", "torch.export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_capture(model: nn.Module, args: tuple, kwargs: dict) -> fx.GraphModule:
    with _quiet_torch_logs(), warnings.catch_warnings():
        # a model that caches a tensor on its first call: the snapshot takes it back, say nothing
        warnings.filterwarnings("ignore", message=".*was assigned during export")
        ep = torch.export.export(model, args, kwargs=kwargs, strict=False)
    return ep.module()


def _failure_stack(exc: BaseException, model: nn.Module) -> list[str]:
    """The paths of the submodules of ``model`` whose frames are on the failure's stack."""
    names = {id(m): n for n, m in model.named_modules()}
    tb, out = exc.__traceback__, []
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names and names[id(owner)] not in out:
            out.append(names[id(owner)])
        tb = tb.tb_next
    return out


def _failure_site(exc: BaseException, model: nn.Module) -> str:
    """Where tracing failed: the innermost submodule of ``model`` on the stack, and the line."""
    names = {id(m): n for n, m in model.named_modules()}
    tb = exc.__traceback__
    site, module = "", None
    while tb is not None:
        frame = tb.tb_frame
        fname = frame.f_code.co_filename
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            module = names[id(owner)] or "<root>"
        if "/torch/" not in fname and "/surgeon/" not in fname:
            site = f"{fname}:{tb.tb_lineno} in {frame.f_code.co_name}"
        tb = tb.tb_next
    where = f"module '{module}'" if module else ""
    return ", ".join(p for p in (where, site) if p)


def trace(model: nn.Module, example_input: Any) -> Traced:
    """Capture ``model`` called on ``example_input`` as an fx graph with shapes and FLOPs.

    >>> import torch
    >>> t = trace(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()), torch.randn(2, 4))
    >>> t.mode, t.output_shape
    ('fx', torch.Size([2, 8]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = normalize_inputs(example_input)
    traced, errors, _ = _trace(model, args, kwargs)
    if traced is None:  # the largest submodules that capture, the code between them opaque
        traced = _partial(model, args, kwargs, errors)
    if traced is not None:
        return traced
    with eval_mode(model), untouched(model):
        _check_runs(model, args, kwargs)  # is it the input, rather than the capture, that fails?
    raise TraceError(
        f"could not capture {type(model).__name__} as a graph.\n  " + "\n  ".join(errors) +
        "\nWhat to do: make the failing code traceable (torch.fx.wrap a helper with data-dependent "
        "control flow, or keep it in a leaf module), or pass an example input that avoids the branch."
    ) from None


def _partial(model: nn.Module, args: tuple, kwargs: dict, errors: list[str]) -> Traced | None:
    """:func:`surgeon.graph.partial.partial_capture` as a :class:`Traced` (whatever its real run
    writes into ``model`` taken back), or None where no part captures."""
    with eval_mode(model, _walks.module_list(model)), untouched(model):
        try:
            got = partial_capture(model, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - the whole-model errors say what fails
            errors.append(f"partial: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}")
            return None
    if got is None:
        return None
    gm, info, out = got
    log.info("surgeon: %s captured in %d parts (%s); opaque: %s", type(model).__name__, len(gm.parts),
             ", ".join(gm.parts), ", ".join(gm.opaque) or "nothing with parameters")
    return Traced(model=model, gm=gm, mode="fx", info=info, output_shape=_describe(out),
                  reference_shapes=shapes_of(out), plain=False, parts=gm.parts, opaque=gm.opaque)


def try_trace(model: nn.Module, example_input: Any) -> tuple[Traced | None, list[str]]:
    """:func:`trace`, or (None, the module paths on the stack where the last capture failed,
    outermost first) where neither capture works; for differential captures of trial cuts."""
    args, kwargs = normalize_inputs(example_input)
    traced, _, stack = _trace(model, args, kwargs)
    return traced, stack


def _trace(model: nn.Module, args: tuple, kwargs: dict) -> tuple[Traced | None, list[str], list[str]]:
    """The capture, with whatever it writes into ``model`` taken back; where the cold capture
    writes state, the model is warmed up by one real forward and captured again."""
    with eval_mode(model, _walks.module_list(model)), torch.enable_grad():
        with untouched(model) as snap:
            traced, errors, stack = _capture(model, args, kwargs)
            written = snap.changes()
        if written:  # state written on the first call: capture the model as it runs from the second
            log.debug("surgeon: capture wrote into the model (%s); capturing it warmed up", written[:3])
            with untouched(model):
                if _warm_up(model, args, kwargs):
                    warm = _capture(model, args, kwargs, warmed=True)
                    if warm[0] is not None or traced is None:
                        traced, errors, stack = warm
    return traced, errors, stack


def _capture(model: nn.Module, args: tuple, kwargs: dict, warmed: bool = False
             ) -> tuple[Traced | None, list[str], list[str]]:
    """fx, then torch.export; the first that captures and runs wins. (None, errors, the module
    stack of the last failure) if neither. The caller restores what the capture wrote into ``model``."""
    errors: list[str] = []
    stack: list[str] = []
    for mode, capture in (("fx", _fx_capture), ("export", _export_capture)):
        try:
            with ReadRecorder(model, skip=has_fixer) as rec:
                gm = capture(model, args, kwargs)
                flat = list(args) + [kwargs[k] for k in _placeholder_kwargs(gm, args, kwargs)]
                constants = gm.constants if isinstance(gm, _FxCapture) else {}
                if warmed and isinstance(gm, _FxCapture):
                    _keep_state(gm, model)
                info, out, modules, known = _propagate(gm, _root(gm), flat, constants)
        except Exception as exc:  # noqa: BLE001 - any failure means "try the next capture"
            site = _failure_site(exc, model)
            stack = _failure_stack(exc, model)
            errors.append(f"{mode}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
                          + (f" (at {site})" if site else ""))
            continue
        return Traced(model=model, gm=gm, mode=mode, info=info, output_shape=_describe(out),
                      reference_shapes=shapes_of(out), plain=known, _modules=modules,
                      attr_reads=rec.reads(), warmed=warmed), errors, stack
    return None, errors, stack


def _warm_up(model: nn.Module, args: tuple, kwargs: dict) -> bool:
    """One real forward (no autograd), so that state written on the first call exists."""
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the cold capture's errors say what fails
        return False
    return True


def _keep_state(gm: _FxCapture, model: nn.Module) -> None:
    """Tensors a warmed-up model holds in plain attributes (its cached state, which the snapshot
    takes back) are kept beside the capture, as fx's own constants are."""
    registered = {id(t) for t in _walks.parameters(model).values()}
    registered.update(id(t) for _, t in model.named_buffers(remove_duplicate=False))  # after the warm-up
    for n in gm.graph.nodes:
        if n.op != "get_attr" or n.target in gm.constants:
            continue
        value: Any = model
        for part in str(n.target).split("."):
            value = getattr(value, part, None)
        if isinstance(value, torch.Tensor) and id(value) not in registered:
            gm.constants[n.target] = value


def _check_runs(model: nn.Module, args: tuple, kwargs: dict) -> None:
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the model rejects its own input: say so
        raise ValueError(
            f"{type(model).__name__} fails on the example input ({type(exc).__name__}: {exc}); "
            "pass an input the model accepts (a tensor, a tuple of tensors, or a dict of kwargs)"
        ) from exc


def _placeholder_kwargs(gm: fx.GraphModule, args: tuple, kwargs: dict) -> list[str]:
    """Names of keyword inputs, in placeholder order, after the positional ones."""
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    names = [str(n).lstrip("*") for n in names][len(args):]
    return [n for n in names if n in kwargs]
