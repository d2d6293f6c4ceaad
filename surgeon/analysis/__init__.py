"""Analysis: trace, couple and group a model once; everything downstream reads this value.

Each pass takes the values before it and returns new ones: the width probes derive a new
coupling, ignored modules, parameterless groups and Hugging Face configs derive new groups,
whole layers derive both, and a measured runtime derives a new :class:`Analysis` with one more
cost model (:meth:`Analysis.with_cost`). Nothing here calls the planner or surgery.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from torch import nn

from .. import _walks
from ..graph.cost import CostModel
from ..graph.couple import couple
from ..graph.groups import PruneGroup, build_groups
from ..graph.ir import Coupling, DimKey
from ..graph.trace import Traced, trace
from .hf import config_model, constrain
from .hf_cache import capture_input
from .ignore import ignored_names, mark_ignored
from .layers import layer_units
from .moe import expert_floors, expert_modules, with_expert_layers
from .probe import resolve_probes, resolve_reads
from .realise import kept_width, member_index

__all__ = ["Analysis", "analyze", "capture_input", "fingerprint"]


@dataclass(frozen=True)
class Analysis:
    """The traced graph, its coupling and its groups for one model and example input."""

    traced: Traced
    coupling: Coupling
    groups: tuple[PruneGroup, ...]
    # Hugging Face models: what the config can express, and groups that must keep one width
    config_model: Any = dataclasses.field(default=None, repr=False)
    bundles: tuple[tuple[int, ...], ...] = ()
    # units each group of a bundle loses per step, bundle by bundle (a joint bundle: one head of
    # every layer with head_dim residual channels); empty: one unit of each group per step
    bundle_units: tuple[tuple[int, ...], ...] = ()
    measured: tuple[tuple[str, Any], ...] = dataclasses.field(default=(), repr=False)  # (key, cost model)

    def __post_init__(self):
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "_memo", {})  # cost models and the member index, built on first use

    @property
    def model(self) -> nn.Module:
        return self.traced.model

    def cost(self, metric: str):
        """The cost model of ``metric``: "flops", "params", or a measured one added with
        :meth:`with_cost` (``"latency:ort-cpu"``)."""
        for key, model in self.measured:
            if key == metric:
                return model
        memo = self._memo
        if metric not in memo:
            memo[metric] = CostModel(self.traced, self.coupling, self.groups, metric)
        return memo[metric]

    def with_cost(self, key: str, cost_model: Any) -> "Analysis":
        """A new analysis that also knows the cost model ``key`` (a measured one)."""
        kept = tuple((k, m) for k, m in self.measured if k != key)
        return dataclasses.replace(self, measured=kept + ((key, cost_model),))

    def kept_width(self, key: DimKey, keep: list[np.ndarray]) -> int:
        """How many indices of dimension ``key`` a set of keep-masks leaves."""
        if "member" not in self._memo:
            self._memo["member"] = member_index(self.groups)
        return kept_width(self._memo["member"], self.coupling.sizes, key, keep)

    def full_keep(self) -> list[np.ndarray]:
        return [np.ones(g.n_units, dtype=bool) for g in self.groups]


def analyze(model: nn.Module, example_input: Any, ignore: Iterable = (), uniform: bool | None = None,
            layers: bool = False) -> Analysis:
    """Trace ``model`` and compute its pruning groups (pure: the model is not modified).

    For a Hugging Face model (one with a ``PretrainedConfig``), ``uniform`` (the default for
    them) keeps only what its config can express: repeated layers keep one width, and groups
    the config cannot describe stay whole, so the result reloads with ``from_pretrained``.
    ``uniform=False`` prunes freely (the config then no longer describes the model).

    ``layers=True`` adds whole layers as units (see :mod:`surgeon.analysis.layers`): one group
    per ``ModuleList``/``Sequential`` of residual blocks whose removal is exact."""
    names = ignored_names(model, ignore)
    example_input = capture_input(model, example_input)  # a Hugging Face model's cache off, in the call
    traced = trace(model, example_input)
    _walks.settle()  # the capture lives as long as the analysis: the collector need not re-walk it
    c = couple(traced)
    if c.probes:
        c = resolve_probes(model, example_input, traced, c)
    if traced.attr_reads:  # widths kept in int attributes that forward reads
        c = resolve_reads(model, example_input, traced, c)
    c, experts = expert_modules(traced, c)  # whole experts of a ModuleList whose outputs are stacked
    _walks.settle()  # and so does the coupling
    params = set(_walks.parameters(model))  # every name, aliases included
    groups = [g if g.reason is not None or any(m.name in params for m in g.tensors)
              else dataclasses.replace(g, reason="only buffers, no parameters, in this group")
              for g in mark_ignored(with_expert_layers(build_groups(c), experts), names)]
    a = Analysis(traced, c, groups)
    if layers:
        c, new = layer_units(a, model, example_input)
        a = dataclasses.replace(a, coupling=c, groups=a.groups + tuple(mark_ignored(new, names)))
    if uniform is not False:
        cm = config_model(model)
        if cm is not None:
            groups, bundles, units, cm = constrain(a, cm)
            a = dataclasses.replace(a, groups=groups, config_model=cm, bundles=bundles, bundle_units=units)
    a = dataclasses.replace(a, groups=expert_floors(a))  # a top-k router keeps k experts
    return _with_unit_costs(a)


def _with_unit_costs(a: Analysis) -> Analysis:
    """The groups with their FLOPs per unit, and parameters per unit computed on first read."""
    flops = a.cost("flops").mean_marginal()
    params = functools.cache(lambda: a.cost("params").mean_marginal())
    groups = tuple(g.with_costs(m, params) for g, m in zip(a.groups, flops))
    out = dataclasses.replace(a, groups=groups)
    out._memo["flops"] = a._memo["flops"]  # built just above, on groups with the same members
    return out


def fingerprint(a: Analysis) -> str:
    """A stable hash of what an analysis says (groups, coupling, constraints): equal before and
    after any later step, which is how tests check that no step rewrites an earlier value."""
    import hashlib

    h = hashlib.sha256()
    for g in a.groups:
        h.update(repr((g.id, g.kind, g.n_units, g.reason, g.exact, g.inexact_reason, g.where,
                       g.flops_per_unit, g.layers, g.step, g.frozen_units.tobytes())).encode())
        for m in g.members:
            h.update(repr(m.key).encode() + m.unit_of.tobytes())
    c = a.coupling
    for name in ("sizes", "frozen", "inexact", "kinds", "layer_keys"):
        h.update(repr(sorted(getattr(c, name).items(), key=repr)).encode())
    h.update(repr((c.costs, c.attr_fixes, a.bundles, [k for k, _ in a.measured])).encode())
    if a.bundle_units:
        h.update(repr(a.bundle_units).encode())
    return h.hexdigest()
