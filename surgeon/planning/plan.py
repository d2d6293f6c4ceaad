"""A Plan: what to cut, as a frozen, JSON-serialisable value.

A plan names tensors by their qualified names and lists the indices to keep along each sliced
dimension, plus the module attributes to rewrite. Applying it needs no tracing, so it can be
saved, diffed, reviewed and replayed on another copy of the same architecture.

A plan read from JSON is untrusted: :meth:`Plan.from_dict` checks every field's type and every
keep run against its slice's size *before* expanding a run into indices, and
:func:`surgeon.apply` checks the plan against the model (and its :func:`fingerprint_of`) before
touching it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from torch import nn

from .. import _atomic, _walks
from ..errors import PlanError
from ..slicing.edits import AttrUpdate, Slice

__all__ = ["Plan", "Slice", "AttrUpdate", "Decision", "fingerprint_of"]

FORMAT = 1
# most indices one plan may keep, all slices together (halving every width of a 405B-parameter
# Llama keeps ~22M): a bound on what reading a plan file can allocate, whatever sizes it claims
MAX_KEPT = 1 << 25


def _runs(idx: tuple[int, ...]) -> list[list[int]]:
    """[[start, stop], ...] runs of consecutive indices (compact JSON)."""
    runs: list[list[int]] = []
    for i in idx:
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


def _unruns(runs: np.ndarray) -> tuple[int, ...]:
    """The indices of validated, sorted runs, an ``(n, 2)`` array (a run of a million is one arange)."""
    starts, stops = runs[:, 0], runs[:, 1]
    lengths = stops - starts
    ends = np.cumsum(lengths)
    return tuple((np.arange(ends[-1]) + np.repeat(starts - ends + lengths, lengths)).tolist())


def fingerprint_of(model: nn.Module, modules: Mapping[str, nn.Module] | None = None) -> str:
    """A hash of ``model``'s class name and the name, kind and shape of every parameter and buffer
    (tied ones under each name); values, dtypes and devices do not count. ``modules`` is the
    model's ``named_modules(remove_duplicate=False)``, if the caller has it.

    >>> import torch
    >>> a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    >>> fingerprint_of(a) == fingerprint_of(b) != fingerprint_of(torch.nn.Linear(4, 3))
    True
    """
    if modules is None:  # within one shrink the model's structure does not change: hashed once
        return _walks.remember(model, "fingerprint", lambda: fingerprint_of(model, _walks.modules(model)))
    mods = modules
    rows = []
    for name, mod in mods.items():
        for kind, store in (("p", mod._parameters), ("b", mod._buffers)):
            if store:
                rows.extend((name, leaf, kind, tuple(t.shape)) for leaf, t in store.items() if t is not None)
    rows.sort()
    return hashlib.blake2b(repr((type(model).__name__, rows)).encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Decision:
    """What the plan does to one group."""

    group: int
    kind: str
    units: int
    kept: int
    tensors: tuple[str, ...]
    reason: str | None = None  # why nothing was removed, if the group could not be pruned


@dataclass(frozen=True)
class Plan:
    """Frozen description of a structural pruning; see :func:`surgeon.apply`."""

    model: str
    target: float
    metric: str
    criterion: str
    round_to: int | str | None
    cost_before: float
    cost_after: float  # the planner's estimate, in ``metric`` units
    slices: tuple[Slice, ...] = ()
    attrs: tuple[AttrUpdate, ...] = ()
    decisions: tuple[Decision, ...] = ()
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # original shapes of sliced tensors
    extra: tuple[tuple[str, Any], ...] = field(default=())
    config: tuple[AttrUpdate, ...] = ()  # fields of a Hugging Face config ("config", field, old, new)
    drops: tuple[str, ...] = ()  # whole layers removed from their ModuleList / Sequential
    fingerprint: str | None = None  # fingerprint_of(the model planned); None: not checked

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["format"] = FORMAT
        d["slices"] = [dict(tensor=s.tensor, dim=s.dim, size=s.size, keep=_runs(s.keep)) for s in self.slices]
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Plan":
        """The plan ``d`` (a :meth:`to_dict`) describes; every field is checked, and every keep
        run against its slice's size, before any run is expanded. Raises :class:`PlanError`
        naming the field, the tensor and what is wrong.

        >>> Plan.from_dict({"format": 1, "model": "Net", "target": 0.5, "metric": "flops",
        ...                 "criterion": "l1", "round_to": None, "cost_before": 1, "cost_after": 1,
        ...                 "slices": [{"tensor": "0.weight", "dim": 0, "size": 8, "keep": [[0, 9]]}]})
        Traceback (most recent call last):
        ...
        surgeon.errors.PlanError: plan field 'slices[0].keep[0]' (tensor '0.weight') is [0, 9], outside ...
        """
        if not isinstance(d, Mapping):
            raise PlanError(f"a plan must be a JSON object, got {_what(d)}")
        if d.get("format") != FORMAT:
            raise PlanError(f"unsupported plan format {_what(d.get('format'))}; this surgeon reads format {FORMAT}")
        return cls(**_read_fields(d))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Plan":
        try:
            d = json.loads(text)
        except (ValueError, TypeError, RecursionError) as exc:
            raise PlanError(f"a plan must be JSON text ({type(exc).__name__}: {str(exc)[:200]})") from exc
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON, atomically (the file appears whole or not at all)."""
        _atomic.write_text(path, self.to_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_json(Path(path).read_text())

    # -- reading ---------------------------------------------------------------------------------
    @property
    def ratio(self) -> float:
        return self.cost_after / self.cost_before if self.cost_before else 1.0

    def summary(self) -> str:
        """Cost before and after and one line per group that changes."""
        lines = [
            f"Plan for {self.model}: {self.metric} {self.cost_before:,.0f} -> {self.cost_after:,.0f} "
            f"({self.ratio:.3f} of the original; target {self.target}), criterion {self.criterion}"
            + (f", round_to {self.round_to}" if self.round_to else ""),
        ]
        extra = dict(self.extra)
        for key in ("flops_before", "flops_after", "params_before", "params_after"):
            if key in extra:
                lines.append(f"  {key}: {extra[key]:,.0f}")
        if "captured_parts" in extra:  # a partial capture (surgeon.graph.partial)
            lines.append(f"  partial capture: {extra['captured_parts']} captured; the code between them "
                         f"is opaque (tensors crossing it keep their widths); opaque modules with "
                         f"parameters: {extra['opaque']}")
        if "workload_note" in extra:  # set by the landing of a partial capture (see surgeon.landing)
            lines.append(f"  WORKLOAD: {extra['workload_note']}")
        if "off_target" in extra:  # set by surgeon.offtarget when the landing missed the target
            lines.append(f"  OFF TARGET: {extra['off_target']}")
        changed = [d for d in self.decisions if d.kept < d.units]
        kept_whole = len(self.decisions) - len(changed)
        lines.append(f"  {len(changed)} groups shrink, {kept_whole} kept whole")
        for d in changed:
            names = ", ".join(d.tensors[:3]) + (" ..." if len(d.tensors) > 3 else "")
            lines.append(f"  group {d.group:>4} {d.kind:<7} {d.units:>5} -> {d.kept:<5} {names}")
        if self.drops:  # whole layers hold no tensor of their own group: name them
            lines.append(f"  layers dropped: {', '.join(self.drops)}")
        return "\n".join(lines)

    def report(self) -> str:
        """The :meth:`summary`, which also says when the landing missed the target and why."""
        return self.summary()


# -- reading an untrusted plan: types first, then runs against sizes, then expansion -----------------


def _bad(where: str, problem: str, tensor: str | None = None) -> PlanError:
    on = f" (tensor '{tensor[:200]}')" if tensor is not None else ""
    return PlanError(f"plan field '{where}'{on} {problem}; the plan is damaged or was edited by hand: "
                     "build it again with surgeon.plan")


def _what(v: Any) -> str:
    text = repr(v)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(v).__name__})"


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _int(v: Any, where: str, low: int | None = None, tensor: str | None = None) -> int:
    if not _is_int(v):
        raise _bad(where, f"must be an integer, got {_what(v)}", tensor)
    if low is not None and v < low:
        raise _bad(where, f"must be at least {low}, got {v}", tensor)
    return int(v)


