"""Where each tensor of a model lies in a checkpoint folder.

Most tensors are stored under their own qualified name; a tied tensor under one of its names;
and a few Hugging Face layouts store a model tensor as several (transformers' conversion
mapping: Mixture-of-Experts weights fused in the model, ``experts.gate_up_proj``, are saved one
expert and one projection at a time, ``experts.3.gate_proj.weight``). A :class:`Source` says how
to rebuild the model's tensor from the stored ones; only stacking experts (``MergeModulelist``)
and concatenating projections (``Concatenate``) are understood, anything else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .files import Checkpoint, CheckpointError

__all__ = ["Source", "sources"]


@dataclass(frozen=True)
class Source:
    """The stored tensors that make one model tensor: ``keys[p][e]`` is part ``p`` (a projection)
    of expert ``e``; ``stack``/``cat``: the dims they are stacked and concatenated along (None:
    the one stored tensor as it is)."""

    keys: tuple[tuple[str, ...], ...]
    stack: int | None = None
    cat: int | None = None

    @property
    def first(self) -> str:
        return self.keys[0][0]

    def read(self, ck: Checkpoint) -> torch.Tensor:
        if self.stack is None:
            return ck.read(self.first)
        parts = [torch.stack([ck.read(k) for k in ks], dim=self.stack) for ks in self.keys]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=self.cat)


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by every name it has (tied ones under each)."""
    out: dict[str, torch.Tensor] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for store in (mod._parameters, mod._buffers):
            for leaf, t in store.items():
                if t is not None:
                    out[f"{mod_name}.{leaf}" if mod_name else leaf] = t
    return out


def _converters(model: nn.Module) -> list[tuple[str, list[str], int, int | None]]:
    """(target suffix, source patterns, stack dim, cat dim) of each conversion transformers
    applies when it loads ``model`` that this module can invert."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        mapping = get_model_conversion_mapping(model)
    except (ImportError, AttributeError, TypeError):  # not a transformers model, or no conversions
        return []
    out = []
    for c in mapping:
        ops = [type(o).__name__ for o in getattr(c, "operations", ())]
        if ops not in (["MergeModulelist"], ["MergeModulelist", "Concatenate"]) or len(c.target_patterns) != 1:
            continue
        cat = c.operations[1].dim if len(ops) == 2 else None
        out.append((c.target_patterns[0], list(c.source_patterns), c.operations[0].dim, cat))
    return out


def sources(model: nn.Module, ck: Checkpoint) -> dict[str, Source]:
    """The :class:`Source` of every parameter and stored buffer of ``model`` (by every name it
    has); a :class:`CheckpointError` naming the first parameter the checkpoint does not hold."""
    tensors = _tensors(model)
    stored_as: dict[int, str] = {}
    for name, t in tensors.items():
        if name in ck:
            stored_as.setdefault(id(t), name)
    converters = None
    out: dict[str, Source] = {}
    for name, t in tensors.items():
        key = name if name in ck else stored_as.get(id(t))
        if key is not None:
            out[name] = Source(((key,),))
            continue
        if converters is None:
            converters = _converters(model)
        src = _converted(name, t, ck, converters)
        if src is not None:
            out[name] = src
        elif isinstance(t, nn.Parameter):
            raise CheckpointError(f"the checkpoint {str(ck.folder)!r} holds no tensor for the model's parameter "
                                  f"{name!r} (shape {tuple(t.shape)}); build the model from this checkpoint's "
                                  f"config.json, and save checkpoints with save_pretrained")
    return out


def _converted(name: str, t: torch.Tensor, ck: Checkpoint, converters: list) -> Source | None:
    for target, patterns, stack, cat in converters:
        if not name.endswith(target) or (len(name) > len(target) and name[-len(target) - 1] != "."):
            continue
        prefix, n = name[: len(name) - len(target)], t.shape[stack]
        keys = tuple(tuple(prefix + p.replace("*", str(e)) for e in range(n)) for p in patterns)
        if all(k in ck for ks in keys for k in ks):
            return Source(keys, stack, cat)
    return None
