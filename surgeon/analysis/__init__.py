"""Trace, couple and group a model once; everything downstream reads this value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from torch import nn

from . import _walks
from .graph.couple import couple
from .graph.cost import CostModel
from .graph.groups import PruneGroup, build_groups
from .graph.ir import Coupling, DimKey
from .graph.trace import Traced, trace
from .hf import config_model, constrain
from .layers import add_layer_groups
from .probe import resolve_probes

__all__ = ["Analysis", "analyze"]


@dataclass
class Analysis:
    """The traced graph, its coupling and its groups for one model and example input."""

    traced: Traced
    coupling: Coupling
    groups: list[PruneGroup]
    _costs: dict = field(default_factory=dict, repr=False)
    # Hugging Face models: what the config can express, and groups that must keep one width
    config_model: Any = field(default=None, repr=False)
    bundles: list[list[int]] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        return self.traced.model

    def cost(self, metric: str) -> CostModel:
        if metric not in self._costs:
            self._costs[metric] = CostModel(self.traced, self.coupling, self.groups, metric)
        return self._costs[metric]

    def kept_width(self, key: DimKey, keep: list[np.ndarray]) -> int:
        """How many indices of dimension ``key`` a set of keep-masks leaves."""
        if "member" not in self._costs:
            self._costs["member"] = {m.key: (gi, m) for gi, g in enumerate(self.groups) for m in g.members}
        hit = self._costs["member"].get(key)
        if hit is None:
            return self.coupling.sizes[key]
        gi, m = hit
        return int(keep[gi][m.unit_of].sum())

    def full_keep(self) -> list[np.ndarray]:
        return [np.ones(g.n_units, dtype=bool) for g in self.groups]


def analyze(model: nn.Module, example_input: Any, ignore: Iterable = (), uniform: bool | None = None,
            layers: bool = False) -> Analysis:
    """Trace ``model`` and compute its pruning groups (pure: the model is not modified).

    For a Hugging Face model (one with a ``PretrainedConfig``), ``uniform`` (the default for
    them) keeps only what its config can express: repeated layers keep one width, and groups
    the config cannot describe stay whole, so the result reloads with ``from_pretrained``.
    ``uniform=False`` prunes freely (the config then no longer describes the model).

    ``layers=True`` adds whole layers as units (see :mod:`surgeon.layers`): one group per
    ``ModuleList``/``Sequential`` of residual blocks whose removal is exact."""
    traced = trace(model, example_input)
    c = couple(traced)
    if c.probes:
        resolve_probes(model, example_input, traced, c)
    groups = build_groups(c)
    _mark_ignored(model, groups, ignore)
    params = set(_walks.parameters(model))  # every name, aliases included
    for g in groups:
        if g.reason is None and not any(m.name in params for m in g.tensors):
            g.reason = "only buffers, no parameters, in this group"
    a = Analysis(traced, c, groups)
    if layers:
        _mark_ignored(model, add_layer_groups(a, model, example_input), ignore)
    if uniform is not False:
        a.config_model = config_model(model)
        if a.config_model is not None:
            a.bundles = constrain(a, a.config_model)
    for g, m in zip(groups, a.cost("flops").mean_marginal()):
        g.flops_per_unit = float(m)
    fill = _params_filler(a)
    for g in groups:
        g._fill_params = fill
    return a


def _params_filler(a: Analysis):
    """Sets every group's params_per_unit at once, when the first one is read."""
    def fill() -> None:
        for g, m in zip(a.groups, a.cost("params").mean_marginal()):
            g.params_per_unit = float(m)
            g._fill_params = None
    return fill


def _mark_ignored(model: nn.Module, groups: list[PruneGroup], ignore: Iterable) -> None:
    names = []
    by_id = None
    for item in ignore:
        if isinstance(item, str):
            model.get_submodule(item)  # raises AttributeError with the bad name
            names.append(item)
        elif isinstance(item, nn.Module):
            if by_id is None:
                by_id = {id(m): n for n, m in model.named_modules()}
            if id(item) not in by_id:
                raise ValueError(f"ignore: {type(item).__name__} is not a submodule of the model")
            names.append(by_id[id(item)])
        else:
            raise TypeError(f"ignore takes modules or their names, got {type(item).__name__}")
    if not names:
        return
    for g in groups:
        for u, layer in enumerate(g.layers or ()):  # a layer that holds or sits in an ignored module
            if any(n == "" or layer == n or layer.startswith(n + ".") or n.startswith(layer + ".") for n in names):
                g.frozen_units[u] = True
        if g.layers and g.frozen_units.all():
            g.reason = g.reason or "every layer holds or sits in an ignored module"
        for m in g.tensors:
            owner = m.name.rpartition(".")[0]
            if any(owner == n or owner.startswith(n + ".") or n == "" for n in names):
                g.reason = g.reason or f"touches ignored module '{owner}'"
                break
