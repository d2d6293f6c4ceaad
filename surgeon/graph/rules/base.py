"""The rule registry and RuleContext (the families live beside this file).

Coupling rules: one small function per op family, looked up by module type or call target.

A rule receives a :class:`RuleContext` for one fx node and states how the node's input, output and
parameter dimensions are tied (see :mod:`surgeon.graph.ir`). Keys are

* a module class (``nn.Conv2d``) for ``call_module`` nodes, matched along the class's MRO,
* a callable (``torch.cat``, ``operator.add``, an ATen overload packet) for ``call_function``,
* ``"method:NAME"`` for ``call_method`` nodes (``x.view(...)``),
* ``"fn:module.qualname"`` for third-party functions, so their packages need not be imported.

Registering the same key twice is an error. A node with no rule is never guessed: every
dimension it touches is frozen with the reason, and the rest of the model is still pruned.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..ir import AttrFix, Coupling, CostTerm, DimKey
from ..flops import _hashable

__all__ = ["register", "lookup", "RuleContext", "RULES", "describe_target"]

Rule = Callable[["RuleContext"], None]
RULES: dict[Any, Rule] = {}


def register(*keys: Any) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the rule for each key; a key registered twice raises ``KeyError``."""

    def deco(fn: Rule) -> Rule:
        seen = []  # aliases (F.sigmoid is torch.sigmoid) may appear twice in one call
        for key in keys:
            if isinstance(key, torch._ops.OpOverload):
                key = key.overloadpacket
            if any(key is k or key == k for k in seen):
                continue
            seen.append(key)
            if key in RULES:
                raise KeyError(f"a coupling rule for {describe_target(key)} is already registered")
            RULES[key] = fn
        return fn

    return deco


def describe_target(target: Any) -> str:
    if isinstance(target, str):
        return target.split(":", 1)[-1]
    if isinstance(target, type):
        return f"{target.__module__}.{target.__qualname__}"
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return f"torch.ops.{target}"  # e.g. torch.ops.aten.gather
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{mod}.{name}" if mod else str(name)


def lookup(node: fx.Node, gm: Any) -> tuple[Rule | None, str]:
    """The rule for ``node`` and a readable name of what it calls. ``gm`` is the captured graph
    module, or a :class:`~surgeon.graph.trace.Traced` (whose module table is faster)."""
    if node.op == "call_module":
        cls = type(gm.submodule(node.target) if hasattr(gm, "submodule") else gm.get_submodule(node.target))
        return _module_rule(cls), describe_target(cls)
    if node.op == "call_method":
        return RULES.get(f"method:{node.target}"), f"Tensor.{node.target}"
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        target = target.overloadpacket
    rule = RULES.get(target) if _hashable(target) else None
    if rule is None:
        mod = getattr(node.target, "__module__", "") or ""
        rule = RULES.get(f"fn:{mod}.{getattr(node.target, '__qualname__', '')}")
    return rule, describe_target(target)


def _module_rule(cls: type) -> Rule | None:
    for klass in cls.__mro__:
        if klass in RULES:
            return RULES[klass]
    return None


