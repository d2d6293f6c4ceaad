"""The public entry points: plan, apply, shrink."""

from __future__ import annotations

import functools
import gc
import math
import warnings
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from .analysis import Analysis, analyze
from .compensate import compensate as _compensate
from .criteria import Criterion, get_criterion, layer_rms
from . import _walks
from .errors import PlanError, SurgeryError
from .graph.cost import METRICS
from .graph.trace import count_known, eval_mode, run_model, shapes_of
from .latency import rounding
from .plan import Plan
from .planner import build_plan, solve
from .surgery import apply
from .verify import count_params, measure

__all__ = ["plan", "shrink", "apply"]


def _check(model: Any, target: Any, metric: str, round_to: Any, runtime: Any = None) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise TypeError(f"target must be a number in (0, 1], got {target!r}")
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1] (the fraction of the cost to keep), got {target}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {list(METRICS)}")
    if not rounding.is_valid(round_to):
        raise ValueError(f"round_to must be a positive integer, 'auto' or None, got {round_to!r}")
    if metric == "latency" or runtime is not None:
        from .latency import check_runtime

        check_runtime(runtime, metric)


def _gc_paused(fn):
    """Run ``fn`` with Python's cyclic garbage collector paused (and restored after).

    Tracing and planning allocate millions of small objects while the model itself stays alive,
    so the collector keeps walking the whole heap for nothing: on a 2000-layer model that was a
    third of the time. Cycles made meanwhile are collected once the collector runs again.
    """
    @functools.wraps(fn)
    def run(*args, **kwargs):
        was = gc.isenabled()
        gc.disable()
        try:
            with _walks.shared():  # and each model's module tree walked once (see surgeon._walks)
                return fn(*args, **kwargs)
        finally:
            if was:
                gc.enable()
    return run


def _check_min_keep(min_keep: Any) -> None:
    ok = (isinstance(min_keep, float) and 0 <= min_keep < 1) or \
        (isinstance(min_keep, int) and not isinstance(min_keep, bool) and min_keep >= 1)
    if not ok:
        raise ValueError(f"min_keep must be a fraction in [0, 1) or a unit count >= 1, got {min_keep!r}")


@_gc_paused
def plan(model: nn.Module, example_input: Any, target: float = 0.5, *, metric: str = "flops",
         criterion: str | Criterion = "l2", round_to: int | str | None = "auto",
         ignore: Iterable = (), min_keep: int | float = 0.1, uniform: bool | None = None,
         layers: bool = False, analysis: Analysis | None = None, data: Iterable | None = None,
         loss_fn: Callable | None = None, runtime: str | None = None) -> Plan:
    """Decide what to remove so that ``target`` of the cost remains; the model is not touched.

    ``data`` (an iterable of batches) and ``loss_fn(output, target)`` feed the data-aware
    criteria (``"taylor"``, ``"fisher"``, ``"activation"``); see :func:`shrink`.

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3))
    >>> p = surgeon.plan(net, torch.randn(1, 3, 16, 16), target=0.5)
    >>> round(p.ratio, 2)
    0.5
    """
    _check(model, target, metric, round_to, runtime)
    _check_min_keep(min_keep)
    crit = get_criterion(criterion, data=data, loss_fn=loss_fn)
    a = analysis or analyze(model, example_input, ignore, uniform, layers)
    metric, round_to = _for_runtime(a, example_input, metric, round_to, runtime)
    return _plan(a, crit, _scores(crit, model, a), float(target), metric, round_to, min_keep, runtime)


def _scores(crit: Criterion, model: nn.Module, a: Analysis) -> list:
    """The criterion's scores; layer units it cannot score (no channel tensors of their own) get
    the RMS of their weights, mean-normalised within their group like every other score."""
    if getattr(crit, "per_group", False):  # a group's scores depend on it alone: skip those kept whole
        live = [gi for gi, g in enumerate(a.groups) if g.prunable]
        scores = [np.zeros(g.n_units) for g in a.groups]
        for gi, s in zip(live, crit.score(model, [a.groups[gi] for gi in live])):
            scores[gi] = s
    else:
        scores = crit.score(model, a.groups)
    for gi, g in enumerate(a.groups):
        if g.layers and not np.any(scores[gi]):
            scores[gi] = layer_rms(model, g.layers)
    return scores


def _for_runtime(a: Analysis, example_input: Any, metric: str, round_to, runtime):
    """With a runtime, its measured latency model, attached to ``a`` as "latency:<runtime>":
    the cost of metric="latency", and what units of a FLOPs or params target are ranked by."""
    if runtime is None:
        return metric, round_to
    from .latency import attach

    key = attach(a, example_input, runtime)
    return key if metric == "latency" else metric, round_to


