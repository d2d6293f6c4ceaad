"""Magnitude scores (``l1``, ``l2``) read from a checkpoint folder, one tensor at a time, for a
model on the meta device. The numbers are the ones :class:`surgeon.criteria.Magnitude` gives the
same model in memory: the same float32 powers and sums over the same blocks of rows, combined
by the same :func:`~surgeon.criteria.base._combine` (a tensor bigger than the scratch block is
read a block of rows at a time with ``safe_open(...).get_slice``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..criteria.base import CHUNK, _combine, _powered, _Scratch, _sum_but, magnitude_members
from ..graph.groups import PruneGroup
from .files import Checkpoint
from .names import Source

__all__ = ["CheckpointMagnitude"]


class CheckpointMagnitude:
    """L1 or L2 magnitude (see :class:`surgeon.criteria.Magnitude`) of a meta-device model whose
    values lie in ``ck``; ``srcs`` says where each tensor is stored (:func:`~.names.sources`)."""

    per_group = True

    def __init__(self, p: int, ck: Checkpoint, srcs: dict[str, Source]):
        self.p, self.name, self.ck, self.srcs = p, f"l{p}", ck, srcs

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        with torch.no_grad():
            parts, dims_of, tensors = magnitude_members(model, groups)
            if not parts:
                return [np.zeros(g.n_units) for g in groups]
            scratch = _Scratch(tensors[n] for n in dims_of)  # sized by the meta shapes
            found: dict[tuple[str, int], np.ndarray] = {}
            for name, dims in dims_of.items():
                for d, sums in zip(dims, self._sums(scratch, name, tensors[name], dims)):
                    found[name, d] = sums.numpy()
            return _combine(groups, [p[0] for p in parts], [p[3] for p in parts],
                            [found[name, dim] for _, name, dim, _ in parts])

    def _sums(self, scratch: _Scratch, name: str, meta: torch.Tensor, dims: list[int]) -> list[torch.Tensor]:
        src = self.srcs[name]
        if meta.dim() == 1:
            return [_powered(src.read(self.ck), self.p)]
        if meta.numel() <= CHUNK or src.stack is not None:
            return scratch.sums(src.read(self.ck), dims, self.p)
        # as _Scratch.sums does in memory, a block of rows at a time: here each block read alone
        rows = max(1, CHUNK // max(1, meta[0].numel()))
        blocks: list[list[torch.Tensor]] = [[] for _ in dims]
        for start in range(0, meta.shape[0], rows):
            x = scratch.powered(self.ck.read(src.first, slice(start, start + rows)), self.p)
            for i, d in enumerate(dims):
                blocks[i].append(_sum_but(x, d))
        return [torch.cat(bs) if d == 0 else torch.stack(bs).sum(0) for d, bs in zip(dims, blocks)]
