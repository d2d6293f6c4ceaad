"""Attribute fix-ups: after its tensors are sliced, a module's width attributes are rewritten
from the new shapes (``Conv2d.out_channels``, ``LayerNorm.normalized_shape``, ...).

One registered function per module class (matched along the MRO; registering a class twice is
an error), or per qualified class name for optional libraries so they need not be imported.
Coupling rules ask :func:`has_fixer` whether an attribute a module reads will follow its
tensors, so this registry sits below both the rules and surgery.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["FIXERS", "NAMED_FIXERS", "register_fixer", "has_fixer", "fixer_for"]

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


def fixer_for(cls: type):
    for klass in cls.__mro__:
        if klass in FIXERS:
            return FIXERS[klass]
        named = NAMED_FIXERS.get(f"{klass.__module__}.{klass.__qualname__}")
        if named is not None:
            return named
    return None


def has_fixer(module: nn.Module) -> bool:
    """Does surgery rewrite this module's width attributes from its tensors itself?"""
    return fixer_for(type(module)) is not None


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


from .recurrent import RECURRENT_FIXERS  # noqa: E402  (LSTM/GRU/RNN and their cells)
for _cls, _fix in RECURRENT_FIXERS.items():
    register_fixer(_cls)(_fix)