class RuleContext:
    """What a rule sees of one node, and the verbs it uses to state couplings."""

    def __init__(self, coupling: Coupling, traced, node: fx.Node, where: str, size_refs: dict):
        self.c = coupling
        self.traced = traced
        self.node = node
        self.where = where
        self.size_refs = size_refs
        self.touched: set[DimKey] = set()
        self.splits: dict[DimKey, tuple[DimKey, int]] = {}  # carrier -> (split dim, other factors)
        self.merges: dict[DimKey, tuple[DimKey, int]] = {}  # merged dim -> (carrier, other factors)
        self.module: nn.Module | None = (
            traced.submodule(node.target) if node.op == "call_module" else None
        )

    # -- reading the node -----------------------------------------------------------------------
    def arg(self, i: int, name: str | None = None, default: Any = None) -> Any:
        if i < len(self.node.args):
            return self.node.args[i]
        if name is not None and name in self.node.kwargs:
            return self.node.kwargs[name]
        return default

    def shape(self, v: Any) -> tuple[int, ...] | None:
        """Shape of a tensor argument: an fx node, or ``(node, i)`` for a tuple's element."""
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], fx.Node):
            s = self.traced.info[v[0].name].shape
            s = s[v[1]] if isinstance(s, list) else None
            return tuple(s) if isinstance(s, torch.Size) else None
        return self.traced.shape(v)

    @property
    def out_shape(self) -> tuple[int, ...] | None:
        return self.traced.shape(self.node)

    def out_shapes(self) -> list:
        s = self.traced.info[self.node.name].shape
        return list(s) if isinstance(s, list) else []

    def value(self, v: Any) -> Any:
        """The Python value of a non-tensor node (an int computed from shapes), else ``v``."""
        if isinstance(v, fx.Node):
            return self.traced.info[v.name].value
        return v

    def param(self, name: str) -> str | None:
        """Qualified name of this module's parameter or buffer ``name``, if it exists."""
        if self.module is None:
            return None
        owner, _, leaf = name.rpartition(".")
        try:
            mod = self.module.get_submodule(owner) if owner else self.module
        except AttributeError:
            return None
        if not isinstance(getattr(mod, leaf, None), torch.Tensor):
            return None
        return f"{self.node.target}.{name}" if self.node.target else name

    # -- naming dimensions ------------------------------------------------------------------------
    def v(self, node: Any, dim: int) -> DimKey:
        """The key of dimension ``dim`` of a tensor argument (negative dims allowed)."""
        if type(node) is fx.Node:  # nearly every call: skip shape()'s dispatch
            shape, name = self.traced.shape(node), node.name
        else:
            shape = self.shape(node)
            name = f"{node[0].name}#{node[1]}" if isinstance(node, tuple) else getattr(node, "name", None)
        if shape is None:
            raise AssertionError(f"{node} is not a tensor at {self.where}")
        dim = dim % len(shape)
        return self.c.add(("v", name, dim), shape[dim])

    def out(self, dim: int, index: int | None = None) -> DimKey:
        return self.v(self.node if index is None else (self.node, index), dim)

    def p(self, qualname: str, dim: int) -> DimKey:
        tensor = self.traced.tensor(qualname)
        key = self.c.add(("p", qualname, dim % tensor.dim()), tensor.shape[dim])
        self.c.owners.setdefault(key, self.where)
        return key

    def virtual(self, suffix: str, size: int) -> DimKey:
        return self.c.add(("x", f"{self.node.name}:{suffix}", 0), size)

    # -- stating couplings --------------------------------------------------------------------------
    def eq(self, a: DimKey, b: DimKey) -> None:
        self.touched.update((a, b))
        self.c.eq(a, b)

    def rel(self, a: DimKey, b: DimKey, ia, ib) -> None:
        self.touched.update((a, b))
        self.c.rel(a, b, ia, ib)

    def slots(self, dim: DimKey, slot: DimKey, modulo: int) -> None:
        """Tie index i of ``dim`` to slot ``i % modulo`` (equal-size groups keep their count)."""
        n = self.c.sizes[dim]
        self.rel(dim, slot, np.arange(n), np.arange(n) % modulo)

    def blocks(self, dim: DimKey, unit: DimKey, block: int) -> None:
        """Tie index i of ``dim`` to index ``i // block`` of ``unit``."""
        n = self.c.sizes[dim]
        self.rel(dim, unit, np.arange(n), np.arange(n) // block)

    def freeze(self, key: DimKey, reason: str) -> None:
        self.touched.add(key)
        self.c.freeze(key, f"{reason} ({self.where})")

    def inexact(self, key: DimKey, reason: str) -> None:
        self.c.mark_inexact(key, f"{reason} ({self.where})")

    def cost(self, dims: list[DimKey], share: float = 1.0) -> None:
        """Declare that ``share`` of this node's measured FLOPs scales with ``dims``."""
        flops = self.traced.info[self.node.name].flops * share
        if flops:
            self.c.costs.append(CostTerm(flops, tuple(dims), self.node.name))

    def cost_parts(self, parts: list[tuple[float, list[DimKey]]]) -> None:
        """Split this node's measured FLOPs over formula parts ``(flops, dims)``.

        The counter may not see every part (fused CPU attention kernels are not counted), so
        the subset of parts whose formula sum matches the measurement is used; failing that the
        measurement is shared in proportion to the formulas."""
        measured = self.traced.info[self.node.name].flops
        if not measured:
            return
        n = len(parts)
        for mask in sorted(range(1, 2 ** n), key=lambda m: -bin(m).count("1")):
            chosen = [parts[i] for i in range(n) if mask >> i & 1]
            if abs(sum(f for f, _ in chosen) - measured) <= 0.01 * measured:
                for f, dims in chosen:
                    self.c.costs.append(CostTerm(f * measured / sum(f for f, _ in chosen),
                                                 tuple(dims), self.node.name))
                return
        total = sum(f for f, _ in parts)
        for f, dims in parts:
            self.cost(dims, f / total)

    def attr_fix(self, module: str, attr: str, dim: DimKey, scale: int = 1, divisor: int = 1,
                 index: int | None = None) -> None:
        """``module.attr`` must become ``kept(dim) * scale // divisor``. Every dim fixed through
        the same attribute must keep the same width, so later ones are tied to the first."""
        for old in self.c.attr_fixes:
            if (old.module, old.attr, old.index) == (module, attr, index) and old.dim != dim:
                if (old.scale, old.divisor) == (scale, divisor) and self.c.sizes[old.dim] == self.c.sizes[dim]:
                    n = self.c.sizes[dim]
                    self.rel(dim, old.dim, np.arange(n), np.arange(n))
                else:
                    self.freeze(dim, f"'{module}.{attr}' sizes dims of different widths")
                    self.freeze(old.dim, f"'{module}.{attr}' sizes dims of different widths")
                return
        self.c.attr_fixes.append(AttrFix(module, attr, dim, scale, divisor, index))

    # -- common shapes of rules ----------------------------------------------------------------------
    def same_dims(self, a: Any, b: Any) -> None:
        """Tie every dim of ``a`` to the same dim of ``b`` (shapes equal)."""
        for d in range(len(self.shape(a))):
            self.eq(self.v(a, d), self.v(b, d))

    def broadcast(self, inputs: list, out: Any) -> None:
        """Tie each input dim to the output dim it lines up with, except broadcast (size-1) dims."""
        oshape = self.shape(out)
        for x in inputs:
            xs = self.shape(x) if isinstance(x, (fx.Node, tuple)) else None
            if xs is None:
                continue
            off = len(oshape) - len(xs)
            for d, size in enumerate(xs):
                if size == oshape[d + off]:
                    self.eq(self.v(x, d), self.v(out, d + off))