def _plan(a: Analysis, crit: Criterion, scores, target: float, metric: str, round_to, min_keep,
          runtime: str | None = None) -> Plan:
    def keep_for(rounded):
        if runtime is None or metric.startswith("latency"):
            return solve(a, scores, metric, target, rounded, min_keep)
        from .latency import fastest  # a counted target on a named runtime: the faster of two orders

        return fastest(a, runtime, [solve(a, scores, metric, target, rounded, min_keep, f"latency:{runtime}", w,
                                          per_target=True) for w in (1.0, 0.0)])

    try:
        keep = keep_for(rounding.resolve(round_to, runtime))
    except PlanError:
        if round_to != "auto":
            raise
        keep = None  # the rounded floor is above the target: plan unrounded
    if round_to == "auto" and not metric.startswith("latency"):
        cost = a.cost(metric)  # rounding is a preference: it never costs the exact landing
        if keep is None or cost.base and abs(cost.total(keep) / cost.base - target) > rounding.AUTO_SLACK:
            round_to = None
            keep = keep_for(None)
    elif keep is None:
        round_to = None
        keep = keep_for(None)
    return build_plan(a, keep, target=target, metric=metric,
                      criterion=getattr(crit, "name", type(crit).__name__), round_to=round_to)


@_gc_paused
def shrink(model: nn.Module, example_input: Any, target: float = 0.5, *, metric: str = "flops",
           criterion: str | Criterion = "l2", round_to: int | str | None = "auto", ignore: Iterable = (),
           min_keep: int | float = 0.1, uniform: bool | None = None, layers: bool = False,
           inplace: bool = False, verify: bool = True, data: Iterable | None = None,
           loss_fn: Callable | None = None, compensate: bool = False,
           runtime: str | None = None) -> nn.Module:
    """Return a physically smaller copy of ``model`` that keeps ``target`` of its cost.

    ``metric`` is ``"flops"`` (FLOPs of one forward on ``example_input``, as
    ``torch.utils.flop_counter`` counts them) or ``"params"``. The result is checked: it runs on
    ``example_input``, its output shapes are unchanged, and its cost measured by an independent
    counter is within 0.01 of the target (when the smallest removable unit allows).

    ``round_to="auto"`` (the default) rounds widths to multiples that runtimes run fast: 16, or
    for ``runtime="ort-cpu"`` the CPU's block (16 with AVX-512, else 8), 8 for "torch-cuda";
    groups narrower than one block left whole, and no rounding where it would cost the exact
    landing (see :mod:`surgeon.latency.rounding`); an int rounds to it, None not at all. With
    ``runtime="ort-cpu"`` or ``"torch-cuda"`` the layers are timed there (cached); a FLOPs
    target then also tries removing first what runs slowest for its FLOPs there (score per
    millisecond saved per FLOP saved), times that plan against the score-only one and keeps
    the faster, so widths can move between stages (``min_keep`` bounds how far);
    ``metric="latency"`` makes ``target`` a fraction of the dense model's latency on that
    runtime (see :mod:`surgeon.latency`).

    Every group keeps at least ``min_keep`` of its units: a fraction (10% by default) or, as
    an int, a count; ``ignore`` keeps the given modules (or module names) whole.

    ``criterion`` scores the units (``"l2"`` by default; see ``surgeon.criteria``). The
    data-aware ones, ``"taylor"``, ``"fisher"`` and ``"activation"``, need ``data``: an
    iterable of batches (a DataLoader, a list), each a tensor, an ``(inputs, target)`` pair or
    a dict of keyword arguments. ``loss_fn(output, target)`` defaults to cross-entropy for
    ``(x, y)`` batches and next-token cross-entropy for dict batches with ``input_ids``. The
    model is scored in eval mode and left as it was (no ``.grad`` written).

    ``compensate=True`` re-fits the layers that read removed channels so the output moves least,
    without training and without changing any shape (see :mod:`surgeon.compensate`): a
    least-squares refit on ``data`` (calibration batches: tensors, ``(inputs, targets)`` tuples
    or dicts of keyword arguments; BatchNorms behind layers that cannot be refit get a
    per-channel fit), or without data a closed form from the kept channels.

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 3))
    >>> small = surgeon.shrink(net, torch.randn(1, 3, 32, 32), target=0.5)
    >>> small[0].out_channels < 32
    True
    """
    _check(model, target, metric, round_to, runtime)
    _check_min_keep(min_keep)
    crit = get_criterion(criterion, data=data, loss_fn=loss_fn)
    a = analyze(model, example_input, ignore, uniform, layers)
    scores = _scores(crit, model, a)
    key, round_to = _for_runtime(a, example_input, metric, round_to, runtime)
    base = a.cost(key).base  # the per-node counter uses flop_counter's own formulas
    want = float(target)
    goal = want
    best, tried = None, []
    for attempt in range(4):  # re-aim if the independent counter disagrees with the cost model
        try:
            p = _plan(a, crit, scores, goal, key, round_to, min_keep, runtime)
        except PlanError:
            if attempt == 0:
                raise  # the user's own target is out of reach
            break  # a re-aimed goal fell past the floor: keep the best landing so far
        small = apply(model, p, inplace=False)
        if not verify:
            best = (small, p)
            break
        flops = _verify_runs(a, small, example_input, p)
        if metric == "latency":  # measured end to end, interleaved with the dense model
            from .latency import LATENCY_TOL, measured_ratio, reaim

            got, tol = measured_ratio(model, small, example_input, runtime), LATENCY_TOL * want
        else:
            got, tol = (flops if metric == "flops" else count_params(small)) / base if base else 1.0, 0.004
        if best is None or abs(got - want) < best[2]:
            best = (small, p, abs(got - want))
        if abs(got - want) <= tol or want >= 1.0 or got <= 0:
            break
        tried.append((goal, got))
        goal = reaim(tried, want) if metric == "latency" else min(1.0, max(1e-6, goal * want / got))
    small = best[0]
    _check_config(a, small, uniform)
    if compensate:
        _compensate(model, small, best[1], a, data, example_input)
    if inplace:
        _copy_into(model, small)
        return model
    return small


