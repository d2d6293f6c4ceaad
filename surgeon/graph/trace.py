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
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.fx.traceback as fx_traceback
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count, flop_registry

from .. import _walks
from ..errors import TraceError

__all__ = ["Traced", "trace", "normalize_inputs", "run_model", "shapes_of", "FlopTally", "count_known"]


def normalize_inputs(example_input: Any) -> tuple[tuple, dict]:
    """Turn a tensor, a tuple/list of tensors, or a dict of keyword arguments into (args, kwargs)."""
    if isinstance(example_input, torch.Tensor):
        return (example_input,), {}
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input), {}
    if isinstance(example_input, dict):
        return (), dict(example_input)
    raise TypeError(
        f"example_input must be a tensor, a tuple of tensors or a dict of keyword arguments, "
        f"got {type(example_input).__name__}"
    )


def run_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` on ``example_input`` as surgeon does everywhere (args or kwargs)."""
    args, kwargs = normalize_inputs(example_input)
    return model(*args, **kwargs)


def shapes_of(out: Any) -> Any:
    """The nested structure of a model output with every tensor replaced by its shape."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return type(out)(shapes_of(o) for o in out) if type(out) in (tuple, list) else \
            tuple(shapes_of(o) for o in out)
    if isinstance(out, dict):
        return {k: shapes_of(v) for k, v in out.items()}
    if hasattr(out, "to_tuple"):
        return shapes_of(out.to_tuple())
    return None


@contextlib.contextmanager
def eval_mode(model: nn.Module, modules: list[nn.Module] | None = None):
    """Put every submodule in eval mode and restore each one's own flag afterwards
    (``modules``: ``list(model.modules())`` if the caller has it already)."""
    modules = list(model.modules()) if modules is None else modules
    flags = [(m, m.training) for m in modules]
    if not any(flag for _, flag in flags):  # already in eval mode everywhere: nothing to switch
        yield model
        return
    try:
        if any(type(m).train is not nn.Module.train for m in modules):
            model.eval()  # some module has its own train(): let it run
        else:  # what Module.eval does, without a __setattr__ per module (deep models have thousands)
            for m in modules:
                object.__setattr__(m, "training", False)
        yield model
    finally:
        for m, flag in flags:
            object.__setattr__(m, "training", flag)


@dataclass
class NodeInfo:
    """What shape propagation learned about one fx node."""

    shape: Any  # torch.Size for a tensor, a list of NodeInfo-shapes for tuples, None otherwise
    flops: int = 0
    value: Any = None  # the Python value for non-tensor nodes (ints, sizes), else None


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


class FlopTally(TorchDispatchMode):
    """Counts matmul-like FLOPs with the same formulas as ``torch.utils.flop_counter``.

    The registered formulas take shapes; ``flop_counter`` maps every argument through pytree to
    get them, which costs more than a small matmul (and ``addmm``'s formula calls ``mm``'s
    wrapped one, paying it twice). For the common case (flat arguments, one output tensor) the
    shapes are taken directly and the unwrapped formula is called.
    """

    def __init__(self):
        super().__init__()
        self.count = 0

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in a dynamo-disable shim unless this says no:
        # two Python frames per op, ~5% of a counted forward; nothing here is ever compiled
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            raw = _raw_formula(packet)
            if raw is not None and isinstance(out, torch.Tensor) and _flat(args) and _flat(kwargs.values()):
                self.count += raw(*[_shape(a) for a in args], out_shape=out.shape,
                                  **{k: _shape(v) for k, v in kwargs.items()})
            else:
                self.count += flop_registry[packet](*args, **kwargs, out_val=out)
        return out


_RAW: dict = {}


def _raw_formula(packet: Any) -> Any:
    """The shape-level formula registered for ``packet``, unwrapped (None if it has no such form).
    ``addmm`` and ``baddbmm`` are the ``mm``/``bmm`` formulas on their matrix operands."""
    if packet not in _RAW:
        aten = torch.ops.aten
        raw = getattr(flop_registry[packet], "__wrapped__", None)
        mm, bmm = (getattr(flop_registry.get(p), "__wrapped__", None) for p in (aten.mm, aten.bmm))
        if packet is aten.addmm and mm is not None:
            raw = lambda _self, a, b, *rest, **kw: mm(a, b)  # noqa: E731
        elif packet is aten.baddbmm and bmm is not None:
            raw = lambda _self, a, b, *rest, **kw: bmm(a, b)  # noqa: E731
        _RAW[packet] = raw
    return _RAW[packet]


def _shape(a: Any) -> Any:
    return a.shape if isinstance(a, torch.Tensor) else a


def _flat(values) -> bool:
    """No tensors nested inside lists or tuples (which the pytree path would map)."""
    return not any(isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) for x in a)
                   for a in values)


def _describe(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.shape
    if isinstance(v, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in v):
        return [_describe(x) for x in v]
    return None


def _propagate(gm: Any, inputs: list) -> tuple[dict[str, NodeInfo], Any, dict[str, nn.Module], bool]:
    """Run the graph once on real ``inputs`` (placeholders in order, as ``fx.Interpreter.run``
    takes them), recording each node's output shape and FLOPs. Returns (info, output, the
    root's modules by name, whether every op is one whose FLOPs are known without the tally).

    A plain loop rather than ``fx.Interpreter``: on deep models the interpreter's per-node
    bookkeeping costs as much as the ops. Values are freed after their last use, as there.
    It runs without autograd and with torch.nn's fused attention fast paths turned off (see
    :func:`no_fast_path`), as ``verify.measure`` does: the ops that run are those
    ``count_flops`` sees with autograd on."""
    root = _root(gm)
    nodes = list(gm.graph.nodes)
    modules = _walks.modules(root)
    known = all(_known(n, modules) for n in nodes)
    with no_fast_path(), torch.no_grad():
        info, out = _run_nodes(gm, root, nodes, inputs, modules)
    return info, out, modules, known


@contextlib.contextmanager
def no_fast_path():
    """Turn off the fused inference path of ``nn.MultiheadAttention`` and ``nn.TransformerEncoder``
    (one op the FLOP counter has no formula for; autograd being on also keeps it off), so that
    they run the matmuls they are made of."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def _known(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if n.op == "call_function":
        return _zero_flop_function(n.target)
    if n.op == "call_method":
        return n.target in _ZERO_FLOP_METHODS
    if n.op == "call_module":
        kind = type(modules[n.target])
        return kind in _ZERO_FLOP_MODULES or kind in _FORMULA_MODULES
    return True


def _run_nodes(gm: Any, root: nn.Module, nodes: list, inputs: list,
               modules: dict[str, nn.Module]) -> tuple[dict[str, NodeInfo], Any]:
    free: dict[fx.Node, list[fx.Node]] = {}
    seen: set[fx.Node] = set()
    for n in reversed(nodes):
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                free.setdefault(n, []).append(a)
    env: dict[fx.Node, Any] = {}
    info: dict[str, NodeInfo] = {}
    look = env.__getitem__
    graph = gm.graph
    pending = iter(graph.process_inputs(*inputs))  # pytree codegen (export) flattens here
    tally = FlopTally()
    out = None
    for n in nodes:
        op, before = n.op, tally.count
        if op == "placeholder":
            if str(n.target).startswith("*"):
                value = list(pending)
            else:
                value = next(pending, _MISSING)
                if value is _MISSING:
                    if not n.args:
                        raise RuntimeError(f"expected an input for placeholder {n.target}")
                    value = n.args[0]
        elif op == "get_attr":
            value = _fetch(root, n.target)
        elif op == "output":
            out = fx.node.map_arg(n.args[0], look)
            info[n.name] = NodeInfo(shape=_describe(out))
            out = graph.process_outputs(out)
            break
        else:
            args = fx.node.map_arg(n.args, look)
            kwargs = fx.node.map_arg(n.kwargs, look) if n.kwargs else {}
            formula = None  # FLOPs from shapes; None: the tally counts them
            if op == "call_function":
                call = n.target
                if _zero_flop_function(call):
                    formula = _no_flops
            elif op == "call_method":
                call, args = getattr(args[0], n.target), args[1:]
                if n.target in _ZERO_FLOP_METHODS:
                    formula = _no_flops
            else:
                call = modules[n.target]
                formula = _module_formula(call, args, kwargs)
            if formula is None:
                with tally:
                    value = call(*args, **kwargs)
            else:
                value = call(*args, **kwargs)
                tally.count += formula(call, args[0] if args else None, value)
        env[n] = value
        shape = _describe(value)
        info[n.name] = NodeInfo(
            shape=shape, flops=int(tally.count - before),
            value=value if shape is None and isinstance(value, (int, float, bool, torch.Size, tuple)) else None)
        for a in free.get(n, ()):
            del env[a]
    return info, out


_MISSING = object()

# What runs outside the FLOP tally in _propagate (the mode costs a few microseconds per ATen op,
# as much as the ops of a small layer). Only exact types and functions that are certain to run no
# op with a flop_counter formula (matmuls, convolutions, attention), or whose count is the
# formula below, are listed; everything else is counted by the tally as before.
_ZERO_FLOP_MODULES = frozenset({
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Softmax, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Flatten,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
})
_ZERO_FLOP_FUNCTIONS = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.neg,
    operator.getitem, operator.iadd, operator.imul, getattr,
    torch.add, torch.sub, torch.mul, torch.div, torch.cat, torch.stack, torch.flatten, torch.relu,
    torch.sigmoid, torch.tanh, torch.transpose, torch.permute, torch.reshape, torch.chunk, torch.split,
    torch.mean, torch.sum, torch.sqrt, torch.rsqrt, torch.exp, torch.neg, torch.unsqueeze, torch.squeeze,
    F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.hardswish, F.hardsigmoid, F.dropout, F.softmax,
    F.layer_norm, F.batch_norm, F.group_norm, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.pad,
})
# functions of optional packages, by qualified name (stochastic depth is the identity in eval
# mode and an elementwise mask in training)
_ZERO_FLOP_NAMES = frozenset({"torchvision.ops.stochastic_depth.stochastic_depth"})


def _zero_flop_function(fn: Any) -> bool:
    if not _hashable(fn):
        return False
    if fn in _ZERO_FLOP_FUNCTIONS:
        return True
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}" in _ZERO_FLOP_NAMES


_ZERO_FLOP_METHODS = frozenset({
    "view", "reshape", "permute", "transpose", "flatten", "contiguous", "size", "chunk", "split",
    "mean", "sum", "add", "sub", "mul", "div", "unsqueeze", "squeeze", "expand", "softmax", "sigmoid",
    "relu", "tanh", "exp", "sqrt", "rsqrt", "pow", "neg", "float", "to", "type_as", "__getitem__",
    "unbind", "dim", "numel", "clone", "masked_fill", "repeat", "narrow", "split_with_sizes",
})


def _no_flops(_call: Any, _x: Any, _out: Any) -> int:
    return 0


def _linear_flops(mod: nn.Linear, x: torch.Tensor, _out: torch.Tensor) -> int:
    # F.linear runs addmm or mm on x folded to 2-D: flop_counter's mm formula, 2 * m * n * k
    return 2 * x.numel() * mod.out_features


def _conv_flops(mod: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    return conv_flop_count(list(x.shape), list(mod.weight.shape), list(out.shape), transposed=False)


def _module_formula(mod: nn.Module, args: tuple, kwargs: dict) -> Callable | None:
    """A shape formula giving exactly what the tally would count for ``mod(*args)``, or None."""
    kind = type(mod)
    if kind in _ZERO_FLOP_MODULES:
        return _no_flops
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if kind is nn.Linear and x.dim() >= 2:  # a 1-D input runs mv, which flop_counter does not count
        return _linear_flops
    if kind in _CONVS and x.dim() == _CONVS[kind] + 2 and mod.padding_mode == "zeros":
        return _conv_flops
    return None


_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_FORMULA_MODULES = frozenset({nn.Linear, *_CONVS})  # counted by a formula when the call fits it


def count_known(model: nn.Module, example_input: Any) -> tuple[int, Any] | None:
    """Run ``model`` once (eval mode, no autograd) and count the FLOPs of its Linear and Conv
    modules by the formulas above; returns (FLOPs, output), or None when a call did not fit them.

    This equals what :class:`FlopTally` (and ``FlopCounterMode``) count only for a model whose
    capture was :attr:`Traced.plain` -- every other op it runs has no FLOP formula, and autograd
    cannot change a count -- such as the same model after surgery. It skips the dispatch mode's
    few microseconds per op and autograd's bookkeeping, which on deep models of small layers
    cost more than the ops."""
    count, fits = 0, True

    def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        nonlocal count, fits
        formula = _module_formula(mod, args, kwargs)
        if formula is None:
            fits = False
        else:
            count += formula(mod, args[0], out)

    modules = list(model.modules())
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules
               if type(m) in _FORMULA_MODULES]
    try:
        with eval_mode(model, modules), torch.no_grad():
            out = run_model(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return (count, out) if fits else None


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _fetch(root: nn.Module, target: str) -> Any:
    obj = root
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


class _FxCapture:
    """What ``symbolic_trace`` gives, without compiling a GraphModule: the graph and the user's
    own model as its root (node targets are qualified names in it). Attribute look-ups such as
    ``get_submodule`` and ``get_parameter`` go to the root."""

    def __init__(self, root: nn.Module, graph: fx.Graph):
        self.root = root
        self.graph = graph

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
    graph = tracer.trace(model, concrete_args=concrete or None)
    return _FxCapture(tracer.root, graph)


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
                info, out, modules, known = _propagate(gm, flat)
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
