"""Activation-weighted magnitude (Wanda's ``|W| * ||X||``), structured per unit.

Forward pre-hooks on the Linear and Conv layers that own a group's weights collect the squared
norm of every input channel over all batches, positions and tokens; ``||X_j||`` is its square
root. Each weight gets the Wanda matrix ``S[i, j] = |W[i, j]| * ||X_j||`` (broadcast over kernel
positions; in a grouped conv, column ``j`` of output row ``i`` reads input channel
``group(i) * in_per_group + j``), and a member scores index ``k`` of its dimension by summing
``S`` over every other dimension:

* an input-channel member (Linear/Conv weight dim 1) gets ``||X_k|| * sum_i |W[i, k]|``: the
  column norm times how strongly that channel is actually driven by the data;
* an output-channel member (weight dim 0) gets ``sum_j |W[k, j]| * ||X_j||``, Wanda's per-output
  view: how much signal that unit draws from its inputs (the next layer's input-channel member
  of the same unit then says how much of the unit's own output is used).

Only Linear and Conv (and transposed Conv, and Hugging Face's GPT-2 ``Conv1D``) weights are
scored; biases and normalisation parameters carry no input-activation information and are left
out. A group with no such weight falls back to L2 magnitude. No gradients are taken, so ``data``
batches need no target, and no ``loss_fn``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..graph.groups import PruneGroup
from .base import Magnitude, combine
from ._data import Batches, run_hooked

__all__ = ["Activation"]


def _layout(mod: nn.Module) -> tuple[int, Callable[[torch.Tensor], int]] | None:
    """(the weight dim that indexes input channels, the input's channel dim) or None."""
    if isinstance(mod, nn.Linear):
        return 1, lambda x: x.dim() - 1
    if isinstance(mod, nn.modules.conv._ConvNd):
        spatial = len(mod.kernel_size)
        return (0 if mod.transposed else 1), (lambda x: x.dim() - spatial - 1)
    if type(mod).__name__ == "Conv1D" and hasattr(mod, "nf"):  # transformers' GPT-2 layer
        return 0, lambda x: x.dim() - 1
    return None


def weight_owners(model: nn.Module, groups: list[PruneGroup]) -> tuple[dict[str, nn.Module], dict[str, set[int]]]:
    """The Linear/Conv modules whose weights are group members, and the dims of each scored."""
    owners: dict[str, nn.Module] = {}
    dims: dict[str, set[int]] = defaultdict(set)
    for g in groups:
        for m in g.tensors:
            mod_name, _, leaf = m.name.rpartition(".")
            mod = model.get_submodule(mod_name) if mod_name else model
            if leaf == "weight" and _layout(mod) is not None:
                owners[mod_name] = mod
                dims[mod_name].add(m.dim)
    return owners, dims


class Activation:
    """``|W| * ||X||`` per unit (Wanda, structured), from the input activations that ``data``
    produces at each Linear/Conv layer.

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> data = [torch.randn(32, 8) for _ in range(4)]
    >>> a = surgeon.analyze(net, data[0])
    >>> [s.shape for s in Activation(data).score(net, a.groups) if s.size == 16]
    [(16,)]
    """

    name = "activation"

    def __init__(self, data: Any = None, *, max_batches: int | None = None):
        self.batches = Batches(data, self.name, max_batches)

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        owners, _ = weight_owners(model, groups)
        norms = self._input_norms(model, owners)
        wanda = {name: _wanda(mod, norms[name]) for name, mod in owners.items() if name in norms}
        fallback = None
        out = []
        for gi, g in enumerate(groups):
            parts = []
            for m in g.tensors:
                mod_name, _, leaf = m.name.rpartition(".")
                s = wanda.get(mod_name) if leaf == "weight" else None
                if s is not None and m.dim < s.dim():
                    other = [k for k in range(s.dim()) if k != m.dim]
                    parts.append((m.unit_of, s.sum(dim=other).cpu().numpy()))
            if parts:
                out.append(combine(g, parts))
            else:
                fallback = fallback or Magnitude(2).score(model, groups)
                out.append(fallback[gi])
        return out

    def _input_norms(self, model: nn.Module, owners: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        """Squared norm of every input channel of every owner, summed over all batches."""
        sq: dict[str, torch.Tensor] = {}

        def hook(name: str, channel_dim: Callable[[torch.Tensor], int]):
            def pre(_mod, args):
                x = args[0] if args else None
                if not isinstance(x, torch.Tensor):
                    return
                c = channel_dim(x)
                other = [k for k in range(x.dim()) if k != c]
                v = x.detach().double().square().sum(dim=other)
                sq[name] = sq[name] + v if name in sq else v
            return pre

        handles = [mod.register_forward_pre_hook(hook(name, _layout(mod)[1])) for name, mod in owners.items()]
        run_hooked(model, handles, self.batches, self.name)
        return {name: v.sqrt() for name, v in sq.items()}


def _wanda(mod: nn.Module, xnorm: torch.Tensor) -> torch.Tensor | None:
    """``|W| * ||X_j||`` broadcast onto the weight's shape (float64), or None if shapes disagree."""
    w = mod.weight.detach().double().abs()
    in_dim, _ = _layout(mod)
    groups = getattr(mod, "groups", 1)
    if in_dim == 1 and groups > 1:  # grouped conv: row i reads channels of its own group
        per_group = w.shape[1]
        if xnorm.numel() != per_group * groups:
            return None
        xn = xnorm.view(groups, per_group).repeat_interleave(w.shape[0] // groups, dim=0)
    else:
        if xnorm.numel() != w.shape[in_dim]:
            return None
        shape = [1] * w.dim()
        shape[in_dim] = -1
        return w * xnorm.to(w.device).view(shape)
    return w * xn.to(w.device).view(*xn.shape, *([1] * (w.dim() - 2)))
