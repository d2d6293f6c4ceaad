"""``ignore=[module, ...]``: groups that touch an ignored module are kept whole."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np
from torch import nn

from ..graph.groups import PruneGroup

__all__ = ["ignored_names", "mark_ignored"]


def ignored_names(model: nn.Module, ignore: Iterable) -> tuple[str, ...]:
    """The qualified names of ``ignore`` (modules or names), checked against ``model``."""
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
    return tuple(names)


def _under(name: str, names: Sequence[str]) -> bool:
    return any(n == "" or name == n or name.startswith(n + ".") for n in names)


def mark_ignored(groups: Sequence[PruneGroup], names: Sequence[str]) -> list[PruneGroup]:
    """New groups: those touching an ignored module get a reason; a layer unit that holds or
    sits in an ignored module is frozen."""
    if not names:
        return list(groups)
    out = []
    for g in groups:
        reason, frozen = g.reason, g.frozen_units
        if g.layers:
            hit = [_under(layer, names) or any(n.startswith(layer + ".") for n in names) for layer in g.layers]
            frozen = frozen | np.array(hit, dtype=bool)
            if frozen.all():
                reason = reason or "every layer holds or sits in an ignored module"
        owner = next((m.name.rpartition(".")[0] for m in g.tensors if _under(m.name.rpartition(".")[0], names)), None)
        if owner is not None:
            reason = reason or f"touches ignored module '{owner}'"
        changed = reason != g.reason or frozen is not g.frozen_units
        out.append(dataclasses.replace(g, reason=reason, frozen_units=frozen) if changed else g)
    return out
