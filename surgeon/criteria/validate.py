"""Checks at the boundary between surgeon and what a user hands it: a criterion's scores, a model
that holds no data (meta device).

A criterion may be user code, so its output is checked before the planner reads it: one array
per group, each 1-D with one finite number per unit. A bad array is refused with the criterion's
name and the group (its id and one of its tensors), never passed on to fail deep in the planner
or, worse, to rank units by NaN.

>>> import numpy as np, torch, surgeon
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> a = surgeon.analyze(net, torch.randn(1, 4))
>>> crit = type("Bad", (), {"name": "bad", "score": lambda self, m, gs: [np.zeros(1) for g in gs]})()
>>> checked_scores(crit, net, list(a.groups))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
surgeon.criteria.validate.ScoreError: criterion 'bad' returned 1 score(s) shaped (1,) for group 0 (0.weight; ...
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import _walks
from ..errors import SurgeonError
from ..graph.groups import PruneGroup

__all__ = ["ScoreError", "MetaDeviceError", "checked_scores", "check_scores", "check_not_meta"]


class ScoreError(SurgeonError, ValueError):
    """A criterion's ``score`` returned something the planner cannot rank units by."""


class MetaDeviceError(SurgeonError, NotImplementedError):
    """The model (or its example input) is on the meta device: it has shapes but no values."""


def _crit_name(crit: Any) -> str:
    return str(getattr(crit, "name", type(crit).__name__))


def _label(g: PruneGroup) -> str:
    """``group <id> (<a tensor>, ...)``: enough to find the group in ``analysis.groups``."""
    names = sorted({m.name for m in g.tensors}) or list(g.layers or ()) or list(g.where)
    head = names[0] if names else "no tensors"
    return f"group {g.id} ({head}{', ...' if len(names) > 1 else ''}; {g.n_units} units)"


def _as_array(s: Any) -> np.ndarray | None:
    """``s`` as a numpy array, or None when it is not numeric."""
    if isinstance(s, torch.Tensor):
        s = s.detach().cpu()
        if s.dtype == torch.bfloat16:
            s = s.float()
        s = s.numpy()
    try:
        arr = np.asarray(s)
    except (TypeError, ValueError):
        return None
    return arr if arr.dtype.kind in "biuf" else None


def check_scores(crit: Any, groups: Sequence[PruneGroup], scores: Any) -> list[np.ndarray]:
    """``scores`` as float64 arrays, one per group in ``groups``, each of ``group.n_units``
    finite numbers; a :class:`ScoreError` naming ``crit`` and the group otherwise."""
    name = _crit_name(crit)
    if isinstance(scores, (np.ndarray, torch.Tensor, str, bytes, dict)) or not hasattr(scores, "__iter__"):
        raise ScoreError(f"criterion {name!r}: score(model, groups) must return a list with one array per "
                         f"group ({len(groups)} groups), got a {type(scores).__name__}")
    scores = list(scores)
    if len(scores) != len(groups):
        raise ScoreError(f"criterion {name!r} returned {len(scores)} score arrays for {len(groups)} groups; "
                         f"score(model, groups) must return one array per group, in the order given")
    return [_checked(name, g, s) for g, s in zip(groups, scores)]


def _checked(name: str, g: PruneGroup, s: Any) -> np.ndarray:
    arr = _as_array(s)
    where = f"criterion {name!r} returned"
    if arr is None:
        dtype = getattr(s, "dtype", None)
        raise ScoreError(f"{where} non-numeric scores for {_label(g)}: a {type(s).__name__}"
                         f"{f' of {dtype}' if dtype is not None else ''}; return a 1-D array of floats, "
                         f"one per unit")
    if arr.ndim != 1 or arr.shape[0] != g.n_units:
        raise ScoreError(f"{where} {arr.size} score(s) shaped {tuple(arr.shape)} for {_label(g)}; it needs a "
                         f"1-D array of {g.n_units} scores, one per unit (group.n_units)")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ScoreError(f"{where} {int(bad.sum())} non-finite score(s) for {_label(g)} (unit {first}: "
                         f"{arr[first]}); every score must be a finite number. NaN or inf scores usually "
                         f"come from NaN/inf in the model's weights or in data=; check those, or make the "
                         f"criterion return finite values")
    return arr


def checked_scores(crit: Any, model: nn.Module, groups: Sequence[PruneGroup]) -> list[np.ndarray]:
    """``crit.score(model, groups)``, checked by :func:`check_scores`: what every path that plans
    from a criterion (``plan``, ``shrink``, the CLI report, the groups picture) calls."""
    groups = list(groups)
    return check_scores(crit, groups, crit.score(model, groups))


def _first_meta(model: nn.Module) -> str | None:
    for name, t in _walks.parameters(model).items():  # the walks the rest of the call shares
        if t.is_meta:
            return f"parameter '{name}'"
    for name, mod in _walks.modules(model).items():
        for leaf, t in mod._buffers.items() if mod._buffers else ():
            if t is not None and t.is_meta:
                return f"buffer '{name + '.' if name else ''}{leaf}'"
    return None


def _meta_input(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_meta
    if isinstance(x, dict):
        return any(_meta_input(v) for v in x.values())
    if isinstance(x, (tuple, list)):
        return any(_meta_input(v) for v in x)
    return False


_MATERIALISE = ("To plan a model on the meta device, pass its checkpoint folder: surgeon.plan(model, x, "
                "weights='path/to/checkpoint') reads the values from the safetensors shards (see "
                "surgeon.sharded); otherwise materialise the weights first, e.g. "
                "model.to_empty(device='cpu') followed by model.load_state_dict(state_dict) (or load the "
                "checkpoint without device='meta' / "
                "init_empty_weights), and pass a real example input")


def check_not_meta(model: nn.Module, example_input: Any = None) -> None:
    """Refuse (:class:`MetaDeviceError`) a model or example input on the meta device: they have
    shapes but no values, so nothing can be scored, run or compensated.

    >>> with torch.device("meta"):
    ...     net = torch.nn.Linear(4, 2)
    >>> check_not_meta(net)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    surgeon.criteria.validate.MetaDeviceError: the model's parameter 'weight' is on the meta device ...
    """
    found = _first_meta(model)
    if found is not None:
        raise MetaDeviceError(f"the model's {found} is on the meta device (shapes only, no values). "
                              f"{_MATERIALISE}")
    if _meta_input(example_input):
        raise MetaDeviceError(f"example_input is on the meta device (shapes only, no values). {_MATERIALISE}")
