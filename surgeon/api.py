"""The public entry points: plan, apply, shrink. Each is a short composition of the passes:
options -> analyze -> score -> plan (-> land: apply, measure, re-aim) -> compensate."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
from torch import nn

from . import _walks
from .analysis import Analysis, analyze, capture_input
from .compensate import compensate as _compensate
from .criteria import Criterion, check_not_meta, checked_scores, get_criterion, layer_scores
from .errors import PlanError
from .landing import Landing, land
from .latency import rounding
from .options import Metric, ShrinkConfig
from .planning.plan import Plan
from .planning.planner import build_plan, solve
from .surgery import apply

__all__ = ["plan", "shrink", "apply", "shrink_landing"]


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def plan(model: nn.Module, example_input: Any, target: float = 0.5, *, metric: str = "flops",
         criterion: str | Criterion = "l2", round_to: int | str | None = "auto",
         ignore: Iterable = (), min_keep: int | float = 0.1, uniform: bool | None = None,
         layers: bool = False, analysis: Analysis | None = None, data: Iterable | None = None,
         loss_fn: Callable | None = None, runtime: str | None = None, verify: bool = False,
         weights: str | os.PathLike | None = None) -> Plan:
    """Decide what to remove so that ``target`` of the cost remains; the model is not touched.

    ``data`` (an iterable of batches) and ``loss_fn(output, target)`` feed the data-aware
    criteria (``"taylor"``, ``"fisher"``, ``"activation"``); see :func:`shrink`. With
    ``verify=True`` the plan is applied to a copy and measured by the independent counter,
    re-aimed as :func:`shrink` does, and the plan that lands closest is returned.

    ``weights`` (a Hugging Face checkpoint folder of safetensors shards) plans a model built on
    the meta device from the tensors in those files, read one at a time (criteria ``l2``,
    ``l1``, ``activation``, ``random``): the same plan, without the weights in memory (see
    :mod:`surgeon.sharded`; :func:`surgeon.apply_checkpoint` applies it shard by shard).

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3))
    >>> p = surgeon.plan(net, torch.randn(1, 3, 16, 16), target=0.5)
    >>> round(p.ratio, 2)
    0.5
    """
    _check_model(model)
    cfg = ShrinkConfig.of(target=target, metric=metric, criterion=criterion, round_to=round_to,
                          ignore=ignore, min_keep=min_keep, uniform=uniform, layers=layers, data=data,
                          loss_fn=loss_fn, runtime=runtime, verify=verify)
    example_input = capture_input(model, example_input)  # a Hugging Face model's cache off, in the call
    with _walks.shared():
        if weights is not None:  # a model on the meta device, its values in the files
            from .sharded.plan import prepare
            a, crit = prepare(model, example_input, cfg, weights, analysis)
            scores, layers_by = _scores(crit, model, a, cfg.data, example_input)
            return Planner(a, crit, tuple(scores), cfg, cfg.metric_name, layers_by)(cfg.target)
        planner = Planner.prepare(model, example_input, cfg, analysis)
        if verify:
            return land(model, example_input, cfg, planner.analysis, planner).plan
        return planner(cfg.target)


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

    ``inplace=True`` reshapes ``model`` itself and returns it: every parameter and buffer keeps
    its identity (its ``.data`` is replaced by the smaller tensor), so references held to
    submodules or tensors, hooks, and an optimizer built on ``model.parameters()`` all see the
    new shapes. It is also the call for a model that barely fits in memory: the landing's
    trial cuts are counted hollow (cut tensors hold no memory) and the model is cut once, so no
    second copy of the weights is made (except with ``compensate=True``, ``metric="latency"`` or
    where the weights' values steer what runs, which land on a copy first). Modules are never replaced, except that dropped layers (``layers=True``) leave
    their container. Optimizer *state* (momentum buffers) is not carried over: build a new
    optimizer, or reset its state, after shrinking.

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 3))
    >>> small = surgeon.shrink(net, torch.randn(1, 3, 32, 32), target=0.5)
    >>> small[0].out_channels < 32
    True
    """
    _check_model(model)
    cfg = ShrinkConfig.of(target=target, metric=metric, criterion=criterion, round_to=round_to,
                          ignore=ignore, min_keep=min_keep, uniform=uniform, layers=layers, verify=verify,
                          data=data, loss_fn=loss_fn, compensate=compensate, runtime=runtime)
    result = shrink_landing(model, example_input, cfg, inplace=inplace)
    if not inplace or result.model is model:  # landed on the model itself (trial cuts on meta)
        return result.model
    apply(model, result.plan, inplace=True)  # the user's own objects take the landed shapes and values
    if cfg.compensate:  # only a refit made the landed copy's values differ from the same slicing
        model.load_state_dict(result.model.state_dict())  # copied into the same objects: identities stay
    return model


