"""Gradient criteria: first-order Taylor and Fisher (diagonal second-order) saliency.

For every batch the loss gradient ``g`` of each parameter a group holds is taken with
``torch.autograd.grad`` (so ``.grad`` of the user's parameters is never written), and per index
``i`` of a member dimension:

* ``taylor``: ``sum_batches sum_slice(i) |w * g|``, the first-order estimate of how much the loss
  moves when the weights of that slice are zeroed (Molchanov et al. 2019, element-wise form);
* ``fisher``: ``sum_batches sum_slice(i) (w * g)^2``, the diagonal empirical-Fisher stand-in for
  the Hessian in the second-order (OBD) estimate ``1/2 w^T H w`` of the same change.

Both use per-batch gradients, so their estimate depends on the batch size; a few batches of a
typical size (8 to 64 samples) are enough to rank units. Buffers (BatchNorm running statistics)
have no gradient and are not scored. The model runs in eval mode (dropout off, BatchNorm
statistics not updated); parameters that had ``requires_grad=False`` are switched on for the
scoring and switched back afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..graph.groups import PruneGroup
from ..graph.trace import eval_mode
from .base import combine
from ._data import Batches, LossFn, forward, loss_of

__all__ = ["Taylor", "Fisher"]


class _Gradient:
    name = "gradient"

    def __init__(self, data: Any = None, loss_fn: LossFn | None = None, *, max_batches: int | None = None):
        self.batches = Batches(data, self.name, max_batches)
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(output, target), got {type(loss_fn).__name__}")
        self.loss_fn = loss_fn

    @staticmethod
    def _saliency(wg: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        params = dict(model.named_parameters(remove_duplicate=False))
        dims: dict[str, set[int]] = {}
        for g in groups:
            for m in g.tensors:
                p = params.get(m.name)
                if p is not None and p.is_floating_point() and m.dim < p.dim():
                    dims.setdefault(m.name, set()).add(m.dim)
        sums = self._accumulate(model, params, dims)
        out = []
        for g in groups:
            parts = [(m.unit_of, sums[(m.name, m.dim)]) for m in g.tensors if (m.name, m.dim) in sums]
            out.append(combine(g, parts))
        return out

    def _accumulate(self, model: nn.Module, params: dict[str, nn.Parameter],
                    dims: dict[str, set[int]]) -> dict[tuple[str, int], np.ndarray]:
        """Per-index saliency of every (parameter, dim), summed over batches."""
        unique: dict[int, tuple[nn.Parameter, list[str]]] = {}
        for name in dims:  # tied parameters (shared embeddings) are differentiated once
            unique.setdefault(id(params[name]), (params[name], []))[1].append(name)
        tensors = [p for p, _ in unique.values()]
        sums = {(n, d): torch.zeros(params[n].shape[d], dtype=torch.float64, device=params[n].device)
                for n, ds in dims.items() for d in ds}
        flags = [p.requires_grad for p in tensors]
        try:
            for p in tensors:
                p.requires_grad_(True)
            with eval_mode(model), torch.enable_grad():
                for batch in self.batches:
                    out = forward(model, batch.inputs, batch.index, self.name)
                    loss = loss_of(self.loss_fn, model, out, batch, self.name)
                    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                    for (p, names), gr in zip(unique.values(), grads):
                        if gr is None:
                            continue
                        sal = self._saliency(p.detach().double() * gr.double())
                        for n in names:
                            for d in dims[n]:
                                other = [k for k in range(sal.dim()) if k != d]
                                sums[(n, d)] += sal.sum(dim=other) if other else sal
        finally:
            for p, flag in zip(tensors, flags):
                p.requires_grad_(flag)
        return {k: v.cpu().numpy() for k, v in sums.items()}


class Taylor(_Gradient):
    """First-order Taylor saliency ``sum |w * dL/dw|`` per unit, summed over the batches of
    ``data``; ``loss_fn(output, target)`` defaults to cross-entropy (see ``surgeon.criteria._data``).

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    >>> data = [(torch.randn(32, 8), torch.randint(0, 3, (32,))) for _ in range(4)]
    >>> a = surgeon.analyze(net, data[0][0])
    >>> [s.shape for s in Taylor(data).score(net, a.groups) if s.size == 16]
    [(16,)]
    """

    name = "taylor"

    @staticmethod
    def _saliency(wg: torch.Tensor) -> torch.Tensor:
        return wg.abs()


class Fisher(_Gradient):
    """Diagonal Fisher saliency ``sum (w * dL/dw)^2`` per unit (the OBD estimate with the
    empirical Fisher for the Hessian), summed over the batches of ``data``."""

    name = "fisher"

    @staticmethod
    def _saliency(wg: torch.Tensor) -> torch.Tensor:
        return wg * wg
