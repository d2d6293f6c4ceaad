"""Shapes and FLOPs of a captured graph: one run of its nodes on the example input.

Each node's FLOPs come from ``torch.utils.flop_counter``'s own formulas (through
:class:`FlopTally`), or from a shape formula for the ops whose count is known without running
the tally (Linear, convs, zero-FLOP ops), which also lets :func:`count_known` count a model
from forward hooks alone.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import conv_flop_count, flop_registry, register_flop_formula

from .. import _walks
from .run import eval_mode, run_model

__all__ = ["NodeInfo", "FlopTally", "no_fast_path", "count_known", "ensure_formulas"]


def grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of a grouped matmul (``torch._grouped_mm``, the routed experts of transformers-5 MoE
    models), which ``torch.utils.flop_counter`` has no formula for: ``2 * out.numel() * K``, K the
    contracted width, the same as the per-expert ``mm``s or the ``bmm`` of ``batched_mm`` count
    (every row meets one expert). When both operands are 2-D (groups ragged along K) the groups
    split K, and the output holds one ``M x N`` slab per group."""
    k = a_shape[-1]
    n_out = 1
    for s in out_shape:
        n_out *= s
    if len(a_shape) == 2 and len(b_shape) == 2 and len(out_shape) == 3:
        n_out //= max(1, out_shape[0])
    return 2 * n_out * k


_FALLBACK_OPS = (("transformers", "grouped_mm_fallback"),)  # custom ops of other packages, same shapes
_formulas_done: set = set()


def ensure_formulas() -> None:
    """Register :func:`grouped_mm_flops` with ``torch.utils.flop_counter`` for
    ``aten._grouped_mm`` and for the grouped-matmul custom ops that packages register when
    imported (transformers' CPU/compile fallback), once each; ``FlopCounterMode`` copies the
    registry when it is made, so this runs before one is made. Idempotent and cheap."""
    for ns, name in (("aten", "_grouped_mm"), *_FALLBACK_OPS):
        if (ns, name) in _formulas_done:
            continue
        packet = getattr(getattr(torch.ops, ns), name, None)  # None until its package registers it
        if packet is None:
            continue
        if packet not in flop_registry:
            register_flop_formula(packet)(grouped_mm_flops)
        _formulas_done.add((ns, name))


ensure_formulas()  # aten._grouped_mm now: a FlopCounterMode made after ``import surgeon`` counts it


@dataclass
class NodeInfo:
    """What shape propagation learned about one fx node."""

    shape: Any  # torch.Size for a tensor, a list of NodeInfo-shapes for tuples, None otherwise
    flops: int = 0
    value: Any = None  # the Python value for non-tensor nodes (ints, sizes), else None


def _fetch(root: nn.Module, target: str) -> Any:
    obj = root
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


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


def _propagate(gm: Any, root: nn.Module, inputs: list, constants: dict[str, Any]
               ) -> tuple[dict[str, NodeInfo], Any, dict[str, nn.Module], bool]:
    """Run the graph once on real ``inputs`` (placeholders in order, as ``fx.Interpreter.run``
    takes them; ``root`` is the module node targets name, ``constants`` the tensors fx made in
    forward), recording each node's output shape and FLOPs. Returns (info, output, the root's
    modules by name, whether every op is one whose FLOPs are known without the tally).

    A plain loop rather than ``fx.Interpreter``: on deep models the interpreter's per-node
    bookkeeping costs as much as the ops. Values are freed after their last use, as there.
    It runs without autograd and with torch.nn's fused attention fast paths turned off (see
    :func:`no_fast_path`), as ``verify.measure`` does: the ops that run are those
    ``count_flops`` sees with autograd on."""
    ensure_formulas()
    nodes = list(gm.graph.nodes)
    modules = _walks.modules(root)
    known = all(_known(n, modules) for n in nodes)
    with no_fast_path(), torch.no_grad():
        info, out = _run_nodes(gm, root, nodes, inputs, modules, constants)
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


