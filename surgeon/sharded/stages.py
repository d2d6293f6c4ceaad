"""Load part of a meta-device model from its checkpoint, run it, put it back on meta: the stages
of layer-wise calibration (:mod:`.calibrate`)."""

from __future__ import annotations

import contextlib
import ctypes
from typing import Iterator

import torch
from torch import nn

from ..criteria import MetaDeviceError
from .files import Checkpoint
from .names import Source

__all__ = ["Loader", "layer_stack"]


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's stack of layers: the ModuleList of one repeated class holding most parameters
    (a decoder's ``model.layers``, BERT's ``encoder.layer``)."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and len({type(c) for c in mod}) == 1:
            size = sum(p.numel() for p in mod.parameters())
            if best is None or size > best[0]:
                best = (size, name, mod)
    if best is None:
        raise MetaDeviceError(f"{type(model).__name__} has no stack of repeated layers (a ModuleList) to "
                              f"calibrate one layer at a time; load the model to score it with data")
    return best[1], best[2]


class Loader:
    """Swaps a model's meta tensors for their values from ``ck`` while a stage runs."""

    def __init__(self, model: nn.Module, ck: Checkpoint, srcs: dict[str, Source]):
        self.model, self.ck, self.srcs = model, ck, srcs
        self.names: dict[int, list[str]] = {}  # id of a meta tensor -> its names
        self.tensors: dict[int, torch.Tensor] = {}
        for mod_name, mod in model.named_modules(remove_duplicate=False):
            for store in (mod._parameters, mod._buffers):
                for leaf, t in store.items():
                    if t is not None and t.is_meta:
                        self.names.setdefault(id(t), []).append(f"{mod_name}.{leaf}" if mod_name else leaf)
                        self.tensors[id(t)] = t
        self._origin: dict[int, int] = {}  # id of a tensor swapped in -> id of the meta tensor it stands for

    def under(self, prefix: str) -> set[int]:
        return {i for i, names in self.names.items() if any(n.startswith(prefix + ".") for n in names)}

    def outside(self, prefix: str) -> set[int]:
        return {i for i, names in self.names.items() if not any(n.startswith(prefix + ".") for n in names)}

    @contextlib.contextmanager
    def loaded(self, ids: set[int]) -> Iterator[None]:
        """The tensors ``ids`` hold their values (tied ones under every name) until the block ends."""
        stored = {i for i in ids if any(n in self.srcs for n in self.names[i])}
        real = {i: torch.empty_like(self.tensors[i], device="cpu") for i in ids - stored}
        try:
            self._swap(real)
            self._init(set(real))  # what the checkpoint does not hold (rotary tables): as from_pretrained makes it
            for i in stored:
                real[i] = self.srcs[next(n for n in self.names[i] if n in self.srcs)].read(self.ck)
            self._swap(real)
            yield
        finally:
            self._swap({i: self.tensors[i] for i in ids})
            _trim()

    def _swap(self, values: dict[int, torch.Tensor]) -> None:
        """Install ``values`` (by id of the meta tensor they stand for) in every store holding it."""
        made: dict[int, torch.Tensor] = {}
        for mod in self.model.modules():
            for store in (mod._parameters, mod._buffers):
                for leaf, t in list(store.items()):
                    key = None if t is None else self._origin.get(id(t), id(t))
                    if key not in values:
                        continue
                    if key not in made:
                        v, meta = values[key], self.tensors[key]
                        made[key] = v if v is meta or not isinstance(meta, nn.Parameter) else \
                            nn.Parameter(v, requires_grad=False)
                    store[leaf] = made[key]
        for key, v in made.items():
            self._origin = {i: k for i, k in self._origin.items() if k != key}
            if v is not self.tensors[key]:
                self._origin[id(v)] = key

    def _meta_id(self, t: torch.Tensor) -> int:
        return self._origin.get(id(t), id(t))

    def _init(self, ids: set[int]) -> None:
        if not ids:
            return
        init = getattr(self.model, "_init_weights", None)
        owners = {id(mod): mod for mod in self.model.modules()
                  for t in list(mod._parameters.values()) + list(mod._buffers.values())
                  if t is not None and self._meta_id(t) in ids}
        if init is None:
            name = self.names[next(iter(ids))][0]
            raise MetaDeviceError(f"the checkpoint does not hold {name!r} and {type(self.model).__name__} has no "
                                  f"_init_weights to make it; load the model to calibrate it")
        with torch.no_grad():
            for mod in owners.values():
                init(mod)


def _trim() -> None:
    """Give the heap's free pages back to the system. A layer's tensors under glibc's mmap
    threshold (32 MB) are freed into the heap, behind the small values each layer keeps (its
    outputs, its scores), which pins them: on a 3B Llama that held ~100 MB more per layer."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator does as it does
        pass
