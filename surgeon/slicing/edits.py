"""The slicing primitive: cut named tensors along dims, set module attributes, drop layers.

Surgery applies a whole :class:`~surgeon.planning.plan.Plan` through :func:`slice_model`, and the
width probes of analysis use it to realise a trial cut; it knows nothing of plans, groups or
graphs, only of names, indices and values, so both can import it from below.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import _walks
from ..errors import PlanError
from .clone import clone_module
from .fixers import fixer_for
from .._gc import own_loop

__all__ = ["Slice", "AttrUpdate", "Modules", "slice_model"]


@dataclass(frozen=True)
class Slice:
    """Keep ``keep`` (sorted indices) along ``dim`` of tensor ``tensor`` (originally ``size``)."""

    tensor: str
    dim: int
    size: int
    keep: tuple[int, ...]


@dataclass(frozen=True)
class AttrUpdate:
    """Set ``module.attr`` from ``old`` to ``new`` (an int, or a list for tuple attributes)."""

    module: str
    attr: str
    old: int | list[int]
    new: int | list[int]


_REQUIRED = object()


class Modules(dict):
    """Qualified name -> submodule of one model, resolved once (deep models have thousands)."""

    def __init__(self, model: nn.Module | None = None):
        super().__init__(() if model is None else _walks.modules(model))

    @classmethod
    def of_copy(cls, source: "Modules", copy: nn.Module, memo: dict[int, Any]) -> "Modules":
        """The modules of ``copy``, a clone of ``source``'s model made with ``memo``: each name
        maps to the copy of the module it names there, without walking the copy again."""
        mods = cls()
        for name, mod in source.items():
            new = memo.get(id(mod))
            if new is None:  # a module that copies itself without the memo: walk the copy
                return cls(copy)
            mods[name] = new
        return mods

    def owner(self, qualname: str) -> tuple[nn.Module, str]:
        mod_name, _, leaf = qualname.rpartition(".")
        mod = self.get(mod_name)
        if mod is None:
            raise PlanError(f"the plan slices '{qualname}' but the model has no module '{mod_name}'")
        return mod, leaf

    def tensor(self, qualname: str, default: Any = _REQUIRED) -> Any:
        """The parameter, buffer or attribute ``qualname`` (read from the registries first:
        ``getattr`` on a module goes through ``nn.Module.__getattr__``)."""
        mod, leaf = self.owner(qualname)
        t = mod._parameters.get(leaf)
        if t is None:
            t = mod._buffers.get(leaf)
        if t is not None:
            return t
        return getattr(mod, leaf) if default is _REQUIRED else getattr(mod, leaf, default)


def _aliases(mods: Modules, tensors: set[int]) -> dict[int, list[tuple[nn.Module, dict, str]]]:
    """Every place a parameter or buffer registry of ``mods`` holds one of ``tensors`` (by id):
    (module, its ``_parameters`` or ``_buffers`` dict, key). Tied weights have several."""
    where: dict[int, list] = defaultdict(list)
    for mod in mods.values():
        for store in (mod._parameters, mod._buffers):
            for leaf, t in store.items():
                if id(t) in tensors:
                    where[id(t)].append((mod, store, leaf))
    return where


def _index(keep: tuple[int, ...], device: torch.device, cache: dict) -> torch.Tensor:
    """The index tensor of ``keep`` (made once per distinct keep list: a group's members share it)."""
    key = (tuple(keep), device)
    index = cache.get(key)
    if index is None:
        index = cache[key] = torch.from_numpy(np.asarray(key[0], dtype=np.int64)).to(device)
    return index


@own_loop
def slice_model(model: nn.Module, slices: Sequence[Slice], attrs: Sequence[AttrUpdate] = (),
                drops: Sequence[str] = (), config: Sequence[AttrUpdate] = (), inplace: bool = False,
                source: Modules | None = None, found: dict[str, Any] | None = None) -> nn.Module:
    """Keep ``slice.keep`` along ``slice.dim`` of each named tensor (every alias of a tied tensor
    at once), set ``attrs``, remove the layers in ``drops``, set the ``config`` fields and let
    each touched module's fixer rewrite its width attributes. Works on a copy unless ``inplace``.
    ``source``/``found`` pass the caller's module index and resolved tensors, if it has them."""
    source = Modules(model) if source is None else source
    found = {} if found is None else found
    by_tensor: dict[str, list] = defaultdict(list)
    for s in slices:
        by_tensor[s.tensor].append(s)
    # the copy shares the tensors about to be sliced (each is replaced, with all its aliases)
    sliced = [found[name] if name in found else source.tensor(name) for name in by_tensor]
    if inplace:
        target, mods = model, source
    else:
        memo: dict[int, Any] = {}
        target = clone_module(model, replace=sliced, memo=memo)
        mods = Modules.of_copy(source, target, memo)
    olds = sliced if inplace else [mods.tensor(name) for name in by_tensor]
    touched = _cut_tensors(mods, by_tensor, olds, inplace)
    for a in attrs:
        mod = mods[a.module] if a.module in mods else target.get_submodule(a.module)
        old = getattr(mod, a.attr, None)  # a list attribute stays a list (split sizes), others become tuples
        setattr(mod, a.attr, (list if type(old) is list else tuple)(a.new) if isinstance(a.new, list) else a.new)
    _drop_layers(target, mods, drops)
    for a in config:  # the copy's own config object (deep-copied with the model); "vision_config.x": nested
        owner = getattr(target, a.module)
        *path, field = a.attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, field, a.new)
    fixers: dict[type, Any] = {}
    for mod in touched.values():
        cls = type(mod)
        fix = fixers[cls] if cls in fixers else fixers.setdefault(cls, fixer_for(cls))
        if fix is not None:
            fix(mod)
    return target


