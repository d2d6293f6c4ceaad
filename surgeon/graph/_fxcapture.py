"""The fx side of a capture: the tracer surgeon uses and what it gives (a graph with the user's
model as its root), shared by the whole-model capture (:mod:`surgeon.graph.trace`) and the partial
one (:mod:`surgeon.graph.partial`)."""

from __future__ import annotations

from typing import Any

import torch.fx as fx
import torch.fx.traceback as fx_traceback
from torch import nn

__all__ = ["_FxCapture", "_Tracer", "explicit_forward"]


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

    def __init__(self, root_fn: Any = None):
        super().__init__()
        self._root_fn = root_fn  # traced instead of ``type(root).forward`` (see explicit_forward)
        self._leaf: dict[type, bool] = {}

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        if self._root_fn is not None:
            root_fn = self._root_fn
        return super().create_args_for_root(root_fn, is_module, concrete_args)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        kind = type(m)  # what decides it (the class's module, Sequential, composites): asked once per class
        leaf = self._leaf.get(kind)
        if leaf is None:
            leaf = self._leaf[kind] = not isinstance(m, self._COMPOSITE) and super().is_leaf_module(m, qualname)
        return leaf

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        """A submodule read in forward (``self.fc1``) is returned as it is, as ``Tracer.getattr``
        returns it after testing it against Parameter and Tensor (and building a closure)."""
        if isinstance(attr_val, nn.Module):
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

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

    def call_module(self, m: nn.Module, forward, args: tuple, kwargs: dict) -> Any:
        """``Tracer.call_module`` without its ``ScopeContextManager``, which saves the scope with
        ``copy.copy`` (through ``__reduce_ex__``) on every module call: a tenth of the capture of a
        deep model. The scope and the module stack are set and taken back exactly as there."""
        name = self.path_of_module(m)
        scope = self.scope
        prev = scope.module_path, scope.module_type
        scope.module_path, scope.module_type = name, type(m)
        try:
            calls = self.num_calls.get(name, 0)
            key = f"{name}@{calls}" if calls > 0 else name
            self.module_stack[key] = (name, type(m))
            self.num_calls[name] = calls + 1
            if self.is_leaf_module(m, name):
                out = self.create_proxy("call_module", name, args, kwargs)
            else:
                out = forward(*args, **kwargs)
            popped, _ = self.module_stack.popitem(last=True)
            if popped != key:
                raise AssertionError(f"Unexpected key {popped}, expected {key}")
        finally:
            scope.module_path, scope.module_type = prev
        return out

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
        if name is None and type(target) is str and target.islower() and not target.startswith("__"):
            name = target  # what Graph._target_to_str makes of it (its regex finds no camelCase)
        node = self.graph.create_node(kind, target, None, None, name, type_expr)
        if args:
            node.args = args
        if kwargs:
            node.kwargs = kwargs
        if self.module_stack:
            node.meta["nn_module_stack"] = dict(self.module_stack)
        return node


def explicit_forward(forward: Any, names: list[str]) -> Any:
    """``def forward(self, a, b): return forward(self, a=a, b=b)`` for the input ``names``: a root
    function whose signature fx can read, where ``forward`` itself is a decorator's
    ``(*args, **kwargs)`` wrapper whose code fx cannot rewrite."""
    if not all(n.isidentifier() and n != "self" for n in names):
        raise ValueError(f"cannot name the inputs {names} in a traced signature")
    params = ", ".join(names)
    call = ", ".join(f"{n}={n}" for n in names)
    scope: dict[str, Any] = {"_forward": forward}
    exec(f"def forward(self, {params}):\n    return _forward(self, {call})\n", scope)  # noqa: S102 - names checked above
    return scope["forward"]
