"""Data-free compensation: the closed form of Unified Data-Free Compression (Bai et al. 2023).

Each removed channel's producing weights (conv/linear rows with their BatchNorm folded in, across
every producer of a coupled group) are written as a ridge least-squares combination of the kept
channels' producing weights; the consumer's column for the removed channel is then folded into
the kept columns with those coefficients. Exact when nothing nonlinear lies between producer and
consumer; an approximation across a ReLU.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .analysis import Analysis
from .errors import SurgeonError
from .planning.plan import Plan

__all__ = ["udfc", "RefitError"]


class RefitError(SurgeonError, ValueError):
    """A compensation refit came out non-finite (NaN or inf); it is refused, never written."""

_BN = nn.modules.batchnorm._BatchNorm


def _dense(mod: nn.Module) -> bool:
    """A layer whose weight is (out, in, ...) with every output reading every input."""
    if isinstance(mod, nn.Linear):
        return True
    return isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed and mod.groups == 1


def bn_after(analysis: Analysis | None, name: str, model: nn.Module) -> str | None:
    """The BatchNorm that is the only reader of module ``name``'s output, if there is one."""
    if analysis is None or analysis.traced.mode != "fx":
        return None
    for node in analysis.traced.graph.nodes:
        if node.op == "call_module" and node.target == name:
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module":
                target = str(users[0].target)
                if isinstance(model.get_submodule(target), _BN):
                    return target
            return None
    return None


def _producer_rows(original: nn.Module, analysis: Analysis, group) -> torch.Tensor | None:
    """Per unit, the concatenated producing weights (BN folded) of every producer in the group;
    None when the group holds a member this closed form does not understand."""
    if group.reason is not None or not group.exact:
        return None
    feats = []
    for m in group.tensors:
        if len(m.unit_of) != group.n_units:
            return None  # units spanning several indices (heads): not handled here
        mod_name, _, leaf = m.name.rpartition(".")
        mod = original.get_submodule(mod_name) if mod_name else original
        if _dense(mod) and leaf == "weight" and m.dim == 1:
            continue  # a consumer
        if _dense(mod) and m.dim == 0 and leaf in ("weight", "bias"):
            if leaf == "bias":
                continue  # taken with its weight
            feats.append(_folded(original, analysis, mod_name, mod, m.unit_of))
        elif isinstance(mod, _BN) and m.dim == 0:
            continue  # folded into its producer
        else:
            return None
    if not feats:
        return None
    return torch.cat(feats, dim=1)


def _folded(original: nn.Module, analysis: Analysis, name: str, mod: nn.Module,
            unit_of: np.ndarray) -> torch.Tensor:
    """Rows (per unit) of a producer's weight and bias with a following BatchNorm folded in."""
    w = mod.weight.detach().double().reshape(mod.weight.shape[0], -1)
    b = mod.bias.detach().double() if mod.bias is not None else w.new_zeros(w.shape[0])
    bn = bn_after(analysis, name, original)
    if bn is not None:
        norm = original.get_submodule(bn)
        if norm.running_var is not None:
            scale = (norm.weight.detach().double() if norm.weight is not None else 1.0) / \
                torch.sqrt(norm.running_var.double() + norm.eps)
            shift = norm.bias.detach().double() if norm.bias is not None else 0.0
            b = (b - norm.running_mean.double()) * scale + shift
            w = w * scale[:, None]
    rows = torch.cat([w, b[:, None]], dim=1)
    order = np.argsort(unit_of)  # rows indexed by unit
    return rows[torch.as_tensor(order)]


def udfc(original: nn.Module, small: nn.Module, plan: Plan, analysis: Analysis, ridge: float) -> int:
    """Fold each removed input column into the kept ones; returns how many layers changed."""
    keep_of = {(s.tensor, s.dim): s.keep for s in plan.slices}
    changed = 0
    for g in analysis.groups:
        cons = [m for m in g.tensors if m.dim == 1 and m.name.endswith(".weight")
                and _dense(original.get_submodule(m.name.rpartition(".")[0]))
                and (m.name, 1) in keep_of]
        if not cons:
            continue
        rows = _producer_rows(original, analysis, g)
        if rows is None:
            continue
        m0 = cons[0]
        kept_units = np.unique(m0.unit_of[list(keep_of[(m0.name, 1)])])
        gone = np.setdiff1d(np.arange(g.n_units), kept_units)
        if gone.size == 0:
            continue
        vk, vr = rows[torch.as_tensor(kept_units)], rows[torch.as_tensor(gone)]
        gram = vk @ vk.T
        lam = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
        s = torch.linalg.solve(gram + lam * torch.eye(len(kept_units), dtype=gram.dtype, device=gram.device), vk @ vr.T).T
        for m in cons:
            _fold_columns(original, small, m, keep_of, kept_units, gone, s)
            changed += 1
    return changed


def _fold_columns(original, small, member, keep_of, kept_units, gone, s) -> None:
    """small.W[:, kept] += original.W[out_keep][:, removed] @ S (per kernel position)."""
    name = member.name.rpartition(".")[0]
    w = original.get_submodule(name).weight.detach().double()
    out_keep = keep_of.get((member.name, 0))
    if out_keep is not None:
        w = w[list(out_keep)]
    unit_of = member.unit_of
    col_of_unit = {int(u): i for i, u in enumerate(unit_of)}
    kept_cols = list(keep_of[(member.name, 1)])
    # s is (removed unit, kept unit); express it over this member's columns
    pos = {int(u): j for j, u in enumerate(kept_units)}
    s_cols = s[:, torch.as_tensor([pos[int(unit_of[c])] for c in kept_cols])]
    removed = w[:, torch.as_tensor([col_of_unit[int(u)] for u in gone])]
    delta = torch.einsum("or...,rk->ok...", removed, s_cols)
    if not bool(torch.isfinite(delta).all()):
        raise RefitError(f"compensate (data-free): folding the removed input channels of module '{name}' "
                         f"into the kept ones came out non-finite (NaN or inf); nothing was written. Check "
                         f"the model's weights for NaN/inf, or shrink without compensate=True")
    target = small.get_submodule(name).weight
    with torch.no_grad():
        target.add_(delta.to(target.dtype))


