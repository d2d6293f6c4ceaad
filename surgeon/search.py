"""Searched allocation: how much of each group to keep, found by an evolutionary search.

The default planner removes units in one global order of normalised scores, so every group
thins where its own units score low; it never asks how much the *output* suffers when one group
gives up more than another. :func:`search` asks exactly that, in the spirit of EvoPress
(Sieberling et al., 2024) and DarwinLM (Tang et al., 2025): a candidate allocation is a positive
weight per group that multiplies the priorities of that group's units (the planner's
``group_weight``), so a group with weight 2 keeps more and one with weight 0.5 less; every
candidate is landed on the exact target by the planner's own bisection, applied to a copy of the
model and scored by the KL divergence between the dense and the shrunk model's outputs on
calibration batches (mean squared error for hidden-state outputs). The search is a (1 + lambda)
evolution strategy started from the default plan (all weights 1): each generation mutates the
best weights so far (Gaussian steps in log-weight on a few random groups) ``offspring`` times
and keeps the best child if it beats its parent, until the budget of evaluations or seconds is
spent. The result is a normal :class:`~surgeon.planning.plan.Plan` (its ``criterion`` ends in
``+search``) that :func:`surgeon.apply` applies; it is never worse than the default plan on the
calibration batches, since the default plan is the first candidate.

>>> import torch, surgeon
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
...                           torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> calib = [torch.randn(16, 8) for _ in range(2)]
>>> plan = surgeon.search(net, calib[0], target=0.5, data=calib, budget=6, quiet=True)
>>> round(plan.ratio, 2), plan.criterion
(0.5, 'l2+search')
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from . import _walks
from .analysis import capture_input
from .api import Planner
from .criteria._data import DataError, _to, device_of, split_batch
from .graph.trace import eval_mode, run_model
from .options import ShrinkConfig
from .planning.plan import Plan
from .planning.planner import solve
from .recover import _Bar, _view, distill_loss
from .surgery import apply_own

__all__ = ["search", "search_run", "Searched"]


@dataclass(frozen=True)
class _Weighted(Planner):
    """The default planner with one priority weight per group (the planner's ``group_weight``)."""

    weight: tuple = ()

    def _keep(self, rounded, goal: float) -> list[np.ndarray]:
        return solve(self.analysis, self.scores, self.metric_key, goal, rounded, self.cfg.min_keep,
                     group_weight=self.weight or None)


@dataclass
class Searched:
    """What :func:`search_run` found: the best plan, the default plan, their calibration scores
    (output KL to the dense model; lower is better), evaluations made and seconds spent, and the
    best score after each evaluation."""

    plan: Plan
    default_plan: Plan
    score: float
    default_score: float
    evaluations: int
    seconds: float
    weights: tuple[float, ...] = ()
    history: list[float] = field(default_factory=list)


def search(model: nn.Module, example_input: Any, target: float = 0.5, *, data: Iterable, budget: int = 64,
           seconds: float | None = None, seed: int = 0, quiet: bool = False, **options: Any) -> Plan:
    """The plan at ``target`` whose per-group allocation scores best on ``data`` (see the module
    docstring). ``budget`` caps the evaluations (each one plan, one copy, one pass over
    ``data``), ``seconds`` the wall time (whichever ends first). ``options`` are those of
    :func:`surgeon.plan` (``metric``, ``criterion``, ``round_to``, ``min_keep``, ``ignore``,
    ``uniform``, ``layers``) plus ``offspring`` (children per generation, default 4), ``sigma``
    (mutation step in log-weight, default 0.5), ``output_fn(output, inputs)`` and
    ``temperature`` (of the KL, default 1)."""
    return search_run(model, example_input, target, data=data, budget=budget, seconds=seconds, seed=seed,
                      quiet=quiet, **options).plan


_SEARCH_ONLY = ("offspring", "sigma", "output_fn", "temperature")


def search_run(model: nn.Module, example_input: Any, target: float = 0.5, *, data: Iterable, budget: int = 64,
               seconds: float | None = None, seed: int = 0, quiet: bool = False, **options: Any) -> Searched:
    """:func:`search`, returning the whole :class:`Searched` record."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget is a number of evaluations >= 1, got {budget!r}")
    own = {k: options.pop(k) for k in _SEARCH_ONLY if k in options}
    if "runtime" in options:
        raise ValueError("search() allocates counted targets (flops, params); runtime= is not supported")
    t0 = time.perf_counter()
    cfg = ShrinkConfig.of(target=target, **options)
    example_input = capture_input(model, example_input)
    with _walks.shared():
        base = Planner.prepare(model, example_input, cfg)
        scorer = _Scorer(model, data, own.get("output_fn"), own.get("temperature", 1.0))
        evo = _Evolution(base, scorer, cfg.target, np.random.default_rng(seed),
                         own.get("offspring", 4), own.get("sigma", 0.5))
        evo.run(budget, seconds, quiet)
    best = evo.best_plan
    return Searched(dataclasses.replace(best, criterion=best.criterion + "+search"), evo.default_plan,
                    evo.best_score, evo.default_score, evo.evaluations, time.perf_counter() - t0,
                    tuple(float(w) for w in np.exp(evo.best_logw)), evo.history)


class _Scorer:
    """Output divergence of a shrunk copy from the dense model on fixed calibration batches."""

    def __init__(self, model: nn.Module, data: Iterable, output_fn: Callable | None, temperature: float):
        if data is None or isinstance(data, (torch.Tensor, dict)) or not isinstance(data, Iterable):
            raise DataError("search() scores candidates on calibration batches: pass data=[batch, ...] "
                            "(tensors, (inputs, target) pairs or dicts of keyword arguments)")
        self.inputs = [_to(split_batch(b, i).inputs, device_of(model)) for i, b in enumerate(data)]
        if not self.inputs:
            raise DataError("data for search() yielded no batches; pass at least one calibration batch")
        self.output_fn, self.temperature = output_fn, temperature
        self.dense = [v.detach() for v, _ in self._views(model)]
        self.mode = "mse" if self._views(model)[0][1] == "hidden" else "kl"

    @torch.no_grad()
    def _views(self, model: nn.Module) -> list[tuple[torch.Tensor, str]]:
        with eval_mode(model):
            return [_view(run_model(model, x), self.output_fn, x) for x in self.inputs]

    @torch.no_grad()
    def __call__(self, small: nn.Module) -> float:
        views = self._views(small)
        losses = [distill_loss(v, d, self.mode, self.temperature) for (v, _), d in zip(views, self.dense)]
        return float(torch.stack(losses).mean())


class _Evolution:
    """(1 + lambda) evolution over log-weights per group, from the default plan (all zeros)."""

    def __init__(self, base: Planner, scorer: _Scorer, target: float, rng: np.random.Generator,
                 offspring: int, sigma: float):
        self.base, self.scorer, self.target, self.rng = base, scorer, target, rng
        self.offspring, self.sigma = max(1, int(offspring)), float(sigma)
        groups = base.analysis.groups
        self.live = np.array([gi for gi, g in enumerate(groups) if g.prunable and g.n_units > 1], dtype=np.int64)
        self.n_groups = len(groups)
        self.seen: dict[tuple, float] = {}
        self.evaluations, self.history = 0, []
        self.default_plan, self.default_score = self._plan_and_score(np.zeros(self.n_groups))
        self.best_logw, self.best_plan, self.best_score = np.zeros(self.n_groups), self.default_plan, self.default_score

    def _plan(self, logw: np.ndarray) -> Plan:
        fields = {f.name: getattr(self.base, f.name) for f in dataclasses.fields(Planner)}
        return _Weighted(**fields, weight=tuple(np.exp(logw).tolist()))(self.target)

    def _plan_and_score(self, logw: np.ndarray) -> tuple[Plan, float]:
        plan = self._plan(logw)
        key = tuple(d.kept for d in plan.decisions)
        if key not in self.seen:  # a new allocation (different weights often land on the same one)
            self.seen[key] = self.scorer(apply_own(self.base.analysis.model, plan))
            self.evaluations += 1
            best = min(self.seen[key], self.history[-1]) if self.history else self.seen[key]
            self.history.append(best)
        return plan, self.seen[key]

    def _mutate(self, logw: np.ndarray) -> np.ndarray:
        child = logw.copy()
        if not len(self.live):
            return child
        k = min(len(self.live), 1 + int(self.rng.poisson(1.0)))
        chosen = self.rng.choice(self.live, size=k, replace=False)
        child[chosen] += self.rng.normal(0.0, self.sigma, size=k)
        return np.clip(child, -4.0, 4.0)  # weights within e**±4: no group is pinned for good

    def run(self, budget: int, seconds: float | None, quiet: bool) -> None:
        t0 = time.perf_counter()
        bar = _Bar(budget, min(self.evaluations, budget), quiet, desc="search", unit="eval", label="best kl")
        tries, stale = 0, 0  # stale: tries in a row that found no allocation not seen before
        try:
            while self.evaluations < budget and stale < 64 and len(self.live):
                if seconds is not None and time.perf_counter() - t0 > seconds:
                    break
                children = []
                for _ in range(self.offspring):
                    if self.evaluations >= budget:
                        break
                    before = self.evaluations
                    logw = self._mutate(self.best_logw)
                    plan, score = self._plan_and_score(logw)
                    tries += 1
                    children.append((score, tries, logw, plan))
                    stale = 0 if self.evaluations > before else stale + 1
                    if not stale:
                        bar.update(self.best_score)
                if not children:
                    break
                score, _, logw, plan = min(children, key=lambda c: (c[0], c[1]))
                if score < self.best_score and math.isfinite(score):
                    self.best_logw, self.best_plan, self.best_score = logw, plan, score
        finally:
            bar.close()
