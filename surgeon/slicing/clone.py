"""A deep copy of a module tree that is several times faster than ``copy.deepcopy``.

``copy.deepcopy`` rebuilds every module through ``__reduce_ex__`` and copies a dozen (usually
empty) hook dictionaries per module one by one; on a model with thousands of modules that costs
more than tracing it. Here modules whose class keeps ``nn.Module``'s own pickling protocol are
rebuilt directly; everything else (tensors, configs, hooks that exist, modules with their own
``__deepcopy__``/``__reduce_ex__``/``__getstate__``) goes through ``copy.deepcopy`` with one shared
memo, so aliasing (tied weights, shared submodules) is kept exactly as deepcopy keeps it.

Tensors listed in ``replace`` are not copied: the copy starts out sharing them with the original,
and the caller must swap in new tensors for every reference it knows of (surgery does, for each
sliced parameter and all its aliases), which saves copying weights that are replaced anyway.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["clone_module", "meta_copy", "to_meta"]

_ATOMIC = frozenset({type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size})
_EMPTY = frozenset({dict, OrderedDict, set})  # a fresh empty one is the copy


def _plain_pickling(cls: type) -> bool:
    for name in ("__deepcopy__", "__reduce_ex__", "__reduce__", "__getstate__", "__setstate__",
                 "__copy__"):
        owner = next((k for k in cls.__mro__ if name in k.__dict__), None)
        if owner is not None and owner is not nn.Module and owner is not object:
            return False
    return "__slots__" not in cls.__dict__ or not cls.__dict__["__slots__"]


_PLAIN: dict[type, bool] = {}


def clone_module(model: nn.Module, replace: Iterable[torch.Tensor] = (),
                 memo: dict[int, Any] | None = None) -> nn.Module:
    """A deep copy of ``model`` sharing the tensors in ``replace``. ``memo`` (optional, empty)
    receives deepcopy's memo: ``memo[id(x)]`` is the copy of each module and tensor copied."""
    memo = {} if memo is None else memo
    memo.update((id(t), t) for t in replace)
    return _clone(model, memo)


def _clone(m: nn.Module, memo: dict[int, Any]) -> nn.Module:
    hit = memo.get(id(m))
    if hit is not None:
        return hit
    cls = type(m)
    plain = _PLAIN.get(cls)
    if plain is None:
        plain = _PLAIN[cls] = _plain_pickling(cls)
    if not plain:
        return _deepcopy(m, memo, m)
    new = cls.__new__(cls)
    memo[id(m)] = new
    state = new.__dict__
    for k, v in m.__dict__.items():
        kind = type(v)
        if kind in _EMPTY and not v:  # hook dicts, a leaf's registries: most entries
            state[k] = kind()
        elif kind in _ATOMIC:
            state[k] = v
        elif k == "_modules":
            state[k] = type(v)((n, None if c is None else _clone(c, memo)) for n, c in v.items())
        elif (k == "_parameters" or k == "_buffers") and kind is dict:
            state[k] = memo[id(v)] = {n: _tensor(t, memo) for n, t in v.items()}
        elif kind is tuple and all(type(e) in _ATOMIC for e in v):
            state[k] = v  # what deepcopy returns for it
        elif k != "_compiled_call_impl":
            state[k] = _deepcopy(v, memo, m)
    state.pop("_compiled_call_impl", None)  # nn.Module.__getstate__ drops it too
    return new


def _deepcopy(v: Any, memo: dict[int, Any], owner: nn.Module) -> Any:
    """``copy.deepcopy(v, memo)``; where ``v`` holds a tensor that autograd made (a cache that
    forward filled with grad on: timm's LeViT keeps ``attention_biases[:, idxs]`` in a dict),
    which torch refuses to deep-copy, that tensor is copied detached (a cache is recomputed
    from the parameters anyway)."""
    try:
        return copy.deepcopy(v, memo)
    except RuntimeError as exc:
        if "graph leaves" not in str(exc):
            raise
    seen: set[int] = set()
    for t in _tensors_in(v, seen):
        if t.grad_fn is not None and id(t) not in memo:
            memo[id(t)] = t.detach().clone()
    return copy.deepcopy(v, memo)


def _tensors_in(v: Any, seen: set[int], depth: int = 8):
    """The tensors in ``v``: its containers and the attributes of its modules, ``depth`` levels deep."""
    if id(v) in seen or depth == 0:
        return
    seen.add(id(v))
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, dict):
        for e in v.values():
            yield from _tensors_in(e, seen, depth - 1)
    elif isinstance(v, (list, tuple, set)):
        for e in v:
            yield from _tensors_in(e, seen, depth - 1)
    elif isinstance(v, nn.Module):
        for e in vars(v).values():
            yield from _tensors_in(e, seen, depth - 1)


def _tensor(t: Any, memo: dict[int, Any]) -> Any:
    """``copy.deepcopy(t, memo)`` for a parameter or buffer entry (None, shared or copied);
    a plain ``nn.Parameter`` is copied by its own ``__deepcopy__`` directly, which records
    itself in ``memo`` (the originals stay alive in the model, so no keep-alive list is needed)."""
    if t is None:
        return None
    hit = memo.get(id(t))
    if hit is not None:
        return hit
    if type(t) is nn.Parameter:
        return t.__deepcopy__(memo)  # records itself in memo
    return copy.deepcopy(t, memo)


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device (shapes, dtypes and
    tying kept, no storage): what a capture that only needs shapes can run on."""
    tensors = {id(t): t for m in model.modules() for store in (m._parameters, m._buffers)
               for t in store.values() if t is not None}
    copy_ = clone_module(model, replace=tensors.values())  # shares every tensor, copies none
    meta: dict[int, torch.Tensor] = {}
    for m in copy_.modules():
        for store in (m._parameters, m._buffers):
            for name, t in store.items():
                if t is not None:
                    if id(t) not in meta:
                        empty = torch.empty_like(t, device="meta")
                        meta[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
                    store[name] = meta[id(t)]
    return copy_


def to_meta(x: Any) -> Any:
    """``x`` (tensors in tuples, lists, dicts) with every tensor on the meta device."""
    if isinstance(x, torch.Tensor):
        return x.to("meta")
    if isinstance(x, (tuple, list)):
        return type(x)(to_meta(v) for v in x)
    if isinstance(x, dict):
        return {k: to_meta(v) for k, v in x.items()}
    return x
