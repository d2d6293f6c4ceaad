"""Hollow copies: a model whose cut tensors hold no memory, to count a trial cut for real.

A trial cut of the landing loop is run only to be counted (FLOPs, output shapes), and what it
computes from shapes does not depend on the weights' values. :class:`Hollow` makes the cut on a
meta-device copy (no memory), then gives every tensor back a real one: a tensor the cut left as
it was is the original itself (shared, never written), and a cut one is zeros of its shape in an
anonymous mapping that stays the kernel's zero page until written (no memory, and contiguous, so
every kernel takes its usual path). The hollow model runs on the real example input, so code that
reads the input's values (masks, ``.item()``) runs as it does for real. CPU models only
(elsewhere the landing makes real copies).
"""

from __future__ import annotations

import mmap
from typing import Any

import torch
from torch import nn

from .clone import clone_module, meta_copy
from .edits import Modules, slice_model

__all__ = ["Hollow"]


class Hollow:
    """Cuts of ``model`` made on meta and run hollow: ``Hollow(model).cut(plan)`` for any value
    with the ``slices``, ``attrs``, ``drops`` and ``config`` of a plan made from ``model``."""

    def __init__(self, model: nn.Module):
        if any(t.device.type != "cpu" for t in _tensors(model)):
            raise ValueError("hollow cuts are made on the CPU only")
        self.meta = meta_copy(model)
        self._real = {}  # id of a meta tensor -> the real tensor it stands for
        for real_mod, meta_mod in zip(model.modules(), self.meta.modules()):
            for store in ("_parameters", "_buffers"):
                real, meta = getattr(real_mod, store), getattr(meta_mod, store)
                for name, t in meta.items():
                    if t is not None:
                        self._real[id(t)] = (t, real[name])  # the meta tensor is kept alive here
        self.device = next((real.device for _m, real in self._real.values()), torch.device("cpu"))

    def cut(self, plan: Any) -> nn.Module:
        source = Modules(self.meta)
        cut = {id(source.tensor(s.tensor)) for s in plan.slices}
        shared = [meta for meta, _real in self._real.values() if id(meta) not in cut]
        small = clone_module(self.meta, replace=shared)  # the cut tensors are its own, the rest shared
        slice_model(small, plan.slices, plan.attrs, plan.drops, plan.config, inplace=True)
        return self._filled(small)

    def _filled(self, small: nn.Module) -> nn.Module:
        filled: dict[int, torch.Tensor] = {}  # tied tensors stay tied
        for m in small.modules():
            for store in (m._parameters, m._buffers):
                for name, t in store.items():
                    if t is not None:
                        if id(t) not in filled:
                            filled[id(t)] = self._fill(t)
                        store[name] = filled[id(t)]
        return small

    def all_hollow(self) -> nn.Module:
        """The uncut model with every tensor hollow: if it counts what the real model counts, the
        values do not steer what runs, and hollow cuts count what real cuts would."""
        return self._filled(meta_copy(self.meta))  # fresh meta tensors: none stands for a real one

    def _fill(self, t: torch.Tensor) -> torch.Tensor:
        pair = self._real.get(id(t))
        if pair is not None and pair[0] is t:
            return pair[1]  # left as it was: the original, shared
        return _hollow(t, self.device)


def _hollow(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Zeros of ``t``'s shape and dtype in a private anonymous mapping: the pages are the kernel's
    shared zero page until written, so reading them costs no memory (CPU only)."""
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        zero = torch.zeros(t.shape, dtype=t.dtype, device=device)
    else:
        pages = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        zero = torch.frombuffer(pages, dtype=t.dtype, count=t.numel()).view(t.shape)
    return nn.Parameter(zero, requires_grad=False) if isinstance(t, nn.Parameter) else zero


def _tensors(model: nn.Module):
    for m in model.modules():
        for store in (m._parameters, m._buffers):
            yield from (t for t in store.values() if t is not None)