def _float(v: Any, where: str) -> float:
    try:
        x = float(v) if _is_int(v) or isinstance(v, float) else math.nan
    except OverflowError:  # an int past float's range
        x = math.inf
    if not math.isfinite(x):
        raise _bad(where, f"must be a finite number, got {_what(v)}")
    return x


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise _bad(where, f"must be a string, got {_what(v)}")
    return v


def _opt_str(v: Any, where: str) -> str | None:
    return None if v is None else _str(v, where)


def _list(v: Any, where: str, tensor: str | None = None) -> list | tuple:
    if not isinstance(v, (list, tuple)):
        raise _bad(where, f"must be a list, got {_what(v)}", tensor)
    return v


def _obj(v: Any, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> Mapping:
    """``v`` as a mapping with every one of ``keys``, maybe some of ``optional``, nothing else."""
    if not isinstance(v, Mapping):
        raise _bad(where, f"must be an object, got {_what(v)}")
    for k in keys:
        if k not in v:
            raise _bad(where, f"lacks the key '{k}'")
    for k in v:
        if k not in keys and k not in optional:
            raise _bad(where, f"has an unknown key {_what(k)}")
    return v


def _round_to(v: Any, where: str) -> int | str | None:
    if v is None or v == "auto":
        return v
    return _int(v, where, 1)


def _width(v: Any, where: str) -> int | list[int]:
    """A width attribute's value: an int, or a list of ints (a tuple attribute)."""
    if isinstance(v, (list, tuple)):
        return [_int(x, f"{where}[{i}]") for i, x in enumerate(v)]
    return _int(v, where)


def _config_value(v: Any, where: str) -> int | float | list | None:
    """A config field's value: an int (None: a field HF derives), a float ratio of widths
    (``mlp_ratio``), or a list of plain values."""
    if v is None:
        return None
    if type(v) is float:
        if not math.isfinite(v) or v <= 0:
            raise _bad(where, f"must be a positive ratio, got {v!r}")
        return v
    if isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            if x is not None and not isinstance(x, (str, int, float)):
                raise _bad(f"{where}[{i}]", f"must be a string, number or null, got {_what(x)}")
        return list(v)
    return _int(v, where)


def _updates(value: Callable[[Any, str], Any]) -> Callable[[Any, str], tuple[AttrUpdate, ...]]:
    def read(raw: Any, where: str) -> tuple[AttrUpdate, ...]:
        out = []
        for i, a in enumerate(_list(raw, where)):
            at = f"{where}[{i}]"
            a = _obj(a, at, ("module", "attr", "old", "new"))
            out.append(AttrUpdate(_str(a["module"], f"{at}.module"), _str(a["attr"], f"{at}.attr"),
                                  value(a["old"], f"{at}.old"), value(a["new"], f"{at}.new")))
        return tuple(out)
    return read


def _decisions(raw: Any, where: str) -> tuple[Decision, ...]:
    out = []
    for i, x in enumerate(_list(raw, where)):
        at = f"{where}[{i}]"
        x = _obj(x, at, ("group", "kind", "units", "kept", "tensors"), ("reason",))
        out.append(Decision(_int(x["group"], f"{at}.group", 0), _str(x["kind"], f"{at}.kind"),
                            _int(x["units"], f"{at}.units", 0), _int(x["kept"], f"{at}.kept", 0),
                            tuple(_str(t, f"{at}.tensors[{j}]") for j, t in enumerate(_list(x["tensors"], f"{at}.tensors"))),
                            _opt_str(x.get("reason"), f"{at}.reason")))
    return tuple(out)


def _shapes(raw: Any, where: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    out: dict[str, tuple[int, ...]] = {}
    for i, pair in enumerate(_list(raw, where)):
        at = f"{where}[{i}]"
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise _bad(at, f"must be a pair [tensor name, shape], got {_what(pair)}")
        name = _str(pair[0], f"{at}[0]")
        if name in out:
            raise _bad(at, "lists a tensor a second time", name)
        out[name] = tuple(_int(n, f"{at}[1][{j}]", 0, name) for j, n in enumerate(_list(pair[1], f"{at}[1]", name)))
    return tuple(out.items())


def _extra(raw: Any, where: str) -> tuple[tuple[str, Any], ...]:
    out = []
    for i, pair in enumerate(_list(raw, where)):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise _bad(f"{where}[{i}]", f"must be a pair [key, value], got {_what(pair)}")
        out.append((_str(pair[0], f"{where}[{i}][0]"), pair[1]))
    return tuple(out)


def _names(raw: Any, where: str) -> tuple[str, ...]:
    return tuple(_str(n, f"{where}[{i}]") for i, n in enumerate(_list(raw, where)))


_READERS: dict[str, Callable[[Any, str], Any]] = {
    "model": _str, "target": _float, "metric": _str, "criterion": _str, "round_to": _round_to,
    "cost_before": _float, "cost_after": _float, "attrs": _updates(_width), "decisions": _decisions,
    "shapes": _shapes, "extra": _extra, "config": _updates(_config_value), "drops": _names,
    "fingerprint": _opt_str,
}


def _read_fields(d: Mapping) -> dict[str, Any]:
    """Plan's keyword arguments from ``d``, every field checked; slices last, against the shapes."""
    known = {f.name: f for f in fields(Plan)}
    for key in d:
        if key != "format" and key not in known:
            raise _bad(str(key)[:60], "is not a field of a plan")
    for name, f in known.items():
        if name not in d and f.default is MISSING and f.default_factory is MISSING:
            raise _bad(name, "is missing")
    out = {name: read(d[name], name) for name, read in _READERS.items() if name in d}
    if "slices" in d:
        out["slices"] = _slices(d["slices"], "slices", dict(out.get("shapes", ())))
    return out


def _slices(raw: Any, where: str, shapes: dict[str, tuple[int, ...]]) -> tuple[Slice, ...]:
    """Every slice checked, and the indices they keep counted, before any run is expanded."""
    heads = [_slice_head(s, f"{where}[{i}]", shapes) for i, s in enumerate(_list(raw, where))]
    if not heads:
        return ()
    runs, bounds = _checked_runs(heads, where)
    total = int((runs[:, 1] - runs[:, 0]).sum())
    if total > MAX_KEPT:
        raise _bad(where, f"keeps {total:,} indices in all, more than the {MAX_KEPT:,} a plan may hold")
    keeps: dict[bytes, tuple[int, ...]] = {}  # the members of a group keep one list: expand it once
    out = []
    for (tensor, dim, size, _), a, b in zip(heads, bounds[:-1], bounds[1:]):
        key = runs[a:b].tobytes()
        if key not in keeps:
            keeps[key] = _unruns(runs[a:b])
        out.append(Slice(tensor, dim, size, keeps[key]))
    return tuple(out)


def _slice_head(s: Any, where: str, shapes: dict[str, tuple[int, ...]]) -> tuple[str, int, int, Any]:
    """A slice's tensor, dim and size, checked (against the plan's shapes, if it lists the
    tensor), and its keep runs as read."""
    s = _obj(s, where, ("tensor", "dim", "size", "keep"))
    tensor = _str(s["tensor"], f"{where}.tensor")
    dim = _int(s["dim"], f"{where}.dim", 0, tensor)
    size = _int(s["size"], f"{where}.size", 1, tensor)
    if size >= 1 << 62:
        raise _bad(f"{where}.size", f"is {size}, larger than any tensor", tensor)
    shape = shapes.get(tensor)
    if shape is not None and dim >= len(shape):
        raise _bad(f"{where}.dim", f"is {dim}, but the plan's shapes give the tensor {len(shape)} dims", tensor)
    if shape is not None and size != shape[dim]:
        raise _bad(f"{where}.size", f"is {size}, but the plan's shapes give dim {dim} size {shape[dim]}", tensor)
    return tensor, dim, size, _list(s["keep"], f"{where}.keep", tensor)


def _checked_runs(heads: list[tuple[str, int, int, Any]], where: str) -> tuple[np.ndarray, list[int]]:
    """Every slice's keep runs as one ``(n, 2)`` int64 array, and where each slice's runs start
    and end in it. Each run lies inside ``[0, size]`` of its slice, the runs of a slice are sorted
    and disjoint (so they keep at most ``size`` indices), and no slice keeps nothing. Checked
    in one numpy pass over the whole plan; if it fails, the slices are walked to say where."""
    lists = [h[3] for h in heads]
    counts = list(map(len, lists))
    bounds = [0, *itertools.accumulate(counts)]
    flat = list(itertools.chain.from_iterable(lists))
    ok = all(counts) and set(map(type, flat)) <= {list, tuple} and set(map(len, flat)) == {2}
    values = list(itertools.chain.from_iterable(flat)) if ok else []
    if ok and (set(map(type, values)) <= {int} or all(map(_is_int, values))):
        try:
            runs = np.fromiter(values, dtype=np.int64, count=len(values)).reshape(-1, 2)
        except OverflowError:  # past int64, so past every size: reported below
            runs = None
        if runs is not None:
            starts, stops = runs[:, 0], runs[:, 1]
            prev = np.zeros(len(runs), dtype=np.int64)
            prev[1:] = stops[:-1]
            prev[bounds[:-1]] = 0  # a slice's first run may start at 0
            sizes = np.repeat(np.array([h[2] for h in heads], dtype=np.int64), counts)
            if (starts >= prev).all() and (stops > starts).all() and (stops <= sizes).all():
                return runs, bounds
    for i, (tensor, _, size, runs_of) in enumerate(heads):
        _explain_runs(runs_of, f"{where}[{i}].keep", size, tensor)
    raise _bad(where, "holds keep runs that are not pairs of integers")  # not reached: _explain_runs raised


def _explain_runs(runs: list | tuple, where: str, size: int, tensor: str) -> None:
    """Raise a PlanError naming the first run of ``runs`` that is malformed or out of place."""
    prev = 0
    for i, r in enumerate(runs):
        at = f"{where}[{i}]"
        if not (isinstance(r, (list, tuple)) and len(r) == 2 and _is_int(r[0]) and _is_int(r[1])):
            raise _bad(at, f"must be a run [start, stop] of two integers, got {_what(r)}", tensor)
        a, b = int(r[0]), int(r[1])
        if not 0 <= a < b <= size:
            raise _bad(at, f"is [{a}, {b}], outside 0 <= start < stop <= {size} (the size of that dim)", tensor)
        if a < prev:
            raise _bad(at, f"starts at {a}, before the previous run ends at {prev}: runs must be sorted "
                           "and must not overlap", tensor)
        prev = b
    if not runs:
        raise _bad(where, "is empty: a slice keeps at least one index", tensor)
