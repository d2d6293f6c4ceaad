"""Criteria score every unit of every group; the planner removes the lowest-scoring units.

A criterion is any object with a ``name`` and ``score(model, groups) -> list[np.ndarray]``
(one score per unit, per group, higher means more important; :func:`checked_scores` refuses
anything else with a :class:`ScoreError`). Register new ones with
:func:`register_criterion`; ``shrink(..., criterion="name")`` looks them up here.

Registered criteria:

* ``l2`` (default), ``l1``: norm of every parameter slice a unit owns;
* ``bn_scale``: ``|gamma|`` of the group's BatchNorm layers (L2 where there is none);
* ``lamp``: layer-adaptive magnitude (:mod:`.lamp`);
* ``random``: the baseline;
* data-aware, built with ``data`` (an iterable of batches) and optionally ``loss_fn``:
  ``taylor`` (``sum |w * dL/dw|``), ``fisher`` (``sum (w * dL/dw)^2``) (:mod:`.taylor`) and
  ``activation`` (``|W| * ||X||``, as Wanda; no loss) (:mod:`.activation`), and
  ``block_influence`` (whole layers by ShortGPT's ``1 - cos(h_in, h_out)``, the rest by L2)
  (:mod:`.layer_influence`), and ``router`` (mixture-of-experts: whole experts and expert widths
  by router-weighted activation norms, REAP / MoE-Pruner style; magnitude without data)
  (:mod:`.router`). Batch forms and the default losses are described in :mod:`._data`.

``get_criterion(name, data=..., loss_fn=...)`` passes ``data`` and ``loss_fn`` to a registered
factory that takes them (criteria that need no data ignore them); a data-aware criterion built
without ``data`` raises :class:`DataError` saying to pass it. Every batch ``data`` yields is
used; to cap a long DataLoader build the criterion yourself, e.g.
``shrink(model, x, criterion=Taylor(loader, max_batches=8))``.

Normalisation of coupled members. A unit owns slices of several parameters (a conv's output
rows, its bias, the BatchNorm scale and shift after it, the next conv's input columns). Each
criterion first gives every index of every member dimension a non-negative score, sums the
indices a unit owns into one per-unit score per member, then divides each member's per-unit
scores by their mean over the group's units and sums over members (:func:`combine`). A member
whose scores are all zero adds nothing. So every member weighs the same, however many elements
its slices hold and whatever its scale (a 3x3 conv's rows and a BatchNorm vector alike), and a
unit's score is ``n_members`` times its average relative importance; the planner divides the
group's scores by their mean again, so only ratios within a group matter.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .base import (BNScale, Criterion, Magnitude, Random, combine, layer_rms, per_index,  # noqa: F401
                   _combine, _powered, _sum_but, _tensor)
from ._data import DataError  # noqa: F401
from .activation import Activation  # noqa: F401
from .lamp import LAMP  # noqa: F401
from .router import Router  # noqa: F401
from .layer_influence import BlockInfluence, block_influence, layer_scores  # noqa: F401
from .taylor import Fisher, Taylor  # noqa: F401
from .validate import MetaDeviceError, ScoreError, check_not_meta, check_scores, checked_scores  # noqa: F401

__all__ = ["Criterion", "Magnitude", "BNScale", "Random", "Taylor", "Fisher", "Activation", "LAMP",
           "BlockInfluence", "DataError", "ScoreError", "MetaDeviceError", "get_criterion", "register_criterion",
           "CRITERIA", "layer_rms", "layer_scores", "block_influence", "checked_scores", "check_scores", "check_not_meta"]


def _gnn(data=None, loss_fn=None) -> Criterion:
    from .gnn import GNNCriterion  # lazy: torch-geometric is an optional extra

    return GNNCriterion(data=data, loss_fn=loss_fn)


CRITERIA: dict[str, Callable[..., Criterion]] = {
    "l2": lambda: Magnitude(2),
    "l1": lambda: Magnitude(1),
    "bn_scale": BNScale,
    "random": Random,
    "lamp": LAMP,
    "taylor": Taylor,
    "fisher": Fisher,
    "activation": Activation,
    "block_influence": BlockInfluence,
    "gnn": _gnn,
    "router": Router,
}


def register_criterion(name: str, factory: Callable[..., Criterion]) -> None:
    """Register ``factory`` under ``name``; if it takes ``data`` and/or ``loss_fn`` keyword
    arguments, :func:`get_criterion` passes them on."""
    if name in CRITERIA:
        raise KeyError(f"criterion {name!r} is already registered")
    CRITERIA[name] = factory


def _accepts(factory: Callable, arg: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def get_criterion(criterion: str | Criterion, *, data: Any = None, loss_fn: Callable | None = None) -> Criterion:
    """The criterion named ``criterion`` (built with ``data``/``loss_fn`` when its factory takes
    them), or ``criterion`` itself if it is already an object with ``score``.

    >>> import torch
    >>> get_criterion("l2").name
    'l2'
    >>> get_criterion("taylor", data=[(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]).name
    'taylor'
    """
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {criterion!r}; use one of {sorted(CRITERIA)} "
                             "or pass an object with a score(model, groups) method")
        factory = CRITERIA[criterion]
        kwargs = {k: v for k, v in (("data", data), ("loss_fn", loss_fn))
                  if _accepts(factory, k) and (v is not None or k == "data")}
        return factory(**kwargs)
    if not hasattr(criterion, "score"):
        raise TypeError("criterion must be a name or an object with score(model, groups)")
    if data is not None or loss_fn is not None:
        raise TypeError("data= and loss_fn= build a criterion given by name; this criterion object "
                        "was built already: give it its data when you construct it")
    return criterion
