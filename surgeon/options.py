"""Typed options: what ``shrink``, ``plan`` and the CLI accept, validated once at the boundary.

Strings stay accepted (``metric="flops"``, ``runtime="ort-cpu"``) and are converted here, once,
to the enums below; everything past this point reads a :class:`ShrinkConfig`.

>>> cfg = ShrinkConfig.of(target=0.5, metric="params", round_to=8)
>>> cfg.metric is Metric.PARAMS, cfg.round_to
(True, 8)
"""

from __future__ import annotations

import difflib
import enum
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

__all__ = ["Metric", "Runtime", "ShrinkConfig"]


class Metric(str, enum.Enum):
    """What ``target`` is a fraction of."""

    FLOPS = "flops"
    PARAMS = "params"
    LATENCY = "latency"  # measured on a named runtime


class Runtime(str, enum.Enum):
    """Where latency is measured (``runtime=``)."""

    ORT_CPU = "ort-cpu"
    TORCH_CUDA = "torch-cuda"


def _enum(kind: type[enum.Enum], value: Any, arg: str):
    if isinstance(value, kind):
        return value
    names = [m.value for m in kind]
    if value in names:
        return kind(value)
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {arg} {value!r}; use one of {names}{hint}")


def _fraction_or_count(min_keep: Any) -> int | float:
    ok = (isinstance(min_keep, float) and 0 <= min_keep < 1) or \
        (isinstance(min_keep, int) and not isinstance(min_keep, bool) and min_keep >= 1)
    if not ok:
        raise ValueError(f"min_keep must be a fraction in [0, 1) or a unit count >= 1, got {min_keep!r}")
    return min_keep


def _target(target: Any) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise TypeError(f"target must be a number in (0, 1], got {target!r}")
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1] (the fraction of the cost to keep), got {target}")
    return float(target)


def _round_to(round_to: Any) -> int | str | None:
    if round_to is None or round_to == "auto" or (
            isinstance(round_to, int) and not isinstance(round_to, bool) and round_to >= 1):
        return round_to
    raise ValueError(f"round_to must be a positive integer, 'auto' or None, got {round_to!r}")


@dataclass(frozen=True)
class ShrinkConfig:
    """Every option of a shrink, validated. Build one with :meth:`of` (which converts strings)."""

    target: float = 0.5
    metric: Metric = Metric.FLOPS
    criterion: Any = "l2"  # a name or a Criterion object
    round_to: int | str | None = "auto"
    ignore: tuple = ()
    min_keep: int | float = 0.1
    uniform: bool | None = None
    layers: bool = False
    runtime: Runtime | None = None
    compensate: bool = False
    verify: bool = True
    data: Iterable | None = field(default=None, repr=False, compare=False)
    loss_fn: Callable | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, **options: Any) -> "ShrinkConfig":
        """Validate and convert the keyword arguments of ``shrink``/``plan``; unknown names are
        a TypeError, bad values a ValueError or TypeError that says what to pass."""
        names = {f.name for f in cls.__dataclass_fields__.values()}
        unknown = sorted(set(options) - names)
        if unknown:
            close = difflib.get_close_matches(unknown[0], names, n=1)
            raise TypeError(f"unknown option {unknown[0]!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        cfg = cls(**options)
        metric = _enum(Metric, cfg.metric, "metric")
        runtime = None if cfg.runtime is None else _enum(Runtime, cfg.runtime, "runtime")
        if metric is Metric.LATENCY or runtime is not None:
            from .latency import check_runtime  # also: is a GPU there for torch-cuda

            check_runtime(None if runtime is None else runtime.value, metric.value)
        return replace(cfg, target=_target(cfg.target), metric=metric, runtime=runtime,
                       round_to=_round_to(cfg.round_to), min_keep=_fraction_or_count(cfg.min_keep),
                       ignore=tuple(cfg.ignore))

    @property
    def metric_name(self) -> str:
        return self.metric.value

    @property
    def runtime_name(self) -> str | None:
        return None if self.runtime is None else self.runtime.value
