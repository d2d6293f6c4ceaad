"""One walk of a model's module tree per public call.

A ``named_modules`` or ``named_parameters`` walk of a model with thousands of modules costs
milliseconds, and each stage of one ``shrink`` (capture, scores, cost model, surgery) needed one.
Inside :func:`shared` (which ``surgeon.plan`` and ``surgeon.shrink`` open) the first walk of a
model is remembered and handed to the next stage that asks. The model must not change inside
the block: ``shrink`` never modifies its input, and the copy it builds is a different object.
Outside the block every call walks afresh. Callers must not modify the returned dicts.
"""

from __future__ import annotations

import contextlib
import gc
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import nn

__all__ = ["shared", "modules", "module_list", "parameters", "buffers", "remember", "settle"]

_SHARED: ContextVar[dict | None] = ContextVar("surgeon_walks", default=None)


@contextlib.contextmanager
def shared() -> Iterator[None]:
    """Inside, each model's module tree is walked once; and the objects that already exist (the
    model itself: millions of them on a big one) are moved out of the garbage collector's
    generations with ``gc.freeze`` for the block. The collector is never paused, so new cycles
    (the user's forward code included) are collected as usual; it only stops re-walking the
    long-lived heap, which cost a third of the time of a depth-400 shrink."""
    froze = gc.get_freeze_count() == 0  # a caller's own freeze is left alone
    token = _SHARED.set({"frozen": froze})
    if froze:
        gc.freeze()
    try:
        yield
    finally:
        if froze:
            gc.unfreeze()
        _SHARED.reset(token)


def _remembered(model: nn.Module, what: str, walk) -> dict:
    cache = _SHARED.get()
    if cache is None:
        return walk()
    hit = cache.get((id(model), what))
    if hit is not None and hit[0] is model:
        return hit[1]
    value = walk()
    cache[(id(model), what)] = (model, value)
    return value


def modules(model: nn.Module) -> dict[str, nn.Module]:
    """``dict(model.named_modules(remove_duplicate=False))``, walked once per shared block."""
    return _remembered(model, "modules", lambda: dict(model.named_modules(remove_duplicate=False)))


def module_list(model: nn.Module) -> list[nn.Module]:
    """``list(model.modules())`` (each module once, in walk order), walked once per shared block."""
    return _remembered(model, "module_list", lambda: list({id(m): m for m in modules(model).values()}.values()))


def parameters(model: nn.Module) -> dict[str, torch.nn.Parameter]:
    """``dict(model.named_parameters(remove_duplicate=False))`` (aliases under every name, in
    walk order), walked once per shared block."""
    return _remembered(model, "parameters", lambda: _members(model, "_parameters", "named_parameters"))


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """``dict(model.named_buffers(remove_duplicate=False))``, walked once per shared block."""
    return _remembered(model, "buffers", lambda: _members(model, "_buffers", "named_buffers"))


def _members(model: nn.Module, store: str, method: str) -> dict:
    """``dict(getattr(model, method)(remove_duplicate=False))``, read off the (remembered) module
    walk rather than walking the tree again, where the model keeps nn.Module's own walks."""
    cls = type(model)
    if getattr(cls, method) is not getattr(nn.Module, method) or cls.named_modules is not nn.Module.named_modules:
        return dict(getattr(model, method)(remove_duplicate=False))
    out = {}
    for prefix, mod in modules(model).items():
        found = getattr(mod, store)
        if found:
            for k, v in found.items():
                if v is not None:
                    out[f"{prefix}.{k}" if prefix else k] = v
    return out


def remember(model: nn.Module, what: str, compute) -> object:
    """``compute()``, once per model and ``what`` inside a shared block (a value that only the
    model's structure decides, such as its plan fingerprint)."""
    return _remembered(model, what, compute)


def settle() -> None:
    """Inside a shared block that froze the heap: freeze what exists now too (a capture's graph,
    built once and read by every later step); unfrozen with the rest when the block ends."""
    cache = _SHARED.get()
    if cache is not None and cache.get("frozen"):
        gc.freeze()
