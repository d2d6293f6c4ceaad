"""Check a Plan against the model it is applied to, before anything is touched or copied.

A plan may come from a file anyone can edit, so :func:`surgeon.apply` trusts none of it:

* the model's :func:`~surgeon.planning.plan.fingerprint_of` matches the plan's (when it has one),
  and every tensor the plan records a shape for has that shape;
* every slice names a parameter, buffer or tensor attribute of the model, along a dim it has, of
  the size it has there, and keeps a non-empty, sorted list of distinct indices inside that size;
  no tensor is sliced twice along one dim, and tied names of one tensor are sliced alike;
* an attribute update names an integer (or tuple of integers) attribute the module holds itself,
  never a private or special one, whose value is the plan's ``old``, and sets it to a positive
  value no larger: the width attributes the rules and width probes fix (``out_channels``,
  ``num_heads``, ``normalized_shape``, a user module's ``hidden``), never ``forward``,
  ``__class__`` or ``training``;
* a config update names a field the model's config has, holding the plan's ``old``;
* a drop names an existing layer of a ``ModuleList`` or ``Sequential``.

Keep lists are checked in numpy, so a plan for a deep model is checked in milliseconds.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import PlanError
from ..planning.plan import Plan, fingerprint_of
from ..slicing.edits import AttrUpdate, Modules, Slice

__all__ = ["check_plan"]

_MISSING = object()
_REPLAN = "build a new plan for this model with surgeon.plan"
_NOT_WIDTHS = ("idx", "index", "_id")  # name endings of positions, which the width probes never fix


def check_plan(model: nn.Module, plan: Plan, mods: Modules) -> dict[str, torch.Tensor]:
    """Raise :class:`PlanError` unless ``plan`` fits ``model`` (``mods``: its modules by name);
    returns every tensor the plan names, by name, for :func:`surgeon.slicing.slice_model`."""
    found = _check_shapes(plan, mods)
    if plan.fingerprint is not None:
        _check_fingerprint(model, plan, mods)
    _check_slices(plan.slices, mods, found)
    _check_attrs(plan.attrs, mods)
    _check_config(model, plan.config)
    _check_drops(plan.drops, mods)
    return found


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _tensor_of(mods: Modules, name: Any, what: str) -> torch.Tensor:
    """The parameter, buffer or plain tensor attribute ``name`` of the model."""
    if not isinstance(name, str):
        raise PlanError(f"{what} names the tensor {name!r}, which is not a string; {_REPLAN}")
    mod_name, _, leaf = name.rpartition(".")
    mod = mods.get(mod_name)
    if mod is None:
        raise PlanError(f"{what} names '{name}', but the model has no module '{mod_name}'; {_REPLAN}")
    t = mod._parameters.get(leaf)
    if t is None:
        t = mod._buffers.get(leaf)
    if t is None and not leaf.startswith("__"):
        t = vars(mod).get(leaf)  # a tensor the module holds as a plain attribute
    if not isinstance(t, torch.Tensor):
        raise PlanError(f"{what} names '{name}', which is no parameter or buffer of the model; {_REPLAN}")
    return t


def _check_shapes(plan: Plan, mods: Modules) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for name, shape in plan.shapes:
        t = found[name] = _tensor_of(mods, name, "the plan's shapes")
        if tuple(t.shape) != tuple(shape):
            raise PlanError(f"the plan was made for a model where '{name}' has shape {tuple(shape)}, "
                            f"this one has {tuple(t.shape)}; build a new plan for this model")
    return found


def _check_fingerprint(model: nn.Module, plan: Plan, mods: Modules) -> None:
    mine = fingerprint_of(model)  # shared with build_plan within one shrink
    if plan.fingerprint != mine:
        raise PlanError(f"the plan was made for another model: its fingerprint (class name, names and shapes "
                        f"of parameters and buffers) is {str(plan.fingerprint)[:40]!r}, this "
                        f"{type(model).__name__} gives {mine!r}; {_REPLAN}")


def _check_slices(slices: Sequence[Slice], mods: Modules, found: dict[str, torch.Tensor]) -> None:
    seen: dict[tuple[str, int], int] = {}
    by_object: dict[int, dict[str, dict[int, Any]]] = {}  # id(tensor) -> name -> dim -> keep
    keeps: dict[tuple[int, int], tuple[int, Slice]] = {}  # (id(keep), size): a group's members share one
    shapes: dict[str, tuple[int, ...]] = {}
    for i, s in enumerate(slices):
        if not isinstance(s, Slice):
            raise PlanError(f"slice {i} of the plan is a {type(s).__name__}, not a Slice; {_REPLAN}")
        shape = shapes.get(s.tensor)
        if shape is None:
            if s.tensor not in found:
                found[s.tensor] = _tensor_of(mods, s.tensor, f"slice {i} of the plan")
            shape = shapes[s.tensor] = tuple(found[s.tensor].shape)
        dim, size = s.dim, s.size
        if not ((type(dim) is int or _is_int(dim)) and 0 <= dim < len(shape)):
            raise PlanError(f"{_where(i, s, shape)}: the tensor has no such dim; {_REPLAN}")
        if size != shape[dim] or not (type(size) is int or _is_int(size)):
            raise PlanError(f"{_where(i, s, shape)}: the plan says that dim has size {size!r}, the tensor has "
                            f"{shape[dim]}; {_REPLAN}")
        keeps.setdefault((id(s.keep), size), (i, s))
        if (s.tensor, dim) in seen:
            raise PlanError(f"{_where(i, s, shape)}: slice {seen[s.tensor, dim]} already slices that dim; {_REPLAN}")
        seen[s.tensor, dim] = i
        by_object.setdefault(id(found[s.tensor]), {}).setdefault(s.tensor, {})[dim] = s.keep
    _check_keeps(list(keeps.values()), found)
    _check_tied(by_object)


def _where(i: int, s: Slice, shape: tuple[int, ...]) -> str:
    return f"slice {i} of the plan ('{s.tensor}', shape {shape}, dim {s.dim!r})"


def _check_keeps(items: list[tuple[int, Slice]], found: dict[str, torch.Tensor]) -> None:
    """Every keep list sorted, distinct, inside its size and not empty: one numpy pass over all
    of them; if that fails, each is checked on its own to say which and how."""
    keeps = [s.keep for _, s in items]
    if keeps and all(isinstance(k, (tuple, list)) and 0 < len(k) <= s.size for k, (_, s) in zip(keeps, items)):
        counts = list(map(len, keeps))
        arr = _array(list(itertools.chain.from_iterable(keeps)))
        if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iu" and arr.min() >= 0:
            sizes = np.repeat(np.array([s.size for _, s in items], dtype=np.int64), counts)
            step = np.diff(arr)
            step[np.cumsum(counts)[:-1] - 1] = 1  # where one keep list ends and the next begins
            if (arr < sizes).all() and (step > 0).all():
                return
    for i, s in items:
        problem = _keep_problem(s.keep, s.size)
        if problem:
            raise PlanError(f"{_where(i, s, tuple(found[s.tensor].shape))}: keep {problem}; a plan keeps "
                            f"sorted, distinct indices 0 <= i < {s.size}: {_REPLAN}")


def _array(values: Any) -> np.ndarray | None:
    """``values`` as an array of the dtype numpy infers (floats, strings and ints past 64 bits
    are not of kind "iu"), or None for a ragged or nested sequence."""
    try:
        return np.array(values)
    except (TypeError, ValueError):
        return None


def _keep_problem(keep: Any, size: int) -> str | None:
    """What is wrong with ``keep`` as the indices to keep along a dim of ``size``, or None."""
    if not isinstance(keep, (tuple, list, np.ndarray)):
        return f"is a {type(keep).__name__}, not a sequence of integers"
    if len(keep) == 0:
        return "is empty (a plan never removes every index of a dim)"
    if len(keep) > size:
        return f"lists {len(keep)} indices, more than the dim has"
    arr = _array(keep)
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iu":
        return f"holds {'nested' if arr is None else arr.dtype} values, not integers"
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        return f"holds the negative index {int(lo)}"
    if hi >= size:
        return f"holds the index {int(hi)}, out of range"
    step = np.diff(arr)
    if (step < 0).any():
        at = int(np.argmax(step < 0))
        return f"is not sorted ({int(arr[at + 1])} comes after {int(arr[at])})"
    if (step == 0).any():
        return f"holds the index {int(arr[int(np.argmax(step == 0))])} twice"
    return None


def _check_tied(by_object: dict[int, dict[str, dict[int, Any]]]) -> None:
    """Surgery slices a tied tensor once, under the first of its names: the others must agree."""
    for names in by_object.values():
        if len(names) > 1:
            (first, cuts), *rest = names.items()
            for other, theirs in rest:
                if theirs != cuts:
                    raise PlanError(f"'{first}' and '{other}' are one tied tensor, but the plan slices them "
                                    f"differently; {_REPLAN}")


def _check_attrs(attrs: Sequence[AttrUpdate], mods: Modules) -> None:
    seen: dict[tuple[str, str], Any] = {}
    for i, a in enumerate(attrs):
        if not isinstance(a, AttrUpdate):
            raise PlanError(f"attribute update {i} of the plan is a {type(a).__name__}, not an AttrUpdate")
        mod = mods.get(a.module) if isinstance(a.module, str) else None
        where = f"attribute update {i} of the plan ('{a.module}'.{a.attr!r})"
        if mod is None:
            raise PlanError(f"{where}: the model has no module {a.module!r}; {_REPLAN}")
        problem = _attr_problem(mod, a)
        if problem:
            raise PlanError(f"{where}: {problem}; a plan only lowers integer width attributes a module holds "
                            f"itself (out_channels, num_heads, normalized_shape, ...): {_REPLAN}")
        if seen.setdefault((a.module, a.attr), a.new) != a.new:
            raise PlanError(f"{where}: an earlier update sets it to {seen[a.module, a.attr]!r}, this one "
                            f"to {a.new!r}; {_REPLAN}")


def _attr_problem(mod: nn.Module, a: AttrUpdate) -> str | None:
    """Why ``a`` may not be applied to ``mod``, or None."""
    name = a.attr
    if not isinstance(name, str) or not name.isidentifier():
        return "that is not an attribute name"
    if name.startswith("_"):
        return "that is a private or special attribute"
    if name == "training" or name.endswith(_NOT_WIDTHS):
        return "that is a flag or a position, not a width"
    current = vars(mod).get(name, _MISSING)
    if current is _MISSING:
        return f"{type(mod).__name__} holds no attribute of its own of that name"
    if isinstance(current, (tuple, list)):
        old, new = list(current), a.new
        if not (isinstance(new, (list, tuple)) and len(new) == len(old) and all(map(_is_int, old))):
            return f"it holds {current!r}, and the plan's new value {new!r} is not a list of as many integers"
    elif _is_int(current):
        old, new = [current], [a.new]
    else:
        return f"it holds a {type(current).__name__}, not an integer width"
    if _plain(a.old) != _plain(current):
        return f"the plan expects it to hold {a.old!r}, the module holds {current!r}"
    if not all(_is_int(n) and 1 <= n <= o for n, o in zip(new, old)):
        return f"the new value {a.new!r} is not a positive integer width no larger than {current!r}"
    return None


def _plain(v: Any) -> Any:
    """``v`` with tuples as lists (JSON has only lists) and numpy integers as ints."""
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return int(v) if _is_int(v) else v


def _field(cfg: Any, name: str) -> Any:
    """Field ``name`` of ``cfg``, of a nested sub-config for ``vision_config.hidden_size``."""
    for part in name.split("."):
        if cfg is _MISSING or isinstance(cfg, (nn.Module, torch.Tensor)):
            return _MISSING
        cfg = getattr(cfg, part, _MISSING)
    return cfg


def _check_config(model: nn.Module, config: Sequence[AttrUpdate]) -> None:
    cfg = getattr(model, "config", None) if config else None
    for i, a in enumerate(config):
        where = f"config update {i} of the plan ({a.module!r}.{a.attr!r})"
        if not isinstance(a, AttrUpdate) or a.module != "config":
            raise PlanError(f"{where}: a plan only updates fields of the model's 'config'; {_REPLAN}")
        if cfg is None or isinstance(cfg, (nn.Module, torch.Tensor)):
            raise PlanError(f"{where}: the model has no config object; {_REPLAN}")
        if not isinstance(a.attr, str) or not all(p.isidentifier() and not p.startswith("_")
                                                  for p in a.attr.split(".")):
            raise PlanError(f"{where}: that is not a public config field; {_REPLAN}")
        current = _field(cfg, a.attr)
        if current is _MISSING or not (current is None or _is_int(current) or type(current) is float
                                       or isinstance(current, (list, tuple))):
            raise PlanError(f"{where}: the model's {type(cfg).__name__} has no integer or list field (or "
                            f"float ratio) of that name; {_REPLAN}")
        if _plain(a.old) != _plain(current):
            raise PlanError(f"{where}: the plan expects {a.old!r}, the config holds {current!r}; {_REPLAN}")
        if type(current) is float:  # a ratio of widths (mlp_ratio): a positive float
            fits = type(a.new) is float and a.new > 0
        else:
            fits = isinstance(a.new, (list, tuple)) if isinstance(current, (list, tuple)) else \
                _is_int(a.new) and a.new >= 1
        if not fits:
            raise PlanError(f"{where}: the new value {a.new!r} does not fit a field holding {current!r}; {_REPLAN}")


def _check_drops(drops: Sequence[str], mods: Modules) -> None:
    seen: set[str] = set()
    for name in drops:
        if not isinstance(name, str):
            raise PlanError(f"the plan drops the layer {name!r}, which is not a name; {_REPLAN}")
        parent, _, key = name.rpartition(".")
        box = mods.get(parent)
        if not isinstance(box, (nn.ModuleList, nn.Sequential)):
            raise PlanError(f"the plan drops '{name}', but '{parent}' is no ModuleList or Sequential of the "
                            f"model; {_REPLAN}")
        if key not in box._modules:
            raise PlanError(f"the plan drops '{name}', but '{parent}' has no layer '{key}'; {_REPLAN}")
        if name in seen:
            raise PlanError(f"the plan drops '{name}' twice; {_REPLAN}")
        seen.add(name)
