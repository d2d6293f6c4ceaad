"""The ``activation`` criterion (:mod:`surgeon.criteria.activation`) for a model that does not fit:
the calibration batches run one decoder layer at a time, as llm-compressor's sequential pipeline
does. The model stays on the meta device; a stage's tensors are read from the checkpoint when
it runs and put back on meta after.

1. With the modules outside the layer stack (embeddings, rotary tables, final norm, head)
   loaded, each batch runs until the first layer, whose inputs (hidden states and keyword
   arguments: masks, position embeddings) are kept in memory.
2. Each layer is loaded, runs every batch's cached inputs (its output becomes the next layer's
   input), its Linear layers' input norms are complete, so its Wanda scores are reduced to one
   vector per member, and it is put back on meta.
3. The whole model runs once more with every layer replaced by the cached last output, for the
   modules after the stack (the head).

The input norms are summed batch by batch in the same order and the same ops run on the same
values as in memory, so the scores, hence the plan, are those of :class:`~surgeon.criteria.Activation`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..criteria import MetaDeviceError
from ..criteria._data import Batches, forward
from ..criteria.activation import _layout, _wanda, weight_owners
from ..criteria.base import CHUNK, combine
from ..graph.groups import PruneGroup
from ..graph.trace import eval_mode
from .files import Checkpoint
from .names import Source
from .stages import Loader, layer_stack

__all__ = ["LayerwiseActivation"]


class _Stop(BaseException):
    """Raised at the first layer once its inputs are kept (not an Exception: nothing wraps it)."""


class LayerwiseActivation:
    """``activation`` scores of a meta-device model whose values lie in ``ck``, calibrated one
    layer of its layer stack at a time (see the module docstring)."""

    name = "activation"

    def __init__(self, ck: Checkpoint, srcs: dict[str, Source], data: Any = None, batches: Batches | None = None):
        self.batches = batches if batches is not None else Batches(data, self.name)
        self.ck, self.srcs = ck, srcs

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        owners, dims = weight_owners(model, groups)
        with eval_mode(model), torch.no_grad():
            reduced = _Run(model, owners, dims, self.batches, Loader(model, self.ck, self.srcs)).run()
        out, fallback = [], []
        for gi, g in enumerate(groups):
            parts = [(m.unit_of, reduced[name, m.dim]) for m in g.tensors
                     for name in [m.name.rpartition(".")[0]] if m.name.rpartition(".")[2] == "weight"
                     and (name, m.dim) in reduced]
            out.append(combine(g, parts) if parts else None)
            if not parts:
                fallback.append(gi)
        if fallback:  # as in memory: L2 magnitude, read from the files (per group, so only these)
            from .score import CheckpointMagnitude

            l2 = CheckpointMagnitude(2, self.ck, self.srcs).score(model, [groups[gi] for gi in fallback])
            for gi, s in zip(fallback, l2):
                out[gi] = s
        return out


def _next(args: tuple, kwargs: dict, out: Any) -> tuple[tuple, dict]:
    """The next layer's arguments: these with the hidden states replaced by this layer's output."""
    hidden = out[0] if isinstance(out, (tuple, list)) else out
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


class _Run:
    """One layer-wise calibration: input norms by owner, then each owner's reduced Wanda scores."""

    def __init__(self, model: nn.Module, owners: dict[str, nn.Module], dims: dict[str, set[int]],
                 batches: Batches, loader: Loader):
        self.model, self.owners, self.dims, self.batches, self.loader = model, owners, dims, batches, loader
        self.stack_name, self.stack = layer_stack(model)
        self.sq: dict[str, torch.Tensor] = {}
        self.closed: set[str] = set()  # owners before the stack: counted in step 1 only
        self.reduced: dict[tuple[str, int], np.ndarray] = {}

    def run(self) -> dict[tuple[str, int], np.ndarray]:
        handles = [mod.register_forward_pre_hook(self._hook(name)) for name, mod in self.owners.items()]
        try:
            outside = self.loader.outside(self.stack_name)
            with self.loader.loaded(outside):
                cached = self._inputs()
            self.closed = set(self.sq)
            for i, layer in enumerate(self.stack):
                prefix = f"{self.stack_name}.{i}"
                with self.loader.loaded(self.loader.under(prefix)):
                    outs = [layer(*args, **kwargs) for args, kwargs in cached]
                    cached = [_next(args, kwargs, out) for (args, kwargs), out in zip(cached, outs)]
                    self._reduce(prefix)
            with self.loader.loaded(outside):
                self._after(outs)
                self._reduce(None)
        finally:
            for h in handles:
                h.remove()
        return self.reduced

    def _hook(self, name: str):
        channel_dim = _layout(self.owners[name])[1]

        def pre(_mod, args):  # as Activation._input_norms does
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or name in self.closed:
                return
            c = channel_dim(x)
            v = x.detach().double().square().sum(dim=[k for k in range(x.dim()) if k != c])
            self.sq[name] = self.sq[name] + v if name in self.sq else v
        return pre

    def _inputs(self) -> list[tuple[tuple, dict]]:
        """Each batch's arguments of the first layer."""
        cached: list[tuple[tuple, dict]] = []

        def keep(_mod, args, kwargs):
            cached.append((args, kwargs))
            raise _Stop

        h = self.stack[0].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            for batch in self.batches:
                try:
                    forward(self.model, batch.inputs, batch.index, self.batches.name)
                except _Stop:
                    continue
                raise MetaDeviceError(f"batch {batch.index} never reached {self.stack_name}.0: layer-wise "
                                      f"calibration needs every batch to run through the layer stack")
        finally:
            h.remove()
        return cached

    def _after(self, last: list) -> None:
        """Every batch through the model again, each layer returning the last layer's output."""
        at = iter(range(len(last)))
        current = {}

        def replay(*_a, **_k):
            return current["hidden"]

        for layer in self.stack:
            layer.forward = replay  # an instance attribute: nn.Module.__call__ runs it
        try:
            for batch in self.batches:
                current["hidden"] = last[next(at)]
                forward(self.model, batch.inputs, batch.index, self.batches.name)
        finally:
            for layer in self.stack:
                del layer.forward

    def _reduce(self, prefix: str | None) -> None:
        """Reduce the Wanda scores of the owners under ``prefix`` (None: those outside the stack),
        while their weights are loaded."""
        for name, mod in self.owners.items():
            inside = name.startswith(self.stack_name + ".")
            if (prefix is None and inside) or (prefix is not None and not name.startswith(prefix + ".")):
                continue
            if name not in self.sq:
                continue
            self.reduced.update(_reduced(name, mod, self.sq[name].sqrt(), self.dims[name]))