def _run_nodes(gm: Any, root: nn.Module, nodes: list, inputs: list, modules: dict[str, nn.Module],
               constants: dict[str, Any]) -> tuple[dict[str, NodeInfo], Any]:
    free = _last_uses(nodes)
    env: dict[fx.Node, Any] = {}
    info: dict[str, NodeInfo] = {}
    look = env.__getitem__
    graph = gm.graph
    pending = iter(graph.process_inputs(*inputs))  # pytree codegen (export) flattens here
    tally = FlopTally()
    out = None
    map_arg = fx.node.map_arg
    for n in nodes:
        op, before = n.op, tally.count
        if op == "call_module" or op == "call_function" or op == "call_method":  # most nodes: first
            args = map_arg(n.args, look)
            kwargs = map_arg(n.kwargs, look) if n.kwargs else {}
            formula = None  # FLOPs from shapes; None: the tally counts them
            if op == "call_module":
                call = modules[n.target]
                formula = _module_formula(call, args, kwargs)
            elif op == "call_function":
                call = n.target
                if _zero_flop_function(call):
                    formula = _no_flops
            else:
                call, args = getattr(args[0], n.target), args[1:]
                if n.target in _ZERO_FLOP_METHODS:
                    formula = _no_flops
            if formula is None:
                with tally:
                    value = call(*args, **kwargs)
            else:
                value = call(*args, **kwargs)
                tally.count += formula(call, args[0] if args else None, value)
        elif op == "placeholder":
            if str(n.target).startswith("*"):
                value = list(pending)
            else:
                value = next(pending, _MISSING)
                if value is _MISSING:
                    if not n.args:
                        raise RuntimeError(f"expected an input for placeholder {n.target}")
                    value = n.args[0]
        elif op == "get_attr":
            value = constants[n.target] if n.target in constants else _fetch(root, n.target)
        else:  # output
            out = map_arg(n.args[0], look)
            info[n.name] = NodeInfo(shape=_describe(out))
            out = graph.process_outputs(out)
            break
        env[n] = value
        flops = int(tally.count - before)  # _describe() of a plain tensor is its shape
        info[n.name] = NodeInfo(value.shape, flops) if type(value) is torch.Tensor else _node_info(value, flops)
        for a in free.get(n, ()):
            del env[a]
    return info, out


def _last_uses(nodes: list) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the inputs whose last use it is (their values are freed after it runs)."""
    free: dict[fx.Node, list[fx.Node]] = {}
    seen: set[fx.Node] = set()
    for n in reversed(nodes):
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                free.setdefault(n, []).append(a)
    return free


def _node_info(value: Any, flops: int) -> NodeInfo:
    shape = _describe(value)
    return NodeInfo(shape=shape, flops=flops,
                    value=value if shape is None and isinstance(value, (int, float, bool, torch.Size, tuple)) else None)


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

    def counted(mod: nn.Module, forward: Callable) -> Callable:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal count, fits
            out = forward(*args, **kwargs)
            formula = _module_formula(mod, args, kwargs)
            if formula is None:
                fits = False
            else:
                count += formula(mod, args[0], out)
            return out
        return call

    # Each Linear and Conv counts through its own instance ``forward`` (what ``Module.__call__``
    # calls), not a forward hook: a module with a hook takes the slow path of ``__call__``,
    # which on deep models of small layers cost a third of the run. Taken back afterwards.
    modules = list(model.modules())
    counted_kinds = [m for m in modules if type(m) in _FORMULA_MODULES]
    patched = [m for m in counted_kinds if "forward" not in vars(m)]
    if len(patched) != len(counted_kinds):
        return None  # an instance with its own forward: measure() counts it the general way
    try:
        for m in patched:
            vars(m)["forward"] = counted(m, m.forward)
        with eval_mode(model, modules), torch.no_grad():
            out = run_model(model, example_input)
    finally:
        for m in patched:
            vars(m).pop("forward", None)
    return (count, out) if fits else None


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True
