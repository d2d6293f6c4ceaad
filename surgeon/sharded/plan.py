"""Plan a model on the meta device from its checkpoint folder: the capture needs only shapes,
and the criterion reads each tensor from the safetensors shards when it scores it, so no more
than one tensor (or, for ``activation``, one decoder layer) is ever in memory. The plan is the
one ``surgeon.plan`` makes for the same model with its weights loaded.

Criteria: ``l2`` and ``l1`` (:mod:`.score`), ``activation`` (calibrated one decoder layer at a
time, :mod:`.calibrate`) and ``random``; the others need the whole model (gradients, the
router's outputs, whole-layer influence) and are refused, as are ``layers=True``,
``runtime=`` and ``verify=True``, which run the whole model.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..analysis import Analysis, analyze
from ..criteria import Activation, Magnitude, MetaDeviceError, Random
from ..criteria.validate import _meta_input
from ..options import ShrinkConfig
from ..slicing.clone import clone_module
from ..slicing.hollow import _hollow
from .calibrate import LayerwiseActivation
from .files import Checkpoint, CheckpointError
from .names import Source, sources

__all__ = ["prepare", "open_weights"]

_WHOLE = ("needs the whole model in memory; plan from the checkpoint with criterion='l2', 'l1', "
          "'activation' (calibrated layer by layer) or 'random', or load the model to use it")


def open_weights(model: nn.Module, weights: str | os.PathLike) -> tuple[Checkpoint, dict[str, Source]]:
    """The checkpoint folder ``weights`` and where each tensor of ``model`` lies in it, checked:
    every stored tensor must have the model's shape."""
    ck = Checkpoint(weights)
    srcs = sources(model, ck)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    for name, src in srcs.items():
        if src.stack is None and name in shapes and ck.shape(src.first) != shapes[name]:
            raise CheckpointError(f"the checkpoint stores {src.first!r} as {ck.shape(src.first)} but the model's "
                                  f"{name!r} is {shapes[name]}: the model was not built from this checkpoint's "
                                  f"config.json")
    return ck, srcs


def _criterion(cfg: ShrinkConfig, ck: Checkpoint, srcs: dict[str, Source]) -> Any:
    crit = cfg.criterion
    if crit in ("l1", "l2") or isinstance(crit, Magnitude):
        return _magnitude(int(crit[1]) if isinstance(crit, str) else crit.p, ck, srcs)
    if crit == "random" or isinstance(crit, Random):
        return crit if isinstance(crit, Random) else Random()
    if crit == "activation" or isinstance(crit, Activation):
        batches = crit.batches if isinstance(crit, Activation) else None
        return LayerwiseActivation(ck, srcs, data=cfg.data, batches=batches)
    name = crit if isinstance(crit, str) else getattr(crit, "name", type(crit).__name__)
    raise MetaDeviceError(f"criterion {name!r} with weights=: it {_WHOLE}")


def _magnitude(p: int, ck: Checkpoint, srcs: dict[str, Source]):
    from .score import CheckpointMagnitude

    return CheckpointMagnitude(p, ck, srcs)


def hollow_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the CPU whose meta tensors are zeros that hold no memory (the
    kernel's zero page; see :mod:`surgeon.slicing.hollow`). The capture runs on it rather than on
    meta so that every op takes the path it takes in memory: on meta, attention decomposes into
    matmuls the FLOP counter sees, where the CPU runs its fused kernel, and the costs, hence the
    plan, would differ."""
    tensors = [t for m in model.modules() for store in (m._parameters, m._buffers) for t in store.values()
               if t is not None]
    twin = clone_module(model, replace=tensors)  # shares every tensor, copies none
    filled: dict[int, Any] = {}
    for m in twin.modules():
        for store in (m._parameters, m._buffers):
            for name, t in store.items():
                if t is not None and t.is_meta:
                    if id(t) not in filled:  # tied tensors stay tied
                        filled[id(t)] = _hollow(t, torch.device("cpu"))
                    store[name] = filled[id(t)]
    return twin


def prepare(model: nn.Module, example_input: Any, cfg: ShrinkConfig, weights: str | os.PathLike,
            analysis: Analysis | None = None) -> tuple[Analysis, Any]:
    """The analysis of ``model`` (on the meta device, or anywhere) and the criterion that scores
    it from the checkpoint folder ``weights``: what ``surgeon.plan(..., weights=)`` plans from."""
    for bad, what in ((cfg.layers, "layers=True"), (cfg.runtime is not None, "runtime="),
                      (cfg.verify, "verify=True")):
        if bad:
            raise MetaDeviceError(f"{what} with weights=: it runs the whole model, so it {_WHOLE}")
    if _meta_input(example_input):
        raise MetaDeviceError("example_input is on the meta device: with weights= the model may be on meta, "
                              "but the capture runs on a real example input (e.g. torch.randint(...) token ids)")
    ck, srcs = open_weights(model, weights)
    crit = _criterion(cfg, ck, srcs)
    a = analysis or analyze(hollow_twin(model), example_input, cfg.ignore, cfg.uniform, cfg.layers)
    return a, crit
