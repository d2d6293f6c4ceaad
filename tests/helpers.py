"""Shared checks for the rule-family tests: structure of the groups and behaviour of surgery.

Structure: find the group that holds a parameter dimension, list which parameter dimensions are
tied together, assert a group is frozen and why.

Behaviour: zero-invariance (zeroing a unit's parameters must give the same output as removing the
unit) for random units of every exact prunable group, on a model re-initialised until its output
has spread; and ``shrink`` at a FLOPs target lands on it and keeps the output shape.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

import surgeon
from surgeon.graph.trace import eval_mode, run_model
from surgeon.verify import count_flops, first_tensor, max_rel_error, output_shapes, zero_invariance

__all__ = [
    "analyze", "group_of", "tensor_dims", "assert_tied", "assert_not_tied", "assert_frozen",
    "units_of", "reinit", "reference_output", "pick_units", "check_zero_invariance",
    "check_shrink", "run",
]

ZI_TOL = 1e-4
FLOPS_TOL = 0.01
MIN_STD = 1e-3


# -- structure ---------------------------------------------------------------------------------
def analyze(model: nn.Module, x: Any):
    return surgeon.analyze(model, x)


def group_of(a, name: str, dim: int = 0):
    """The group holding parameter/buffer dimension ``(name, dim)``."""
    key = ("p", name, dim)
    hits = [g for g in a.groups if any(m.key == key for m in g.members)]
    assert len(hits) == 1, f"{key} is in {len(hits)} groups; groups: " + "; ".join(
        g.describe() for g in a.groups)
    return hits[0]


def tensor_dims(g) -> set[tuple[str, int]]:
    """``{(qualname, dim)}`` of the parameter/buffer members of ``g``."""
    return {(m.name, m.dim) for m in g.tensors}


def assert_tied(a, *dims: tuple[str, int], exactly: bool = False):
    """All ``(name, dim)`` lie in one group; with ``exactly``, the group holds nothing else."""
    g = group_of(a, *dims[0])
    have = tensor_dims(g)
    missing = set(dims) - have
    assert not missing, f"{sorted(missing)} not tied to {dims[0]}; its group holds {sorted(have)}"
    if exactly:
        assert have == set(dims), f"group of {dims[0]} holds extra {sorted(have - set(dims))}"
    return g


def assert_not_tied(a, d1: tuple[str, int], d2: tuple[str, int]) -> None:
    assert group_of(a, *d1).id != group_of(a, *d2).id, f"{d1} and {d2} should be in different groups"


def assert_frozen(g, *reason_parts: str) -> None:
    """``g`` cannot be pruned, every unit is frozen, and the reason mentions each part."""
    assert not g.prunable, f"expected frozen: {g.describe()}"
    assert g.frozen_units.all()
    for part in reason_parts:
        assert part in g.reason, f"reason {g.reason!r} does not mention {part!r}"


def units_of(a, name: str, dim: int = 0) -> np.ndarray:
    """Unit of each index of parameter dimension ``(name, dim)`` within its group."""
    g = group_of(a, name, dim)
    (m,) = [m for m in g.members if m.key == ("p", name, dim)]
    return m.unit_of


# -- models with spread -------------------------------------------------------------------------
@torch.no_grad()
def reinit(model: nn.Module, seed: int) -> None:
    """Fresh random parameters: ``reset_parameters`` where a module has it, then every parameter
    or float buffer that is constant (norm weights and biases, running statistics, layer scales)
    gets noise, so that no unit is interchangeable with another."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for m in model.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point() or t.numel() == 0:
            continue
        noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        if name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype))
        elif t.numel() == 1 or float(t.std()) < 1e-6:
            t.add_(0.3 * noise)


def run(model: nn.Module, x: Any) -> torch.Tensor:
    """The first output tensor of ``model`` on ``x`` in eval mode, without gradients."""
    with eval_mode(model), torch.no_grad():
        return first_tensor(run_model(model, x))


