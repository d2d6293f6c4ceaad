"""Apply a Plan: slice tensors, then fix the attributes modules read in ``forward``.

This is the only place surgeon mutates a model, and it works on a deep copy unless the caller
passes ``inplace=True``. The result keeps the user's own classes, so its methods and
``state_dict`` names still work.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from ._clone import clone_module
from .errors import PlanError
from .plan import Plan

__all__ = ["apply", "FIXERS", "NAMED_FIXERS", "register_fixer", "has_fixer"]


class _Modules(dict):
    """Qualified name -> submodule of one model, resolved once (deep models have thousands)."""

    def __init__(self, model: nn.Module):
        super().__init__(model.named_modules(remove_duplicate=False))

    def owner(self, qualname: str) -> tuple[nn.Module, str]:
        mod_name, _, leaf = qualname.rpartition(".")
        mod = self.get(mod_name)
        if mod is None:
            raise PlanError(f"the plan slices '{qualname}' but the model has no module '{mod_name}'")
        return mod, leaf


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = defaultdict(list)
    for n, p in model.named_parameters(remove_duplicate=False):
        names[id(p)].append(n)
    for n, b in model.named_buffers(remove_duplicate=False):
        names[id(b)].append(n)
    return names


def _set(mods: _Modules, qualname: str, new: torch.Tensor) -> None:
    mod, leaf = mods.owner(qualname)
    if leaf in mod._parameters:
        mod._parameters[leaf] = new
    elif leaf in mod._buffers:
        mod._buffers[leaf] = new
    else:
        setattr(mod, leaf, new)


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
    for name, shape in plan.shapes:
        mod, leaf = source.owner(name)
        t = getattr(mod, leaf, None)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else None
            raise PlanError(f"the plan was made for a model where '{name}' has shape {tuple(shape)}, "
                            f"this one has {got}; build a new plan for this model")
    by_tensor: dict[str, list] = defaultdict(list)
    for s in plan.slices:
        by_tensor[s.tensor].append(s)
    # the copy shares the tensors about to be sliced (each is replaced, with all its aliases)
    sliced = [getattr(*source.owner(name)) for name in by_tensor]
    target = model if inplace else clone_module(model, replace=sliced)
    mods = source if inplace else _Modules(target)
    aliases = _aliases(target)
    touched: set[int] = set()
    done: set[int] = set()
    for name, slices in by_tensor.items():
        mod, leaf = mods.owner(name)
        old = getattr(mod, leaf)
        if id(old) in done:
            continue
        new = old.detach()
        for s in sorted(slices, key=lambda s: s.dim):
            index = torch.as_tensor(s.keep, dtype=torch.long, device=new.device)
            new = new.index_select(s.dim, index)
        new = new.clone()
        if isinstance(old, nn.Parameter):  # one object for every alias, so tied weights stay tied
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        for alias in aliases.get(id(old), [name]):
            _set(mods, alias, new)
            touched.add(id(mods.owner(alias)[0]))
        done.update((id(old), id(new)))  # a later alias name now finds the new tensor
    for a in plan.attrs:
        mod = mods[a.module] if a.module in mods else target.get_submodule(a.module)
        setattr(mod, a.attr, tuple(a.new) if isinstance(a.new, list) else a.new)
    for a in plan.config:  # the copy's own config object (deep-copied with the model)
        setattr(getattr(target, a.module), a.attr, a.new)
    for mod in target.modules():
        if id(mod) in touched:
            fix = _fixer(type(mod))
            if fix is not None:
                fix(mod)
    return target


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
