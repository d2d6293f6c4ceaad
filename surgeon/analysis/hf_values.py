"""Config fields that set *values* a reload recomputes, not only widths.

``from_pretrained`` rebuilds the non-persistent buffers from the config: Gemma's embedding scale
is ``sqrt(hidden_size)``, so a Gemma whose hidden size is cut reloads with another scale and
other logits, although every shape matches. Which fields do that is learnt like the footprints:
the class is built from the config with each width field moved, parameters on the meta device
(no memory) and buffers for real, and a field that changes the value of a non-persistent
buffer whose shape it does not change is recorded with that buffer.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["value_fields"]


@contextlib.contextmanager
def _params_on_meta():
    """Parameters are made on the meta device as they are registered; buffers stay real."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _buffers(cls: type, cfg: Any) -> dict[str, torch.Tensor] | None:
    """The non-persistent buffers ``cls(cfg)`` computes, by name (None if it cannot be built)."""
    try:
        with _params_on_meta():
            m = cls(cfg)
    except Exception:  # noqa: BLE001 - a value the class rejects tells us nothing
        return None
    persistent = set(m.state_dict())
    return {n: b for n, b in m.named_buffers() if n not in persistent and b.device.type != "meta"}


def value_fields(cls: type, cfg: Any, fields: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """``field -> buffer``: the fields of ``fields`` (``(name, config with it moved)``) that
    change a non-persistent buffer's value at its shape."""
    base = _buffers(cls, cfg)
    if not base:
        return {}
    out = {}
    for name, moved_cfg in fields:
        moved = _buffers(cls, moved_cfg) or {}
        for b, t in base.items():
            m = moved.get(b)
            if m is not None and m.shape == t.shape and m.dtype == t.dtype and not torch.equal(m, t):
                out[name] = b
                break
    return out