def shrink_landing(model: nn.Module, example_input: Any, cfg: ShrinkConfig,
                   analysis: Analysis | None = None, inplace: bool = False) -> Landing:
    """The whole shrink for a validated ``cfg``: the landed copy, its plan, the analysis and what
    the independent counter measured (what the CLI reports). ``inplace=True`` lets the landing
    reshape ``model`` itself (then ``Landing.model is model``; see :func:`surgeon.landing.land`)."""
    example_input = capture_input(model, example_input)  # a Hugging Face model's cache off, in the call
    with _walks.shared():
        planner = Planner.prepare(model, example_input, cfg, analysis)
        landing = land(model, example_input, cfg, planner.analysis, planner, inplace)
    if cfg.compensate:
        _compensate(model, landing.model, landing.plan, landing.analysis, cfg.data, example_input)
    return landing


@dataclass(frozen=True)
class Planner:
    """Plans for a goal (``planner(goal) -> Plan``) from one analysis and one set of scores."""

    analysis: Analysis
    criterion: Criterion
    scores: tuple
    cfg: ShrinkConfig
    metric_key: str  # "flops", "params" or "latency:<runtime>"
    layers_by: str = ""  # how whole layers the criterion could not score were scored, for the plan

    @classmethod
    def prepare(cls, model: nn.Module, example_input: Any, cfg: ShrinkConfig,
                analysis: Analysis | None = None) -> "Planner":
        check_not_meta(model, example_input)  # shapes without values: nothing to score or run
        crit = get_criterion(cfg.criterion, data=cfg.data, loss_fn=cfg.loss_fn)
        a = analysis or analyze(model, example_input, cfg.ignore, cfg.uniform, cfg.layers)
        scores, layers_by = _scores(crit, model, a, cfg.data, example_input)
        key = cfg.metric_name
        if cfg.runtime is not None:  # its measured latency model: the cost of metric="latency",
            from .latency import attach  # and what units of a counted target are ranked by

            a, lat = attach(a, example_input, cfg.runtime_name)
            key = lat if cfg.metric is Metric.LATENCY else key
        return cls(a, crit, tuple(scores), cfg, key, layers_by)

    def __call__(self, goal: float) -> Plan:
        a, cfg, key = self.analysis, self.cfg, self.metric_key
        round_to = cfg.round_to
        try:
            keep = self._keep(rounding.resolve(round_to, cfg.runtime_name), goal)
        except PlanError:
            if round_to != "auto":
                raise
            keep = None  # the rounded floor is above the target: plan unrounded
        if round_to == "auto" and not key.startswith("latency"):
            cost = a.cost(key)  # rounding is a preference: it never costs the exact landing
            if keep is None or cost.base and abs(cost.total(keep) / cost.base - goal) > rounding.AUTO_SLACK:
                round_to, keep = None, self._keep(None, goal)
        elif keep is None:
            round_to, keep = None, self._keep(None, goal)
        name = getattr(self.criterion, "name", type(self.criterion).__name__) + self.layers_by
        return build_plan(a, keep, target=goal, metric=key, criterion=name, round_to=round_to)

    def _keep(self, rounded, goal: float) -> list[np.ndarray]:
        a, key, runtime, min_keep = self.analysis, self.metric_key, self.cfg.runtime_name, self.cfg.min_keep
        if runtime is None or key.startswith("latency"):
            return solve(a, self.scores, key, goal, rounded, min_keep)
        from .latency import fastest  # a counted target on a named runtime: the faster of two orders

        return fastest(a, runtime, [solve(a, self.scores, key, goal, rounded, min_keep, f"latency:{runtime}", w,
                                          per_target=True) for w in (1.0, 0.0)])


def _scores(crit: Criterion, model: nn.Module, a: Analysis, data: Any = None,
            example_input: Any = None) -> tuple[list, str]:
    """The criterion's scores, and how layer units it cannot score (no channel tensors of their
    own) were scored: by their Block Influence on ``data``, else on ``example_input``
    (:func:`surgeon.criteria.layer_scores`), mean-normalised within their group like every other score."""
    if getattr(crit, "per_group", False):  # a group's scores depend on it alone: skip those kept whole
        live = [gi for gi, g in enumerate(a.groups) if g.prunable]
        scores = [np.zeros(g.n_units) for g in a.groups]
        for gi, s in zip(live, checked_scores(crit, model, [a.groups[gi] for gi in live])):
            scores[gi] = s
    else:
        scores = checked_scores(crit, model, list(a.groups))
    layers_by = ""
    for gi, g in enumerate(a.groups):
        if g.layers and not np.any(scores[gi]):
            scores[gi], layers_by = layer_scores(model, list(g.layers), data, example_input)
    return scores, layers_by
