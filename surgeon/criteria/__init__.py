"""Criteria score every unit of every group; the planner removes the lowest-scoring units.

A criterion is any object with a ``name`` and ``score(model, groups) -> list[np.ndarray]``
(one score per unit, per group, higher means more important). Register new ones with
:func:`register_criterion`; ``shrink(..., criterion="name")`` looks them up here.

Member scores are combined with a documented normalisation: each member parameter's per-unit
scores are divided by their mean over the group's units, then summed over members, so a wide
conv and a BatchNorm vector weigh the same however their scales differ.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from ..graph.groups import PruneGroup

__all__ = ["Criterion", "Magnitude", "BNScale", "Random", "get_criterion", "register_criterion",
           "CRITERIA"]


class Criterion(Protocol):
    name: str

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]: ...


def _tensor(model: nn.Module, qualname: str) -> torch.Tensor | None:
    mod_name, _, leaf = qualname.rpartition(".")
    try:
        mod = model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        return None
    t = mod._parameters.get(leaf)
    return t.detach() if t is not None else None


def per_index(t: torch.Tensor, dim: int, p: int) -> np.ndarray:
    """``sum |t|^p`` over every dim but ``dim``."""
    x = t.float().abs()
    if p == 2:
        x = x * x
    dims = [d for d in range(t.dim()) if d != dim]
    return (x.sum(dim=dims) if dims else x).cpu().numpy().astype(np.float64)


def combine(group: PruneGroup, member_scores: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Sum of mean-normalised per-unit scores. ``member_scores``: (unit_of, per-index score)."""
    total = np.zeros(group.n_units)
    for unit_of, s in member_scores:
        per_unit = np.bincount(unit_of, weights=s, minlength=group.n_units)
        mean = per_unit.mean()
        if mean > 0:
            total += per_unit / mean
    return total


class Magnitude:
    """L1 or L2 norm of every parameter slice a unit owns (conv/linear rows and columns, norm
    affine parameters), mean-normalised per member and summed."""

    def __init__(self, p: int = 2):
        self.p = p
        self.name = f"l{p}"

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        out = []
        for g in groups:
            parts = []
            for m in g.tensors:
                t = _tensor(model, m.name)
                if t is not None and t.dim() > m.dim:
                    parts.append((m.unit_of, per_index(t, m.dim, self.p)))
            out.append(combine(g, parts))
        return out


class BNScale:
    """|gamma| of the BatchNorm layers in the group (Network Slimming); groups without a
    BatchNorm fall back to L2 magnitude."""

    name = "bn_scale"

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        fallback = Magnitude(2).score(model, groups)
        out = []
        for g, fb in zip(groups, fallback):
            parts = []
            for m in g.tensors:
                mod_name, _, leaf = m.name.rpartition(".")
                mod = model.get_submodule(mod_name) if mod_name else model
                if leaf == "weight" and isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    parts.append((m.unit_of, per_index(mod.weight.detach(), 0, 1)))
            out.append(combine(g, parts) if parts else fb)
        return out


class Random:
    """Uniform random scores: the baseline every criterion must beat."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return [rng.random(g.n_units) for g in groups]


def _gnn(**kwargs) -> Criterion:
    from .gnn import GNNCriterion  # lazy: torch-geometric is an optional extra

    return GNNCriterion(**kwargs)


CRITERIA: dict[str, Callable[[], Criterion]] = {
    "l2": lambda: Magnitude(2),
    "l1": lambda: Magnitude(1),
    "bn_scale": BNScale,
    "random": Random,
    "gnn": _gnn,
}


def register_criterion(name: str, factory: Callable[[], Criterion]) -> None:
    if name in CRITERIA:
        raise KeyError(f"criterion {name!r} is already registered")
    CRITERIA[name] = factory


def get_criterion(criterion: str | Criterion) -> Criterion:
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; use one of {sorted(CRITERIA)} "
                             "or pass an object with a score(model, groups) method")
        return CRITERIA[criterion]()
    if not hasattr(criterion, "score"):
        raise TypeError("criterion must be a name or an object with score(model, groups)")
    return criterion
