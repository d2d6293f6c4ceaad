"""Apply a Plan: slice tensors, then fix the attributes modules read in ``forward``.

This is the only place surgeon mutates a model, and it works on a deep copy unless the caller
passes ``inplace=True``. The result keeps the user's own classes, so its methods and
``state_dict`` names still work.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import _walks
from ._clone import clone_module
from .errors import PlanError
from .plan import Plan

__all__ = ["apply", "FIXERS", "NAMED_FIXERS", "register_fixer", "has_fixer"]


_REQUIRED = object()


class _Modules(dict):
    """Qualified name -> submodule of one model, resolved once (deep models have thousands)."""

    def __init__(self, model: nn.Module | None = None):
        super().__init__(() if model is None else _walks.modules(model))

    @classmethod
    def of_copy(cls, source: "_Modules", copy: nn.Module, memo: dict[int, Any]) -> "_Modules":
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


def _aliases(mods: _Modules, tensors: set[int]) -> dict[int, list[tuple[nn.Module, dict, str]]]:
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


def apply(model: nn.Module, plan: Plan, inplace: bool = False) -> nn.Module:
    """Physically remove what ``plan`` says from ``model`` (a deep copy unless ``inplace``).

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> p = surgeon.plan(net, torch.randn(1, 4), target=0.5)
    >>> small = surgeon.apply(net, p)
    >>> small[0].out_features < 16 and net[0].out_features == 16
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a surgeon.Plan, got {type(plan).__name__}")
    source = _Modules(model)
    found: dict[str, Any] = {}
    for name, shape in plan.shapes:
        t = found[name] = source.tensor(name, None)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else None
            raise PlanError(f"the plan was made for a model where '{name}' has shape {tuple(shape)}, "
                            f"this one has {got}; build a new plan for this model")
    by_tensor: dict[str, list] = defaultdict(list)
    for s in plan.slices:
        by_tensor[s.tensor].append(s)
    # the copy shares the tensors about to be sliced (each is replaced, with all its aliases)
    sliced = [found[name] if name in found else source.tensor(name) for name in by_tensor]
    if inplace:
        target, mods = model, source
    else:
        memo: dict[int, Any] = {}
        target = clone_module(model, replace=sliced, memo=memo)
        mods = _Modules.of_copy(source, target, memo)
    olds = sliced if inplace else [mods.tensor(name) for name in by_tensor]
    aliases = _aliases(mods, {id(t) for t in olds})
    touched: dict[int, nn.Module] = {}
    done: set[int] = set()
    indices: dict = {}
    for (name, slices), old in zip(by_tensor.items(), olds):
        if id(old) in done:  # another name of a tensor already replaced
            continue
        new = old.detach()
        for s in slices if len(slices) == 1 else sorted(slices, key=lambda s: s.dim):
            # index_select copies: new shares no memory with old
            new = new.index_select(s.dim, _index(s.keep, new.device, indices))
        if isinstance(old, nn.Parameter):  # one object for every alias, so tied weights stay tied
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        places = aliases.get(id(old))
        if places:
            for mod, store, leaf in places:
                store[leaf] = new
                touched[id(mod)] = mod
        else:  # a plain tensor attribute
            mod, leaf = mods.owner(name)
            setattr(mod, leaf, new)
            touched[id(mod)] = mod
        done.add(id(old))
    for a in plan.attrs:
        mod = mods[a.module] if a.module in mods else target.get_submodule(a.module)
        setattr(mod, a.attr, tuple(a.new) if isinstance(a.new, list) else a.new)
    _drop_layers(target, mods, plan.drops)
    for a in plan.config:  # the copy's own config object (deep-copied with the model)
        setattr(getattr(target, a.module), a.attr, a.new)
    fixers: dict[type, Any] = {}
    for mod in touched.values():
        cls = type(mod)
        fix = fixers[cls] if cls in fixers else fixers.setdefault(cls, _fixer(cls))
        if fix is not None:
            fix(mod)
    return target


def _drop_layers(target: nn.Module, mods: _Modules, drops) -> None:
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


# -- attribute fix-ups from the new tensor shapes ----------------------------------------------------
FIXERS: dict[type, Callable[[nn.Module], None]] = {}


def register_fixer(*types: type):
    def deco(fn):
        for t in types:
            if t in FIXERS:
                raise KeyError(f"a fixer for {t.__name__} is already registered")
            FIXERS[t] = fn
        return fn
    return deco


# fixers for classes of optional libraries, by qualified class name (no import needed)
NAMED_FIXERS: dict[str, Callable[[nn.Module], None]] = {}


def _fixer(cls: type):
    for klass in cls.__mro__:
        if klass in FIXERS:
            return FIXERS[klass]
        named = NAMED_FIXERS.get(f"{klass.__module__}.{klass.__qualname__}")
        if named is not None:
            return named
    return None


def has_fixer(module: nn.Module) -> bool:
    """Does surgery rewrite this module's width attributes from its tensors itself?"""
    return _fixer(type(module)) is not None


def _hf_conv1d(m) -> None:
    m.nx, m.nf = m.weight.shape  # Hugging Face's transposed linear layer: weight is (in, out)


NAMED_FIXERS["transformers.pytorch_utils.Conv1D"] = _hf_conv1d


@register_fixer(nn.modules.conv._ConvNd)
def _conv(m: nn.modules.conv._ConvNd) -> None:
    if m.transposed:
        m.in_channels = m.weight.shape[0]
        m.out_channels = m.weight.shape[1] * m.groups
    else:
        m.out_channels = m.weight.shape[0]
        m.in_channels = m.weight.shape[1] * m.groups


@register_fixer(nn.Linear)
def _linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


@register_fixer(nn.modules.batchnorm._NormBase)
def _norm(m) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = t.shape[0]


@register_fixer(nn.LayerNorm, nn.RMSNorm)
def _layer_norm(m) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


@register_fixer(nn.GroupNorm)
def _group_norm(m: nn.GroupNorm) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


@register_fixer(nn.Embedding)
def _embedding(m: nn.Embedding) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@register_fixer(nn.PReLU)
def _prelu(m: nn.PReLU) -> None:
    m.num_parameters = m.weight.numel()


@register_fixer(nn.MultiheadAttention)
def _mha(m: nn.MultiheadAttention) -> None:
    e = m.in_proj_weight.shape[1]
    m.embed_dim = m.kdim = m.vdim = e
    m.head_dim = e // m.num_heads
