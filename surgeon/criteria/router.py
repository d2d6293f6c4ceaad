"""Router-aware scores for mixture-of-experts units (REAP / MoE-Pruner style), on calibration data.

A routed expert matters as much as what it adds to the tokens the router sends it, weighted by
the router's gate: for the experts module of a layer (the stacked transformers-5 layout,
``forward(hidden, top_k_index, top_k_weights)``), hooks record every call on ``data`` and, for
every expert ``e`` and every token ``x`` routed to it with gate ``g``,

* whole experts: ``sum g * ||f_e(x)||`` over the tokens (REAP's router-weighted expert
  activation norm, summed rather than averaged over the routed tokens, so an expert the router
  rarely picks scores low: the expected contribution per token);
* expert width: intermediate channel ``j`` scores ``sum_e sum g * |h_e(x)_j| * ||W_down[e][:, j]||``
  (MoE-Pruner's ``|W| * ||X||`` on the down projection, gate-weighted), where
  ``h_e = act(x W_gate^T) * (x W_up^T)``.

Each score is given to the member dims of the expert group (``gate_up_proj`` dim 0) and of the
expert-width group (``gate_up_proj`` dim 1, ``down_proj`` dim 2) and combined with the group's
other members as every criterion does (:func:`surgeon.criteria.base.combine`). Every other
group, and every group when no ``data`` is given, is scored by L2 magnitude (``Router()``
without data is magnitude, which for an expert sums its router row and its stacked slices).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..graph.groups import PruneGroup
from ._data import Batches, run_hooked
from .base import Magnitude, combine

__all__ = ["Router"]


def stacked_experts(model: nn.Module) -> dict[str, nn.Module]:
    """Experts modules in the transformers-5 stacked layout this criterion can run by hand:
    ``gate_up_proj [E, 2I, H]`` (gate then up), ``down_proj [E, H, I]``, an ``act_fn``."""
    out = {}
    for name, m in model.named_modules():
        gu, down = getattr(m, "gate_up_proj", None), getattr(m, "down_proj", None)
        if not (isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.dim() == 3
                and down.dim() == 3 and callable(getattr(m, "act_fn", None))):
            continue
        if getattr(m, "is_transposed", False) or not getattr(m, "is_concatenated", True) \
                or not getattr(m, "has_gate", True) or getattr(m, "has_bias", False):
            continue
        e, two_i, h = gu.shape
        if two_i % 2 or tuple(down.shape) != (e, h, two_i // 2):
            continue
        out[name] = m
    return out


class _Tally:
    """Per experts module: gate-weighted output norm per expert, activation score per channel."""

    def __init__(self, m: nn.Module):
        e, two_i, _ = m.gate_up_proj.shape
        self.expert = torch.zeros(e, dtype=torch.float64)
        self.width = torch.zeros(two_i // 2, dtype=torch.float64)
        # ||W_down[e][:, j]||: how much of channel j's activation reaches the output
        self.col = m.down_proj.detach().double().norm(dim=1)  # [E, I]

    @torch.no_grad()
    def add(self, m: nn.Module, hidden: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> None:
        x = hidden.reshape(-1, hidden.shape[-1])
        idx = idx.reshape(x.shape[0], -1)
        weights = weights.reshape(x.shape[0], -1)
        for e in torch.unique(idx).tolist():
            if not 0 <= e < self.expert.numel():
                continue  # expert-parallel sentinels
            hit = idx == e
            tok = hit.any(dim=-1)
            g = (weights * hit).sum(dim=-1)[tok].float()
            gate, up = F.linear(x[tok], m.gate_up_proj[e]).chunk(2, dim=-1)
            h = m.act_fn(gate) * up
            y = F.linear(h, m.down_proj[e])
            self.expert[e] += float(g @ y.float().norm(dim=-1))
            self.width += (g @ h.float().abs()).double().cpu() * self.col[e].cpu()


class Router:
    """Router-weighted activation scores for experts and expert widths (see the module docstring);
    L2 magnitude for every other unit, and for all of them when ``data`` is None.

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> a = surgeon.analyze(net, torch.randn(4, 8))
    >>> [s.shape for s in Router().score(net, a.groups) if s.size == 16]
    [(16,)]
    """

    name = "router"

    def __init__(self, data: Any = None, *, max_batches: int | None = None):
        self.batches = Batches(data, self.name, max_batches) if data is not None else None

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        base = Magnitude(2).score(model, groups)
        experts = stacked_experts(model)
        if self.batches is None or not experts:
            return base
        tallies = self._collect(model, experts)
        out = []
        for gi, g in enumerate(groups):
            parts = []
            for m in g.tensors:
                owner, _, leaf = m.name.rpartition(".")
                t = tallies.get(owner)
                if t is None:
                    continue
                if (leaf, m.dim) == ("gate_up_proj", 0) or (leaf, m.dim) == ("down_proj", 0):
                    parts.append((m.unit_of, t.expert.numpy()))
                elif (leaf, m.dim) == ("gate_up_proj", 1):
                    parts.append((m.unit_of, np.tile(t.width.numpy(), 2)))
                elif (leaf, m.dim) == ("down_proj", 2):
                    parts.append((m.unit_of, t.width.numpy()))
            out.append(combine(g, parts) if parts else base[gi])
        return out

    def _collect(self, model: nn.Module, experts: dict[str, nn.Module]) -> dict[str, _Tally]:
        tallies = {name: _Tally(m) for name, m in experts.items()}

        def hook(name: str):
            def pre(mod, args, kwargs):
                vals = list(args) + [kwargs[k] for k in ("top_k_index", "top_k_weights") if k in kwargs]
                if len(vals) >= 3 and all(isinstance(v, torch.Tensor) for v in vals[:3]):
                    tallies[name].add(mod, vals[0], vals[1], vals[2])
            return pre

        handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in experts.items()]
        run_hooked(model, handles, self.batches, self.name)
        return tallies
