"""Running a model on an example input: how inputs are passed, eval mode, output shapes."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

__all__ = ["normalize_inputs", "run_model", "shapes_of", "eval_mode", "flop_counter"]


def normalize_inputs(example_input: Any) -> tuple[tuple, dict]:
    """Turn a tensor, a tuple/list of tensors, or a dict of keyword arguments into (args, kwargs)."""
    if isinstance(example_input, torch.Tensor):
        return (example_input,), {}
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input), {}
    if isinstance(example_input, dict):
        return (), dict(example_input)
    raise TypeError(
        f"example_input must be a tensor, a tuple of tensors or a dict of keyword arguments, "
        f"got {type(example_input).__name__}"
    )


def run_model(model: nn.Module, example_input: Any) -> Any:
    """Call ``model`` on ``example_input`` as surgeon does everywhere (args or kwargs)."""
    args, kwargs = normalize_inputs(example_input)
    return model(*args, **kwargs)


def shapes_of(out: Any) -> Any:
    """The nested structure of a model output with every tensor replaced by its shape."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return type(out)(shapes_of(o) for o in out) if type(out) in (tuple, list) else \
            tuple(shapes_of(o) for o in out)
    if isinstance(out, dict):
        return {k: shapes_of(v) for k, v in out.items()}
    if hasattr(out, "to_tuple"):
        return shapes_of(out.to_tuple())
    return None


@contextlib.contextmanager
def eval_mode(model: nn.Module, modules: list[nn.Module] | None = None):
    """Put every submodule in eval mode and restore each one's own flag afterwards
    (``modules``: ``list(model.modules())`` if the caller has it already)."""
    modules = list(model.modules()) if modules is None else modules
    flags = [(m, m.training) for m in modules]
    if not any(flag for _, flag in flags):  # already in eval mode everywhere: nothing to switch
        yield model
        return
    try:
        if any(type(m).train is not nn.Module.train for m in modules):
            model.eval()  # some module has its own train(): let it run
        else:  # what Module.eval does, without a __setattr__ per module (deep models have thousands)
            for m in modules:
                object.__setattr__(m, "training", False)
        yield model
    finally:
        for m, flag in flags:
            object.__setattr__(m, "training", flag)


def flop_counter():
    """``torch.utils.flop_counter.FlopCounterMode(display=False)`` whose module tracker tolerates
    tensors autograd cannot hook. The tracker hooks the backward of every module input and
    output that requires grad; a view of a parameter taken under ``torch.no_grad()`` (a
    position table sliced to the sequence length, say) requires grad but has no gradient
    function, and torch raises ``AssertionError: Expected gradient function to be set`` from
    inside the model's forward. Only the per-module attribution of a backward pass is lost;
    the totals are counted by the dispatch mode, which is untouched."""
    from torch.utils.flop_counter import FlopCounterMode
    from torch.utils.module_tracker import ModuleTracker

    class _Tracker(ModuleTracker):
        def _fw_pre_hook(self, mod, input):
            try:
                super()._fw_pre_hook(mod, input)
            except AssertionError as exc:
                if "gradient function" not in str(exc):
                    raise

        def _fw_post_hook(self, mod, input, output):
            try:
                super()._fw_post_hook(mod, input, output)
            except AssertionError as exc:
                if "gradient function" not in str(exc):
                    raise

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _Tracker()
    return counter
