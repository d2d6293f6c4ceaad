"""Resolve a coupling into pruning groups.

Dimensions tied by ``eq`` form classes; classes tied by ``rel`` form groups. Inside a group the
elements (class, index) tied by ``rel`` are merged with a vectorised union-find, and each
connected set of elements is one *unit*: the thing the planner keeps or removes.
"""

from __future__ import annotations

import enum
import functools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ir import Coupling, DimKey
from .._gc import own_loop

__all__ = ["UnitKind", "Member", "PruneGroup", "build_groups", "components"]


class UnitKind(str, enum.Enum):
    CHANNEL = "channel"
    HEAD = "head"
    LAYER = "layer"


@dataclass(frozen=True)
class Member:
    """One dimension of a group: ``unit_of[i]`` is the unit that index i belongs to."""

    key: DimKey
    unit_of: np.ndarray = field(repr=False, compare=False)

    @property
    def is_tensor(self) -> bool:
        return self.key[0] == "p"

    @property
    def name(self) -> str:
        return self.key[1]

    @property
    def dim(self) -> int:
        return self.key[2]


@dataclass(frozen=True)
class PruneGroup:
    """Coupled dimensions that shrink together, and what is known about them.

    A value: later passes (ignored modules, configs, whole layers) make new groups with
    :func:`dataclasses.replace` instead of marking this one; its arrays are read-only."""

    id: int
    kind: UnitKind
    n_units: int
    members: tuple[Member, ...]
    frozen_units: np.ndarray = field(repr=False, compare=False)  # bool per unit: must be kept
    reason: str | None = None  # why the group cannot be pruned at all
    exact: bool = True
    inexact_reason: str | None = None
    where: tuple[str, ...] = ()  # ops that own the member parameters
    flops_per_unit: float = 0.0
    layers: tuple[str, ...] | None = None  # layer groups: the module each unit removes
    step: int = 1  # kept units stay a multiple of this (what a Hugging Face config accepts)
    min_units: int = 1  # never fewer kept units (experts under a top-k router: k)
    # every group's parameters per unit, computed on the first read of any (the params cost model
    # only serves reports and metric="params"): a shared memoised callable, indexed by ``id``
    params_source: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "where", tuple(self.where))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        frozen = self.frozen_units
        if not (isinstance(frozen, np.ndarray) and frozen.dtype == bool and not frozen.flags.writeable):
            frozen = np.array(frozen, dtype=bool)  # a copy: the caller's array stays theirs
            frozen.setflags(write=False)
            object.__setattr__(self, "frozen_units", frozen)

    def with_costs(self, flops_per_unit: float, params_source: Any) -> "PruneGroup":
        """This group with its cost figures set: ``dataclasses.replace`` without re-checking the
        fields this group already holds checked (it runs for every group of every analysis)."""
        new = object.__new__(PruneGroup)
        new.__dict__.update(self.__dict__, flops_per_unit=float(flops_per_unit), params_source=params_source)
        return new

    @property
    def params_per_unit(self) -> float:
        return 0.0 if self.params_source is None else float(self.params_source()[self.id])

    @property
    def prunable(self) -> bool:
        return self.reason is None

    @functools.cached_property
    def tensors(self) -> tuple[Member, ...]:
        """Members that are parameters or buffers (what surgery slices); read often, made once."""
        return tuple(m for m in self.members if m.key[0] == "p")

    def unit_indices(self, member: Member, units) -> np.ndarray:
        """Indices of ``member`` that belong to ``units``."""
        mask = np.zeros(self.n_units, dtype=bool)
        mask[np.asarray(units, dtype=np.int64)] = True
        return np.nonzero(mask[member.unit_of])[0]

    def describe(self) -> str:
        names = sorted({m.name for m in self.tensors})
        head = ", ".join(names[:4]) + (f", ... (+{len(names) - 4})" if len(names) > 4 else "")
        state = "prunable" if self.prunable else f"kept: {self.reason}"
        return f"group {self.id} [{self.kind.value} x{self.n_units}] {head}: {state}"


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component labels of ``n`` elements joined by edges ``a[k] - b[k]``.

    Min-label hooking with pointer jumping; every round lowers labels, so it terminates, and
    pointer jumping keeps the number of rounds small on long chains.
    """
    parent = np.arange(n, dtype=np.int64)
    if a.size == 0:
        return parent
    while True:
        ra, rb = parent[a], parent[b]
        if np.array_equal(ra, rb):
            return parent
        lo = np.minimum(ra, rb)
        np.minimum.at(parent, ra, lo)
        np.minimum.at(parent, rb, lo)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


@own_loop
def build_groups(c: Coupling) -> list[PruneGroup]:
    """Groups of ``c`` that hold at least one parameter or buffer dimension."""
    classes: dict = defaultdict(list)
    for key in c.sizes:
        classes[c.uf.find(key)].append(key)
    roots = list(classes)
    index = {r: i for i, r in enumerate(roots)}
    # classes joined by rel edges form groups
    ca = np.array([index[c.uf.find(a)] for a, _, _, _ in c.rels], dtype=np.int64)
    cb = np.array([index[c.uf.find(b)] for _, b, _, _ in c.rels], dtype=np.int64)
    glabel = components(len(roots), ca, cb)
    by_group: dict[int, list[int]] = defaultdict(list)
    for ci, g in enumerate(glabel):
        by_group[int(g)].append(ci)
    rels_of: dict[int, list[int]] = defaultdict(list)
    for k, ci in enumerate(ca):
        rels_of[int(glabel[ci])].append(k)

    groups: list[PruneGroup] = []
    for g, cls in by_group.items():
        keys = [k for ci in cls for k in classes[roots[ci]]]
        if not any(k[0] == "p" for k in keys):
            continue
        unit_of_class, n_units = _units(c, roots, classes, cls, rels_of.get(g, []), index)
        groups.append(_make_group(c, len(groups), classes, roots, cls, unit_of_class, n_units))
    return groups


def _units(c: Coupling, roots, classes, cls: list[int], rel_ids: list[int],
           index) -> tuple[dict[int, np.ndarray], int]:
    """Each class's unit per index, and the number of units."""
    sizes = {ci: c.sizes[classes[roots[ci]][0]] for ci in cls}
    if not rel_ids:
        (ci,) = cls
        units = np.arange(sizes[ci], dtype=np.int64)
        units.setflags(write=False)
        return {ci: units}, sizes[ci]
    offset, total = {}, 0
    for ci in cls:
        offset[ci] = total
        total += sizes[ci]
    ea, eb = [], []
    for k in rel_ids:
        a, b, ia, ib = c.rels[k]
        ea.append(offset[index[c.uf.find(a)]] + ia)
        eb.append(offset[index[c.uf.find(b)]] + ib)
    labels = components(total, np.concatenate(ea), np.concatenate(eb))
    uniq, units = np.unique(labels, return_inverse=True)
    units.setflags(write=False)  # members share these maps; nobody may change them
    return {ci: units[offset[ci]: offset[ci] + sizes[ci]] for ci in cls}, len(uniq)


