"""Partial capture: the largest submodules that capture, with the code between them opaque.

A detector's ``forward`` cannot be one graph: anchors, NMS and the boxes it keeps depend on the
data, and its glue code iterates over lists that fx sees as one Proxy. Its backbone, neck and heads
can each be one graph, though. When the whole model does not capture, :func:`partial_capture`
runs the model once for real (eval mode, no autograd; whatever it writes is taken back), records
the inputs of every submodule call, and captures top-down: a submodule with parameters that was
called exactly once, whose own submodules run only inside that call, is captured with fx on the
inputs it was given (lists and dicts of tensors flattened into one placeholder per tensor); where
that fails, its children are tried. Submodules with no parameters are never parts, nor is a part
of one op (a lone Linear): with its inputs and outputs kept, nothing in them could be pruned.

The parts are joined into one graph, which the rest of the pipeline reads like any fx capture.
Each part's inputs are placeholders and its outputs leave through the graph's output, so the
channel dims of every tensor that crosses into or out of opaque code are frozen (the coupling
freezes model inputs and outputs): only widths wholly inside a part are pruned. The FLOPs the
opaque code runs are kept as a constant share of the total, so a target stays a fraction of the
whole model's FLOPs, and verification runs the whole model as usual.

Where the opaque code decides how much work a part does (a Mask R-CNN runs its mask head once per
box that passes its score threshold), a pruned model's own forward may do more or less work than
the dense one did. The landing counts at the dense model's workload (:meth:`PartialCapture.flops`)
and warns when the own forward differs by more than 0.01; fixing the count in the model's own
settings (``box_score_thresh=0.0`` returns ``box_detections_per_img`` boxes on every image) makes
the two the same.

Parts are captured with fx only (not torch.export), so every node of the joined graph has fx's
meaning for the rules.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from .flops import FlopTally, NodeInfo, _describe, _propagate
from ._fxcapture import _FxCapture, _Tracer

__all__ = ["partial_capture", "PartialCapture"]


class PartialCapture(_FxCapture):
    """What :func:`partial_capture` gives: the joined graph with the user's model as its root (node
    targets are qualified names in it), as an fx capture has it, and the paths of the parts it holds."""

    def __init__(self, root: nn.Module, graph: fx.Graph, constants: dict[str, Any], parts: tuple[str, ...],
                 opaque: tuple[str, ...], calls: dict[str, tuple], opaque_flops: int):
        super().__init__(root, graph, constants)
        self.parts = parts
        self.opaque = opaque  # submodules with parameters left out of every part
        self._calls = calls  # part path -> the (args, kwargs) it was called with on the example
        self.opaque_flops = opaque_flops

    def flops(self, model: nn.Module) -> int:
        """FLOPs of ``model`` (this capture's model, or a pruned copy of it) at the example's
        workload: every part run on the inputs it had in the capture (the widths that cross opaque
        code are kept, so they still fit), plus the opaque code's FLOPs. Where opaque code decides
        how much work a part does (a detector's heads run once per box it keeps), a pruned model's
        own forward may do more or less work than the dense one did; this count compares the two
        at the same work, as the planner's cost model does."""
        total = self.opaque_flops
        with torch.no_grad():
            for path in self.parts:
                a, kw = self._calls[path]
                with FlopTally() as tally:
                    model.get_submodule(path)(*a, **kw)
                total += int(tally.count)
        return total


class _Wrap(nn.Module):
    """Calls ``inner`` on the recorded arguments, with each tensor leaf an argument of its own
    (fx makes one placeholder per named argument; a list argument would be one Proxy, which the
    callee could not iterate)."""

    def __init__(self, inner: nn.Module, spec: Any, leaves: list, slots: list[int]):
        super().__init__()
        self.inner = inner
        self._spec, self._leaves, self._slots = spec, leaves, slots

    def call(self, tensors: list) -> Any:
        leaves = list(self._leaves)
        for i, t in zip(self._slots, tensors):
            leaves[i] = t
        args, kwargs = pytree.tree_unflatten(leaves, self._spec)
        return self.inner(*args, **kwargs)


def _wrapper(inner: nn.Module, spec: Any, leaves: list, slots: list[int]) -> _Wrap:
    """A :class:`_Wrap` subclass whose ``forward`` takes ``len(slots)`` named tensors. The source
    is ours, made from a count alone (no name or value from the model goes into it)."""
    names = [f"x{i}" for i in range(len(slots))]
    src = f"def forward(self, {', '.join(names)}):\n    return self.call([{', '.join(names)}])\n"
    scope: dict[str, Any] = {}
    exec(compile(src, "<surgeon.graph.partial>", "exec"), scope)  # noqa: S102 - generated from an int
    cls = type("_Part", (_Wrap,), {"forward": scope["forward"]})
    return cls(inner, spec, leaves, slots)


def _record(model: nn.Module, args: tuple, kwargs: dict) -> tuple[dict[int, list], Any, int]:
    """One real forward: for every submodule call by module id, its (args, kwargs) and the ids of
    the modules whose calls were running around it; the output; the FLOPs of the whole call (as
    verification counts them)."""
    calls: dict[int, list] = {}
    active: list[int] = []

    def pre(mod, a, kw):
        calls.setdefault(id(mod), []).append((a, kw, frozenset(active)))
        active.append(id(mod))

    def post(mod, a, kw, out):
        if active and active[-1] == id(mod):
            active.pop()

    mods = list(model.modules())
    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in mods]
    handles += [m.register_forward_hook(post, with_kwargs=True) for m in mods]
    try:
        with torch.no_grad(), FlopTally() as tally:
            out = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return calls, out, int(tally.count)


def _alone(mod: nn.Module, calls: dict[int, list]) -> bool:
    """``mod`` ran once, and every submodule of it ran only inside that call (so slicing the part
    changes no call from opaque code)."""
    own = calls.get(id(mod), ())
    if len(own) != 1:
        return False
    return all(id(mod) in around for m in mod.modules() if m is not mod for _, _, around in calls.get(id(m), ()))


def _capture_part(mod: nn.Module, call: tuple):
    """fx capture of ``mod`` on its recorded call, with shapes and FLOPs (graph, infos, constants);
    None where it fails."""
    a, kw, _ = call
    leaves, spec = pytree.tree_flatten((a, kw))
    slots = [i for i, v in enumerate(leaves) if isinstance(v, torch.Tensor)]
    wrap = _wrapper(mod, spec, leaves, slots)
    before = set(vars(wrap))
    try:
        graph = _Tracer().trace(wrap)
        constants = {name: vars(wrap).pop(name) for name in set(vars(wrap)) - before}
        with torch.no_grad():
            info, _out, _mods, _known = _propagate(_FxCapture(wrap, graph, constants), wrap,
                                                   [leaves[i] for i in slots], constants)
    except Exception:  # noqa: BLE001 - any failure means "try the children"
        return None
    return graph, info, constants


def _inner_ops(graph: fx.Graph) -> int:
    return sum(n.op in ("call_module", "call_function", "call_method") for n in graph.nodes)


def _has_params(mod: nn.Module) -> bool:
    return any(True for _ in mod.parameters())


def _prefixed(path: str, target: str) -> str:
    """A wrapper-relative target (``inner.conv``) as a qualified name in the model."""
    rest = target[len("inner."):] if target.startswith("inner.") else "" if target == "inner" else target
    return ".".join(p for p in (path, rest) if p)


def _stack(meta_stack: dict, path: str) -> dict:
    out = {}
    for key, value in (meta_stack or {}).items():
        if isinstance(value, tuple) and value and isinstance(value[0], str):
            if value[0] == "":  # the wrapper itself
                continue
            name = _prefixed(path, value[0])
            out[name] = (name, value[1])
        else:
            out[key] = value
    return out


def partial_capture(model: nn.Module, args: tuple, kwargs: dict) -> tuple[PartialCapture, dict[str, NodeInfo], Any] | None:
    """The joined capture, its node infos (shapes and FLOPs; the opaque code's FLOPs under the key
    ``"<opaque>"``) and the model's output on the example; None where no part captures. The
    caller runs it in eval mode and restores what the run writes into the model."""
    calls, out, whole = _record(model, args, kwargs)
    found: list[tuple[str, Any, dict, dict]] = []
    opaque: list[str] = []

    def visit(path: str, mod: nn.Module) -> None:
        if not _has_params(mod):
            return
        if path and _alone(mod, calls):
            got = _capture_part(mod, calls[id(mod)][0])
            if got is not None:
                if _inner_ops(got[0]) > 1:
                    found.append((path, *got))
                else:  # one op alone has no width of its own to prune: left to the opaque code
                    opaque.append(path)
                return
        children = list(mod.named_children())
        direct = any(True for _ in mod.parameters(recurse=False))
        if direct or not children:
            opaque.append(path or "<root>")
        for name, child in children:
            visit(f"{path}.{name}" if path else name, child)

    visit("", model)
    if not found:
        return None
    graph, info, constants = _join(found)
    parts = tuple(path for path, *_ in found)
    rest = max(0, whole - sum(i.flops for i in info.values()))
    info["<opaque>"] = NodeInfo(shape=None, flops=rest)
    inputs = {path: calls[id(model.get_submodule(path))][0][:2] for path, *_ in found}
    return PartialCapture(model, graph, constants, parts, tuple(opaque), inputs, rest), info, out


def _join(found: list) -> tuple[fx.Graph, dict[str, NodeInfo], dict[str, Any]]:
    """One graph of every part, targets and module stacks prefixed with the part's path."""
    graph = fx.Graph()
    info: dict[str, NodeInfo] = {}
    constants: dict[str, Any] = {}
    outputs = []
    for path, g, part_info, part_constants in found:
        env: dict[fx.Node, fx.Node] = {}
        for n in g.nodes:
            if n.op == "output":
                outputs.append(fx.node.map_arg(n.args[0], env.__getitem__))
                continue
            prefix = path.replace(".", "_")
            if n.op == "placeholder":
                new = graph.placeholder(f"{prefix}_{n.name}")
            else:
                target = n.target
                if n.op == "call_module":
                    target = _prefixed(path, target)
                elif n.op == "get_attr" and target in part_constants:
                    target = f"{path}.{target}"
                    constants[target] = part_constants[n.target]
                elif n.op == "get_attr":
                    target = _prefixed(path, target)
                name = target.replace(".", "_") if n.op in ("call_module", "get_attr") else f"{prefix}_{n.name}"
                new = graph.create_node(n.op, target, fx.node.map_arg(n.args, env.__getitem__),
                                        fx.node.map_arg(n.kwargs, env.__getitem__), name, n.type)
                if "nn_module_stack" in n.meta:
                    new.meta["nn_module_stack"] = _stack(n.meta["nn_module_stack"], path)
            env[n] = new
            info[new.name] = part_info[n.name]
    out = graph.output(tuple(outputs))
    info[out.name] = NodeInfo(shape=_describe(None))
    return graph, info, constants