def _reduced(name: str, mod: nn.Module, xnorm: torch.Tensor, dims: set[int]) -> dict[tuple[str, int], np.ndarray]:
    """``sum`` of the Wanda matrix over every dim but ``d``, for each member dim ``d``. A Linear
    weight bigger than :data:`~surgeon.criteria.base.CHUNK` is done a block of rows at a time
    (not the float64 matrix of the whole head at once): the same sums, up to float64 rounding
    where rows are added across blocks."""
    w = mod.weight
    if not isinstance(mod, nn.Linear) or w.numel() <= CHUNK or xnorm.numel() != w.shape[1]:
        s = _wanda(mod, xnorm)  # exactly as in memory
        if s is None:
            return {}
        return {(name, d): s.sum(dim=[k for k in range(s.dim()) if k != d]).cpu().numpy() for d in dims if d < s.dim()}
    rows = max(1, CHUNK // w.shape[1])
    per_row, per_col = [], torch.zeros(w.shape[1], dtype=torch.float64)
    for start in range(0, w.shape[0], rows):
        s = w[start:start + rows].detach().double().abs() * xnorm.view(1, -1)
        per_row.append(s.sum(dim=1))
        per_col += s.sum(dim=0)
    return {(name, d): (torch.cat(per_row) if d == 0 else per_col).numpy() for d in dims if d < 2}
