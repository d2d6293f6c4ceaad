"""The one landing loop: plan, apply, measure with the independent counter, re-aim.

The planner's cost model is exact for what it models, but the independent counter
(``torch.utils.flop_counter``, ``parameters()``, or the measured latency) has the last word:
while the two disagree by more than the tolerance, the goal is re-aimed and the plan made
again (at most four times), and the landing closest to the target is kept; one more than 0.01
off the target warns (:mod:`surgeon.offtarget`). ``shrink``,
``plan(..., verify=True)`` and the CLI all land through :func:`land`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .analysis import Analysis
from .errors import OffTargetWarning, PlanError, SurgeryError
from .graph.trace import count_known, eval_mode, run_model, shapes_of
from .offtarget import OFF_TARGET, _caller_level, check_landing
from .options import Metric, ShrinkConfig
from .planning.plan import Plan
from .slicing.hollow import Hollow
from .surgery import apply_own
from .verify import count_params, measure

__all__ = ["Landing", "land"]

ATTEMPTS = 4
TOLERANCE = 0.004  # of a counted target: well inside the 0.01 the API promises


@dataclass(frozen=True)
class Landing:
    """A plan, the shrunk copy it made, and what the independent counter measured of it."""

    model: nn.Module
    plan: Plan
    analysis: Analysis
    measured: float  # the cost ratio the independent counter (or the runtime) measured
    flops: int | None  # FLOPs of the shrunk model, when verified


def land(model: nn.Module, example_input: Any, cfg: ShrinkConfig, a: Analysis, plan_for,
         inplace: bool = False) -> Landing:
    """Plan with ``plan_for(goal)``, apply, measure and re-aim until the measured ratio is within
    the tolerance of ``cfg.target``; the best landing wins. ``a`` is the model's analysis.

    ``inplace=True`` lands ``model`` itself: where the weights' values do not steer what runs,
    the trial cuts are hollow (made on meta, run with the cut tensors holding no memory), and only
    the landed plan is applied to ``model``, which is then run and counted for real; so no second
    copy of the weights is ever made (``Landing.model is model``). Otherwise it lands a copy as
    without ``inplace``, and the caller reshapes ``model`` from it."""
    if inplace:
        hollow = _hollow_trial(model, example_input, cfg, a)
        if hollow is not None:
            return _land_inplace(model, example_input, cfg, a, plan_for, hollow)
    return _land(model, example_input, cfg, a, plan_for)


def _hollow_trial(model: nn.Module, example_input: Any, cfg: ShrinkConfig, a: Analysis) -> Hollow | None:
    """Trial cuts of ``model`` that hold no memory (see :mod:`surgeon.slicing.hollow`), if a
    counted target can be landed on them: nothing needs the weights' values (no refit, no
    timing), and the model with every tensor hollow counts the FLOPs and shapes it has for real."""
    if cfg.compensate or cfg.metric is Metric.LATENCY or not cfg.verify:
        return None
    try:
        hollow = Hollow(model)
        flops, got = measure(hollow.all_hollow(), example_input)
    except Exception:  # noqa: BLE001 - it needs the values after all: land a real copy instead
        return None
    if flops != a.traced.total_flops() or not a.traced.same_output(got):
        return None
    return hollow


def _land_inplace(model: nn.Module, example_input: Any, cfg: ShrinkConfig, a: Analysis, plan_for,
                  hollow: Hollow) -> Landing:
    trial = _land(model, example_input, cfg, a, plan_for, cut=hollow.cut)
    apply_own(model, trial.plan, inplace=True)  # the user's own objects take the landed shapes
    flops, _ = _verify_runs(a, model, example_input, trial.plan)  # for real, on the reshaped model
    if flops != trial.flops:
        raise SurgeryError(f"the shrunk model counts {flops} FLOPs for real and {trial.flops} in its "
                           "trial cut; this is a bug in surgeon, please report it with the model")
    return Landing(model, trial.plan, a, trial.measured, flops)


def _land(model: nn.Module, example_input: Any, cfg: ShrinkConfig, a: Analysis, plan_for, cut=None) -> Landing:
    cut = cut or (lambda p: apply_own(model, p))  # the plans were made from this model just now
    from .latency import LATENCY_TOL, measured_ratio, reaim

    want, goal = cfg.target, cfg.target
    base = a.cost(plan_for.metric_key).base
    best: tuple | None = None
    tried: list[tuple[float, float]] = []
    for attempt in range(ATTEMPTS):
        try:
            p = plan_for(goal)
        except PlanError:
            if attempt == 0:
                raise  # the user's own target is out of reach
            break  # a re-aimed goal fell past the floor: keep the best landing so far
        if best is not None:  # one shrunk copy at a time beside the model: the best is re-made if needed
            best = best[:4] + (None,)
        small = cut(p)
        if not cfg.verify:
            check_config(a, small, cfg.uniform)
            return Landing(small, check_landing(a, p, cfg, p.ratio), a, p.ratio, None)
        flops, own = _verify_runs(a, small, example_input, p)
        if cfg.metric is Metric.LATENCY:  # measured end to end, interleaved with the dense model
            got, tol = measured_ratio(model, small, example_input, cfg.runtime_name), LATENCY_TOL * want
        else:
            cost = flops if cfg.metric is Metric.FLOPS else count_params(small)
            got, tol = (cost / base if base else 1.0), TOLERANCE
        if best is None or abs(got - want) < abs(best[1] - want):
            best = (p, got, flops, own, small)
        del small
        if abs(got - want) <= tol or want >= 1.0 or got <= 0:
            break
        tried.append((goal, got))
        goal = reaim(tried, want) if cfg.metric is Metric.LATENCY else min(1.0, max(1e-6, goal * want / got))
    p, got, flops, own, small = best
    small = cut(p) if small is None else small
    check_config(a, small, cfg.uniform)
    if a.traced.parts and cfg.metric is Metric.FLOPS:
        p = _own_workload(a, own, p, got)
    band = max(OFF_TARGET, LATENCY_TOL * want) if cfg.metric is Metric.LATENCY else OFF_TARGET
    return Landing(small, check_landing(a, p, cfg, got, band), a, got, flops)  # a miss is said out loud


def _own_workload(a: Analysis, own_flops: int, p: Plan, got: float) -> Plan:
    """After a partial capture the landing counts FLOPs at the dense model's workload. Where the
    opaque code gives the shrunk model another workload on the example (a detector keeping another
    number of boxes runs its heads another number of times: ``own_flops``, counted on its own
    forward by the verification run), say so, with both figures."""
    own = own_flops / a.traced.total_flops()
    if abs(own - got) <= OFF_TARGET:
        return p
    msg = (f"at the dense model's workload the result keeps {got:.4f} of the FLOPs, but its own forward on "
           f"the example keeps {own:.4f}: the code outside the captured parts "
           f"({', '.join(a.traced.parts)}) ran them on a different amount of work than "
           "the dense model did (a data-dependent count, such as the boxes a detector keeps). What may help: "
           "fix that count in the model's own settings, so both models do the same work (a torchvision "
           "R-CNN built with box_score_thresh=0.0 returns box_detections_per_img boxes on every image)")
    warnings.warn(msg, OffTargetWarning, stacklevel=_caller_level())
    return dataclasses.replace(p, extra=p.extra + (("own_workload", round(own, 6)), ("workload_note", msg)))


def check_config(a: Analysis, small: nn.Module, uniform: bool | None) -> None:
    """A Hugging Face model's config must still build it (so ``from_pretrained`` reloads it)."""
    from .analysis.hf import check_config as problem_of

    problem = problem_of(small)
    if problem is None:
        return
    if a.config_model is not None:
        raise SurgeryError(f"the pruned model's config does not describe it ({problem}); this is a "
                           "bug in surgeon's config fix-ups, please report it with the model")
    if uniform is False:
        warnings.warn(f"uniform=False: {type(small).__name__}.config no longer describes the pruned "
                      f"widths ({problem}), so from_pretrained cannot rebuild it; save it without "
                      "pickle with surgeon.checkpoint.save(small, plan, 'file.py:FUNCTION', path), plan = "
                      "surgeon.plan(model, x, ...) with the same arguments (the factory rebuilds the dense "
                      "model and the plan is applied again on load), or keep the default uniform widths",
                      stacklevel=4)


def _verify_runs(a: Analysis, small: nn.Module, example_input: Any, p: Plan) -> tuple[int, int]:
    """Run the shrunk model once: it must work and keep the output shapes. Returns its FLOPs as
    the landing counts them, and as its own forward on the example did (the same number, except
    after a partial capture, which counts at the dense model's workload)."""
    expected = a.traced.reference_shapes
    try:
        known = count_known(small, example_input) if a.traced.plain else None
        if known is not None:  # every op of the capture has its FLOPs known from shapes
            flops, got = known[0], shapes_of(known[1])
        else:
            flops, got = measure(small, example_input)
        own = flops
        if a.traced.parts:  # a partial capture: counted at the dense model's workload
            flops = a.traced.gm.flops(small)
    except Exception as exc:  # noqa: BLE001 - reported with context below
        raise SurgeryError(_failure(small, example_input, p, exc)) from exc
    if not a.traced.same_output(got):
        raise SurgeryError(f"the shrunk model's output shapes changed: {expected} -> {got}; "
                           f"this is a bug in a coupling rule, please report it with the model")
    return flops, own


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
