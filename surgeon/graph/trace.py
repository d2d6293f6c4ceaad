"""Capture a model as an fx graph with shapes and per-node FLOPs.

``torch.fx.symbolic_trace`` is tried first: it keeps ``nn`` modules as leaves, so rules can be
keyed by module type. When it fails (data-dependent control flow, unsupported Python), the model
is captured with ``torch.export`` (non-strict) and unlifted, which gives an fx graph of ATen ops
whose parameters are ``get_attr`` nodes with the same qualified names as in the user's model.

Capture never mutates the model: training flags are restored and the forward used to propagate
shapes runs in eval mode, so BatchNorm statistics are not touched.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.fx.traceback as fx_traceback
from torch import nn

from .. import _walks
from ..errors import TraceError
from .flops import FlopTally, NodeInfo, _describe, _propagate, count_known, no_fast_path  # noqa: F401
from .run import eval_mode, normalize_inputs, run_model, shapes_of  # noqa: F401

__all__ = ["Traced", "trace", "normalize_inputs", "run_model", "shapes_of", "FlopTally", "count_known"]


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
            self._modules = dict(self.gm.named_modules(remove_duplicate=False))
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
            self._tensors.update(root.named_buffers(remove_duplicate=False))
        return self._tensors


class _FxCapture:
    """What ``symbolic_trace`` gives, without compiling a GraphModule: the graph and the user's
    own model as its root (node targets are qualified names in it). Attribute look-ups such as
    ``get_submodule`` and ``get_parameter`` go to the root."""

    def __init__(self, root: nn.Module, graph: fx.Graph, constants: dict[str, Any] | None = None):
        self.root = root
        self.graph = graph
        self.constants = constants or {}  # tensors fx made in forward (``_tensor_constant0``), by name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.root, name)


_PLAIN_ARGS = frozenset({int, float, bool, str, type(None)})


class _Tracer(fx.Tracer):
    """The default fx tracer, keeping torch.nn modules (but not containers) as leaves. The
    torch.nn transformer blocks are made of other modules, so they are traced through (or, where
    their forward is not traceable, the capture falls back to torch.export), never a leaf that
    no rule knows."""

    _COMPOSITE = (nn.TransformerEncoder, nn.TransformerEncoderLayer, nn.TransformerDecoder,
                  nn.TransformerDecoderLayer, nn.Transformer)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not isinstance(m, self._COMPOSITE) and super().is_leaf_module(m, qualname)

    def create_arg(self, a: Any) -> Any:
        """Proxies, and flat tuples/lists of proxies and plain constants (nearly every argument of
        a module call), lowered directly; everything else as fx does it."""
        kind = type(a)
        if kind is fx.Proxy:
            return a.node
        if kind is tuple or kind is list:
            if all(type(e) is fx.Proxy or type(e) in _PLAIN_ARGS for e in a):
                return kind(e.node if type(e) is fx.Proxy else e for e in a)
        elif kind is dict and not a:
            return {}
        return super().create_arg(a)

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None) -> fx.Node:
        """``TracerBase.create_node`` for plain symbolic tracing, without what only other uses need
        (mutation checks, preserved export metadata, recorded stack traces, the deprecated scope
        table) and with the module stack copied as a plain dict (``copy.copy`` of an OrderedDict
        goes through ``__reduce_ex__``, a third of the cost of a node on deep models).

        The node is created without arguments, which are then assigned (``Node.args``' setter
        records the uses, as the constructor does): ``Graph.create_node`` walks the arguments
        of every call node through pytree to warn about raw SymInts, which plain symbolic tracing
        never makes, and that walk was a fifth of the capture on deep models."""
        if self.check_mutable_operations or self.record_stack_traces or fx_traceback.has_preserved_node_meta():
            return super().create_node(kind, target, args, kwargs, name, type_expr)
        node = self.graph.create_node(kind, target, None, None, name, type_expr)
        if args:
            node.args = args
        if kwargs:
            node.kwargs = kwargs
        if self.module_stack:
            node.meta["nn_module_stack"] = dict(self.module_stack)
        return node


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
        graph = tracer.trace(model, concrete_args=concrete or None)
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
    with _quiet_torch_logs():
        ep = torch.export.export(model, args, kwargs=kwargs, strict=False)
    return ep.module()


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
    with eval_mode(model), torch.enable_grad():
        errors = []
        for mode, capture in (("fx", _fx_capture), ("export", _export_capture)):
            try:
                gm = capture(model, args, kwargs)
                flat = list(args) + [kwargs[k] for k in _placeholder_kwargs(gm, args, kwargs)]
                constants = gm.constants if isinstance(gm, _FxCapture) else {}
                info, out, modules, known = _propagate(gm, _root(gm), flat, constants)
            except Exception as exc:  # noqa: BLE001 - any failure means "try the next capture"
                site = _failure_site(exc, model)
                errors.append(f"{mode}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                              + (f" (at {site})" if site else ""))
                continue
            return Traced(model=model, gm=gm, mode=mode, info=info, output_shape=_describe(out),
                          reference_shapes=shapes_of(out), plain=known, _modules=modules)
        _check_runs(model, args, kwargs)  # is it the input, rather than the capture, that fails?
    raise TraceError(
        f"could not capture {type(model).__name__} as a graph.\n  " + "\n  ".join(errors) +
        "\nWhat to do: make the failing code traceable (torch.fx.wrap a helper with data-dependent "
        "control flow, or keep it in a leaf module), or pass an example input that avoids the branch."
    ) from None


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
