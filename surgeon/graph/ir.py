"""Channel-dimension coupling: the data structure rules write into.

Every tensor dimension that could carry channels is a node, keyed by a ``DimKey``:

* ``("v", node_name, dim)``  an fx value's dimension (``node_name#i`` for element i of a tuple),
* ``("p", qualname, dim)``   a parameter's or buffer's dimension,
* ``("x", name, 0)``         a virtual dimension a rule invents (the groups of a grouped conv,
                              the per-head slots of an attention block).

Rules state two kinds of ties between dimensions:

* ``eq(a, b)``: same size, index i of ``a`` is index i of ``b`` (elementwise ops, a conv's output
  channels and its weight's rows, ...). These are merged with a union-find over dimensions.
* ``rel(a, b, ia, ib)``: element ``ia[k]`` of ``a`` is in the same unit as element ``ib[k]`` of
  ``b``; this says offsets (cat, split), blocks (flatten into a linear layer), strides (channel
  shuffle) and slots (heads). These are resolved per group with a union-find over elements.

A unit is a connected set of elements; a group is a connected set of dimensions. Removing a unit
removes every element in it, in every member dimension.

Rules also *freeze* dimensions (model inputs and outputs, dims created by an op no parameter
controls, dims of ops with no rule) with a reason, mark dimensions *inexact* (normalised over, so
zeroing a unit is not the same as removing it), declare cost terms, and declare attribute fix-ups
(``module.attr`` must become the kept width of a dimension).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable

import numpy as np

__all__ = ["DimKey", "Coupling", "CostTerm", "AttrFix"]

DimKey = tuple  # ("v"|"p"|"x", name, dim)


@dataclass(frozen=True)
class CostTerm:
    """``flops * prod(kept(d) / size(d) for d in dims)``: one monomial of the cost model."""

    flops: float
    dims: tuple[DimKey, ...]
    node: str


@dataclass(frozen=True)
class AttrFix:
    """After surgery, ``module.attr`` must equal ``kept(dim) * scale`` (``// divisor``)."""

    module: str
    attr: str
    dim: DimKey
    scale: int = 1
    divisor: int = 1
    index: int | None = None  # for tuple attributes (LayerNorm.normalized_shape): which element


class _UnionFind:
    """Union-find over hashable items with path halving."""

    def __init__(self):
        self.parent: dict = {}

    def add(self, x) -> None:
        self.parent.setdefault(x, x)

    def find(self, x):
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def link(self, root, other_root) -> None:
        """Join two classes by their roots (found by the caller): ``root`` stays the root."""
        self.parent[other_root] = root


# what a sealed Coupling exposes read-only (the union-find's path halving is an internal memo)
_SEALED_MAPS = ("sizes", "frozen", "inexact", "owners", "probes", "kinds", "layer_keys")
_SEALED_LISTS = ("rels", "costs", "attr_fixes", "splits", "eqs")


@dataclass
class Coupling:
    """Everything the rules said about one traced graph.

    :func:`surgeon.graph.couple.couple` fills one in and then seals it: its dicts become
    read-only views, its lists tuples, and setting an attribute raises. Later passes (width
    probes, whole layers) never change it; they :meth:`derive` a new one."""

    sizes: dict[DimKey, int] = field(default_factory=dict)
    frozen: dict[DimKey, str] = field(default_factory=dict)
    inexact: dict[DimKey, str] = field(default_factory=dict)
    rels: list[tuple[DimKey, DimKey, np.ndarray, np.ndarray]] = field(default_factory=list)
    costs: list[CostTerm] = field(default_factory=list)
    attr_fixes: list[AttrFix] = field(default_factory=list)
    owners: dict[DimKey, str] = field(default_factory=dict)  # param dim -> op that uses it
    splits: list[tuple[DimKey, DimKey, int]] = field(default_factory=list)  # (whole, carrier, others)
    # frozen dims whose only fault is a width written as a number in an exported graph:
    # key -> [(node name, argument position, the number, ((module, attr), ...) holding it)],
    # for surgeon.analysis.probe to test
    probes: dict[DimKey, list[tuple[str, int, int, tuple]]] = field(default_factory=dict)
    kinds: dict[DimKey, str] = field(default_factory=dict)  # dims whose units are heads/layers
    layer_keys: dict[str, DimKey] = field(default_factory=dict)  # removable layer -> its unit's dim
    uf: _UnionFind = field(default_factory=_UnionFind)
    _channel_like: set = field(default_factory=set)  # roots of classes that carry channels

    eqs: list[tuple[DimKey, DimKey]] = field(default_factory=list)
    _sealed: bool = field(default=False, repr=False, compare=False)

    def __setattr__(self, name, value):
        if self.__dict__.get("_sealed"):
            raise dataclasses.FrozenInstanceError(f"a sealed Coupling is not changed (setting {name!r}); "
                                                  "derive() a new one")
        object.__setattr__(self, name, value)

    def seal(self) -> "Coupling":
        """Make this coupling read-only (once its rules have run); returns it."""
        for name in _SEALED_MAPS:
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        for name in _SEALED_LISTS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "_channel_like", frozenset(self._channel_like))
        object.__setattr__(self, "_sealed", True)
        return self

    def derive(self, **changes) -> "Coupling":
        """A new sealed coupling with ``changes`` (field name -> new value), sharing the rest."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "_sealed"}
        fields.update(changes)
        new = Coupling.__new__(Coupling)
        for name, value in fields.items():
            object.__setattr__(new, name, value)
        return new.seal()

    # -- building -----------------------------------------------------------------------------
    def add(self, key: DimKey, size: int) -> DimKey:
        old = self.sizes.get(key)
        if old is None:
            self.sizes[key] = int(size)
            self.uf.add(key)
            if key[0] == "p":
                self._channel_like.add(key)
        elif old != size:
            raise AssertionError(f"dimension {key} seen with sizes {old} and {size}")
        return key

    def eq(self, a: DimKey, b: DimKey) -> None:
        if self.sizes[a] != self.sizes[b]:
            raise AssertionError(f"eq between {a} ({self.sizes[a]}) and {b} ({self.sizes[b]})")
        self.eqs.append((a, b))
        find = self.uf.find
        ra, rb = find(a), find(b)
        if ra == rb:
            return
        self.uf.link(ra, rb)
        like = self._channel_like
        if rb in like:  # the class that is no longer a root passes its mark to the new root
            like.discard(rb)
            like.add(ra)

    def rel(self, a: DimKey, b: DimKey, ia: Iterable[int], ib: Iterable[int]) -> None:
        ia = np.asarray(ia, dtype=np.int64)
        ib = np.asarray(ib, dtype=np.int64)
        if ia.shape != ib.shape:
            raise AssertionError("rel index arrays differ in length")
        if ia.size and (ia.max() >= self.sizes[a] or ib.max() >= self.sizes[b]):
            raise AssertionError(f"rel indices out of range for {a} or {b}")
        self.rels.append((a, b, ia, ib))
        if self.is_channel_like(a) or self.is_channel_like(b):
            self.mark_channel_like(a)
            self.mark_channel_like(b)

    def freeze(self, key: DimKey, reason: str) -> None:
        self.frozen.setdefault(key, reason)

    def mark_inexact(self, key: DimKey, reason: str) -> None:
        self.inexact.setdefault(key, reason)

    def is_channel_like(self, key: DimKey) -> bool:
        return self.uf.find(key) in self._channel_like

    def mark_channel_like(self, key: DimKey) -> None:
        self._channel_like.add(self.uf.find(key))

    # -- reading ----------------------------------------------------------------------------------
    def to_networkx(self):
        """The coupling as a ``networkx.Graph``: one node per dimension (attributes ``size``,
        ``frozen`` and ``inexact`` reasons), one edge per tie (``kind`` "eq" or "rel").
        Its connected components are exactly the groups; surgeon itself resolves them with a
        union-find, which is much faster on large models."""
        import networkx as nx

        g = nx.Graph()
        for key, size in self.sizes.items():
            g.add_node(key, size=size, frozen=self.frozen.get(key), inexact=self.inexact.get(key))
        g.add_edges_from(self.eqs, kind="eq")
        g.add_edges_from(((a, b) for a, b, _, _ in self.rels), kind="rel")
        return g