def _check_config(a: Analysis, small: nn.Module, uniform: bool | None) -> None:
    """A Hugging Face model's config must still build it (so ``from_pretrained`` reloads it)."""
    from .hf import check_config

    problem = check_config(small)
    if problem is None:
        return
    if a.config_model is not None:
        raise SurgeryError(f"the pruned model's config does not describe it ({problem}); this is a "
                           "bug in surgeon's config fix-ups, please report it with the model")
    if uniform is False:
        warnings.warn(f"uniform=False: {type(small).__name__}.config no longer describes the pruned "
                      f"widths ({problem}), so from_pretrained cannot rebuild it; save the whole module "
                      "with torch.save(model) or keep the default uniform widths", stacklevel=3)


def _copy_into(model: nn.Module, small: nn.Module) -> None:
    """Make ``model`` become ``small`` (same classes), for ``inplace=True``."""
    model.__dict__.update(small.__dict__)


def _verify_runs(a: Analysis, small: nn.Module, example_input: Any, p: Plan) -> int:
    """Run the shrunk model once: it must work and keep the output shapes. Returns its FLOPs."""
    expected = a.traced.reference_shapes
    try:
        known = count_known(small, example_input) if a.traced.plain else None
        if known is not None:  # every op of the capture has its FLOPs known from shapes
            flops, got = known[0], shapes_of(known[1])
        else:
            flops, got = measure(small, example_input)
    except Exception as exc:  # noqa: BLE001 - reported with context below
        raise SurgeryError(_failure(small, example_input, p, exc)) from exc
    if got != expected:
        raise SurgeryError(f"the shrunk model's output shapes changed: {expected} -> {got}; "
                           f"this is a bug in a coupling rule, please report it with the model")
    return flops


def _failure(small: nn.Module, example_input: Any, p: Plan, exc: Exception) -> str:
    """Find the module that failed and the groups that touched it."""
    entered: list[str] = []
    names = {id(m): n for n, m in small.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda mod, _a: entered.append(names[id(mod)]))
             for m in small.modules()]
    try:
        with eval_mode(small), torch.no_grad():
            run_model(small, example_input)
    except Exception:  # noqa: BLE001 - we only want to know where it stopped
        pass
    finally:
        for h in hooks:
            h.remove()
    where = entered[-1] if entered else "<top level>"
    groups = [d.group for d in p.decisions if d.kept < d.units
              and any(t.startswith(where + ".") or t.rpartition(".")[0] == where for t in d.tensors)]
    return (f"the shrunk model fails to run in module '{where}' ({type(exc).__name__}: {exc}); "
            f"groups touching it: {groups or 'none directly'}. This is a bug in a coupling rule or "
            f"an attribute fix-up; pass ignore=['{where}'] to keep that module whole meanwhile")