def reference_output(model: nn.Module, x: Any, tries: int = 8) -> torch.Tensor:
    """Re-initialise ``model`` until its output spreads (std > MIN_STD); return that output."""
    for seed in range(tries):
        reinit(model, seed)
        out = run(model, x)
        if out.is_floating_point() and torch.isfinite(out).all() and float(out.std()) > MIN_STD:
            return out
    raise AssertionError(f"{type(model).__name__} output has no spread after {tries} re-inits")


def pick_units(g, rng: np.random.Generator, fraction: float = 0.4) -> list[int]:
    """Random removable units of ``g``: never frozen ones, and never all indices of a member dim."""
    free = np.nonzero(~g.frozen_units)[0]
    rng.shuffle(free)
    want = max(1, int(round(fraction * len(free))))
    seen, rows = set(), []
    for m in g.members:
        if id(m.unit_of) not in seen:
            seen.add(id(m.unit_of))
            rows.append(np.bincount(m.unit_of, minlength=g.n_units))
    counts = np.stack(rows)
    left = counts.sum(axis=1)
    chosen = []
    for u in free:
        if len(chosen) == want:
            break
        after = left - counts[:, u]
        if (after[counts[:, u] > 0] < 1).any():
            continue
        left = after
        chosen.append(int(u))
    return sorted(chosen)


def check_zero_invariance(model: nn.Module, x: Any, *, seed: int = 0, tol: float = ZI_TOL,
                          expect: Iterable[str] = (), rounds: int = 2,
                          uniform: bool | None = None) -> dict[int, float]:
    """Zero-invariance below ``tol`` for random units of every exact prunable group, each group on
    its own and all of them at once. ``expect`` names parameters that must be in some checked
    group (so a test cannot pass by having nothing to check). Returns {group id: worst error}."""
    ref = reference_output(model, x)
    assert float(ref.std()) > MIN_STD
    a = surgeon.analyze(model, x, uniform=uniform)
    groups = [g for g in a.groups if g.prunable and g.exact]
    assert groups, "no exact prunable group: " + "; ".join(g.describe() for g in a.groups)
    checked = {m.name for g in groups for m in g.tensors}
    missing = set(expect) - checked
    assert not missing, f"{sorted(missing)} are in no exact prunable group"
    rng = np.random.default_rng(seed)
    worst: dict[int, float] = {}
    for _ in range(rounds):
        together = {}
        for g in groups:
            units = pick_units(g, rng)
            assert units, f"no unit can be removed from {g.describe()}"
            together[g.id] = units
            err = zero_invariance(model, x, {g.id: units}, analysis=a)
            assert err < tol, f"zero-invariance {err:.3g} for units {units} of {g.describe()}"
            worst[g.id] = max(worst.get(g.id, 0.0), err)
        err = zero_invariance(model, x, together, analysis=a)
        assert err < tol, f"zero-invariance {err:.3g} removing units of every exact group together"
        moved = max_rel_error(ref, run(_zeroed(model, a, together), x))
        assert moved > 10 * tol, f"zeroing {together} does not change the output: the check is vacuous"
    return worst


def _zeroed(model: nn.Module, a, units: dict[int, list[int]]) -> nn.Module:
    """A copy of ``model`` with the parameter slices of ``units`` zeroed."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    by_id = {g.id: g for g in a.groups}
    with torch.no_grad():
        for gid, us in units.items():
            g = by_id[gid]
            for m in g.tensors:
                if m.name in params:
                    params[m.name].index_fill_(m.dim, torch.as_tensor(g.unit_indices(m, us)), 0.0)
    return out


def check_shrink(model: nn.Module, x: Any, target: float = 0.5, tol: float = FLOPS_TOL, **kw) -> nn.Module:
    """``shrink`` runs, keeps the output shapes, and lands within ``tol`` of ``target`` FLOPs."""
    base = count_flops(model, x)
    shapes = {n: p.shape for n, p in model.state_dict().items()}
    small = surgeon.shrink(model, x, target=target, **kw)
    assert {n: p.shape for n, p in model.state_dict().items()} == shapes, "the input model changed"
    assert output_shapes(small, x) == output_shapes(model, x)
    got = count_flops(small, x) / base
    assert abs(got - target) <= tol, f"shrunk to {got:.4f} of the FLOPs, target {target}"
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    return small