def _make_group(c: Coupling, gid: int, classes, roots, cls, unit_of_class, n_units: int) -> PruneGroup:
    members, frozen, has_tensor = [], np.zeros(n_units, bool), np.zeros(n_units, bool)
    reason = inexact = None
    where, seen_where = [], set()  # the set: a residual stream's group has thousands of owners
    frozen_keys, inexact_keys, owners = c.frozen, c.inexact, c.owners
    for ci in cls:
        unit_of = unit_of_class[ci]
        class_frozen = class_tensor = False
        for key in classes[roots[ci]]:  # a class's keys share one index map: mark units once per class
            members.append(Member(key, unit_of))
            if key in frozen_keys:
                class_frozen = True
                reason = reason or frozen_keys[key]
            if key in inexact_keys:
                inexact = inexact or inexact_keys[key]
            if key[0] == "p":
                class_tensor = True
                owner = owners.get(key)
                if owner is not None and owner not in seen_where:
                    seen_where.add(owner)
                    where.append(owner)
        if class_frozen:
            frozen[unit_of] = True
        if class_tensor:
            has_tensor[unit_of] = True
    frozen |= ~has_tensor  # a unit no parameter produces cannot be removed
    members.sort(key=lambda m: (m.key[0] != "p", m.key[1], m.key[2]))
    if not frozen.all():
        reason = None
    elif reason is None:
        reason = "no parameter controls these units"
    if n_units < 2 and reason is None:
        reason = "a single unit cannot be removed"
    kind = next((UnitKind(c.kinds[m.key]) for m in members if m.key in c.kinds), UnitKind.CHANNEL)
    return PruneGroup(gid, kind, n_units, members, frozen, reason,
                      inexact is None, inexact, where)
