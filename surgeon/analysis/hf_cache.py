"""Hugging Face models at their defaults: capture without the KV cache, touch nothing.

A Hugging Face model built with its default config (``use_cache=True``) returns cache objects
(``DynamicCache``) that no capture can hold. Every entry point (``analyze``, ``plan``,
``shrink``, the command line) passes its example input through :func:`capture_input`, which
asks the model for no cache *in the call* (``use_cache=False`` as a keyword argument) instead
of switching the config: the user's model and config are never written, not even for a while,
so there is nothing to restore, and the shrunk copy keeps ``use_cache=True`` and generates with
the cache.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

__all__ = ["capture_input"]


def _wants_cache(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    if config is None or not any(k.__name__.lower() == "pretrainedconfig" for k in type(config).__mro__):
        return False
    return bool(getattr(config, "use_cache", False))


def _forward_params(model: nn.Module) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a signature: leave the input alone
        return None


def capture_input(model: nn.Module, example_input: Any) -> Any:
    """``example_input`` with ``use_cache=False`` added when ``model`` is a Hugging Face model
    whose config turns the cache on and whose ``forward`` takes ``use_cache``; unchanged
    otherwise (and when the input already says). A tensor or a tuple of tensors becomes the
    dict of the keyword arguments they stand for. Idempotent.

    >>> import torch
    >>> capture_input(torch.nn.Linear(2, 2), {"x": torch.ones(1)}).keys()
    dict_keys(['x'])
    """
    if not _wants_cache(model):
        return example_input
    params = _forward_params(model)
    if params is None or not any(p.name == "use_cache" for p in params):
        return example_input
    if isinstance(example_input, dict):
        return example_input if "use_cache" in example_input else {**example_input, "use_cache": False}
    args = (example_input,) if isinstance(example_input, torch.Tensor) else example_input
    if not isinstance(args, (tuple, list)):
        return example_input  # run_model reports what it does not take
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(positional) or any(p.kind is p.POSITIONAL_ONLY for p in positional[:len(args)]) \
            or any(p.name == "use_cache" for p in positional[:len(args)]):
        return example_input
    return {**{p.name: a for p, a in zip(positional, args)}, "use_cache": False}
