"""Which tensors a forward run feeds to the input-dependent part of the computation.

An exporter's constant folding precomputes everything that does not depend on the model's
input: a parameter used as it is stays itself, but a relative-position bias gathered from its
table by an index buffer, or an attention mask built from shapes, reaches the file as one new
tensor, and the parameters that only fed it disappear. Watching one eager forward with a
``TorchFunctionMode`` predicts that split without looking at the file:

* a tensor is *live* if it is an input or computed from a live tensor (a ``new_zeros`` or
  ``zeros_like`` of a live tensor is not: only its shape is read);
* the *frontier* is every non-live tensor that a live operation reads: what the file holds;
* a parameter that only non-live operations read is *absorbed* into some frontier tensor.

Views that keep every element (``view``, ``transpose``, ``expand`` ...) are the tensor they view,
so ``weight.t()`` counts as ``weight`` and ``class_token.expand(n, -1, -1)`` as ``class_token``.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["Frontier", "Lineage"]

_T = torch.Tensor
# operations whose result depends on the shape (and dtype) of their tensor inputs only
_SHAPE_ONLY = {_T.new_zeros, _T.new_ones, _T.new_full, _T.new_empty, torch.zeros_like, torch.ones_like,
               torch.full_like, torch.empty_like}
# views and copies that keep every element of their one tensor input
_SAME = {_T.view, _T.view_as, _T.reshape, _T.reshape_as, _T.permute, _T.transpose, _T.t, _T.expand, _T.expand_as,
         _T.contiguous, _T.unsqueeze, _T.squeeze, _T.flatten, _T.unflatten, _T.detach, _T.to, _T.type, _T.float,
         _T.clone, torch.reshape, torch.permute, torch.transpose, torch.t, torch.unsqueeze, torch.squeeze,
         torch.flatten, torch.broadcast_to, torch.movedim, _T.movedim}
_LIVE, _ROOT = "_surgeon_live", "_surgeon_root"


@dataclass
class Frontier:
    """One tensor the file should hold: its elements, the parameter it is (if any), its dtype."""

    numel: int
    param: int | None  # id of the parameter
    floating: bool
    keep: object = None  # the tensor itself, so that its id is not reused while we count


@dataclass
class Lineage:
    """What a forward run under :meth:`mode` showed."""

    params: dict[int, torch.nn.Parameter]
    owned: set[int]  # ids of the model's parameters and buffers, which are never tagged
    frontier: dict[int, Frontier] = field(default_factory=dict)  # by root key
    read: set[int] = field(default_factory=set)  # ids of parameters any operation read
    _tokens: itertools.count = field(default_factory=lambda: itertools.count(1 << 62))

    @contextlib.contextmanager
    def mode(self, inputs: list[torch.Tensor]):
        """Watch the forward run inside the ``with``; ``inputs`` are the live tensors."""
        for t in inputs:
            _tag(t, _LIVE, True)
        try:
            with _Mode(self):
                yield self
        finally:
            for t in inputs:
                vars(t).pop(_LIVE, None)

    def absorbed(self) -> set[int]:
        """Parameters read only by operations that did not depend on the input."""
        held = {f.param for f in self.frontier.values()}
        return {p for p in self.read if p not in held}

    # -- bookkeeping for _Mode ------------------------------------------------------------------
    def root(self, t: torch.Tensor) -> tuple[int, int, int | None]:
        """(key, elements, parameter id) of the tensor ``t`` stands for."""
        if id(t) in self.params:
            return id(t), t.numel(), id(t)
        return getattr(t, _ROOT, None) or (id(t), t.numel(), None)

    def consumed(self, t: torch.Tensor) -> None:
        key, numel, param = self.root(t)
        if key not in self.frontier:
            self.frontier[key] = Frontier(numel, param, t.is_floating_point(), t)

    def produced(self, func, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """Tag the outputs of an operation that did not read the input."""
        tag = self.root(inputs[0]) if func in _SAME and len(inputs) == 1 else None
        for o in outputs:
            if any(o is t for t in inputs) or id(o) in self.owned:
                continue  # in place, or the model's own tensor: it keeps what it stood for
            _tag(o, _ROOT, tag or (next(self._tokens), o.numel(), None))


def _tag(t: torch.Tensor, name: str, value: object) -> None:
    try:
        setattr(t, name, value)
    except (AttributeError, TypeError, RuntimeError):
        pass  # a tensor subclass that takes no attributes: it counts as a fresh constant


class _Mode(TorchFunctionMode):
    def __init__(self, lineage: Lineage):
        super().__init__()
        self._l = lineage

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [v for v in tree_flatten((args, kwargs))[0] if isinstance(v, torch.Tensor)]
        params = self._l.params
        self._l.read.update(id(t) for t in inputs if id(t) in params)
        live = func not in _SHAPE_ONLY and any(getattr(t, _LIVE, False) for t in inputs)
        out = func(*args, **kwargs)
        outputs = [v for v in tree_flatten(out)[0] if isinstance(v, torch.Tensor)]
        if live:
            for t in inputs:
                if not getattr(t, _LIVE, False):
                    self._l.consumed(t)
            for o in outputs:
                if id(o) not in self._l.owned:
                    _tag(o, _LIVE, True)
        else:
            self._l.produced(func, inputs, outputs)
        return out