def _cut_tensors(mods: Modules, by_tensor: dict[str, list], olds: list, inplace: bool) -> dict[int, nn.Module]:
    """Slice each tensor once (tied ones under every name). On a copy the smaller tensor replaces
    the old one in every registry that holds it; in place the old object keeps its identity and
    takes the smaller data, so held references and optimizers see the new shape. Returns the
    modules touched."""
    aliases = _aliases(mods, {id(t) for t in olds})
    touched: dict[int, nn.Module] = {}
    done: set[int] = set()
    indices: dict = {}
    for (name, slices), old in zip(by_tensor.items(), olds):
        if id(old) in done:  # another name of a tensor already replaced
            continue
        done.add(id(old))
        new = old.detach()
        for s in slices if len(slices) == 1 else sorted(slices, key=lambda s: s.dim):
            # index_select copies: new shares no memory with old
            new = new.index_select(s.dim, _index(s.keep, new.device, indices))
        places = aliases.get(id(old)) or [(*mods.owner(name), None)]  # None: a plain tensor attribute
        if inplace and isinstance(old, torch.Tensor):
            with torch.no_grad():
                old.data = new  # the same Parameter / buffer object, now smaller
        elif isinstance(old, nn.Parameter):  # one object for every alias, so tied weights stay tied
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        for mod, store, leaf in places:
            if not (inplace and isinstance(old, torch.Tensor)):
                if store is None:
                    setattr(mod, leaf, new)
                else:
                    store[leaf] = new
            touched[id(mod)] = mod
    return touched


def _drop_layers(target: nn.Module, mods: Modules, drops) -> None:
    """Delete whole layers from their containers; the survivors are renumbered, and so are
    ``layer_idx`` attributes (which Hugging Face caches index by)."""
    by_parent: dict[str, list[str]] = defaultdict(list)
    for name in drops:
        parent, _, key = name.rpartition(".")
        by_parent[parent].append(key)
    for parent, keys in by_parent.items():
        box = mods.get(parent)
        if not isinstance(box, (nn.ModuleList, nn.Sequential)):
            raise PlanError(f"the plan drops layers of '{parent}', which is not a ModuleList or Sequential")
        drop = set(keys)
        kept = [(k, m) for k, m in box._modules.items() if k not in drop]
        box._modules.clear()
        for i, (k, m) in enumerate(kept):
            box._modules[str(i)] = m
            for sub in m.modules() if k.isdigit() else ():
                if getattr(sub, "layer_idx", None) == int(k):
                    sub.layer_idx = i
