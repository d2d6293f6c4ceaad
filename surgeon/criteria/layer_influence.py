"""Block Influence: how much a whole layer changes the hidden state that flows through it.

ShortGPT (Men et al., 2024) scores decoder layer ``i`` by its *Block Influence*

    BI_i = 1 - E_t[ cos(h_i,t, h_i+1,t) ]

the angular change a layer makes to each token's hidden state, averaged over tokens of
calibration data; "The Unreasonable Ineffectiveness of the Deeper Layers" (Gromov et al.) and
LaCo use the same angular distance. A layer whose output points where its input did (BI near 0)
adds little beyond what the residual stream carries already, so it goes first; a layer that is
an identity (zeroed output projections) scores exactly 0.

Forward hooks on the layers read each one's input and output; nothing is stored but one running
sum per layer. Tokens are the positions of a ``(batch, sequence, hidden)`` state (padding, where
the batch gives an ``attention_mask`` of that shape, is left out); a state of any other rank is
compared per sample, flattened (a residual CNN block's ``(N, C, H, W)`` map). Scores are higher
for layers that matter more, as every criterion's are.

Without calibration data the same measure runs on the example input (a data-free proxy: one
forward of what the user passed to ``shrink`` already); where no layer is reached by the forward
the weights' RMS is the last resort (:func:`surgeon.criteria.base.layer_rms`).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..graph.groups import PruneGroup
from ..graph.run import eval_mode
from ._data import Batches, DataError, forward
from .base import Magnitude, layer_rms

__all__ = ["BlockInfluence", "block_influence", "layer_scores"]


def _state(x: Any) -> torch.Tensor | None:
    """The hidden state a layer takes or returns (the first tensor of a tuple, HF style)."""
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else None
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return _state(x[0])
    return None


def _mask_of(inputs: Any) -> torch.Tensor | None:
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


def _angular(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> tuple[float, float]:
    """(sum of 1 - cos over tokens or samples, their weight) for one layer call."""
    if x.dim() == 3:  # (batch, sequence, hidden): one cosine per token
        xs, ys = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    else:  # one cosine per sample
        rows = x.shape[0] if x.dim() > 1 else 1
        xs, ys = x.reshape(rows, -1), y.reshape(rows, -1)
    if x.dim() == 3 and mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
        w = mask.reshape(-1).to(x.device, torch.float64)  # padding tokens weigh nothing
    else:
        w = torch.ones(xs.shape[0], dtype=torch.float64, device=x.device)
    cos = torch.nn.functional.cosine_similarity(xs.double(), ys.double(), dim=-1, eps=1e-12)
    return float(((1.0 - cos).clamp_min(0.0) * w).sum()), float(w.sum())


def block_influence(model: nn.Module, layers: list[str], batches: Iterable[Any], *, name: str = "block_influence",
                    max_batches: int | None = None) -> np.ndarray:
    """``BI`` of each named layer (a submodule of ``model``) over ``batches`` (inputs as
    ``run_model`` takes them: a tensor, a tuple of positional arguments or a dict); NaN for a
    layer that no batch reached, or whose output is not shaped like its input.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    >>> block_influence(net, ["0", "1"], [torch.randn(8, 4)]).shape
    (2,)
    """
    sums = np.zeros(len(layers))
    weights = np.zeros(len(layers))
    mask: list[torch.Tensor | None] = [None]

    entered: dict[int, torch.Tensor | None] = {}

    def enter(i: int):
        def keep(_mod, args, kwargs):  # a copy: a block may write into its input (an in-place ReLU)
            x = _state(args) if args else _state(kwargs.get("hidden_states", next(iter(kwargs.values()), None)))
            entered[i] = None if x is None else x.detach().clone()
        return keep

    def leave(i: int):
        def record(_mod, _args, _kwargs, out):
            x, y = entered.pop(i, None), _state(out)
            if x is not None and y is not None and x.shape == y.shape and x.numel():
                s, w = _angular(x, y.detach(), mask[0])
                sums[i] += s
                weights[i] += w
        return record

    hooks = []
    for i, layer in enumerate(layers):
        mod = model.get_submodule(layer)
        hooks += [mod.register_forward_pre_hook(enter(i), with_kwargs=True),
                  mod.register_forward_hook(leave(i), with_kwargs=True)]
    try:
        with torch.no_grad(), eval_mode(model):
            for k, inputs in enumerate(batches):
                if max_batches is not None and k >= max_batches:
                    break
                mask[0] = _mask_of(inputs)
                forward(model, inputs, k, name)
    finally:
        for h in hooks:
            h.remove()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weights > 0, sums / np.maximum(weights, 1e-300), np.nan)


def layer_scores(model: nn.Module, layers: list[str], data: Any = None,
                 example_input: Any = None) -> tuple[np.ndarray, str]:
    """Scores of whole layers for the planner (higher = keep) and how they were found, for the
    plan's record: Block Influence on ``data`` (an iterable of batches, as the data-aware
    criteria take it) when given, else on ``example_input``; the weights' RMS where neither
    reaches every layer with an output shaped like its input.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    >>> layer_scores(net, ["0", "1"], example_input=torch.randn(8, 4))[1]
    ' + block_influence(example input)'
    """
    if data is not None:
        batches, on = (b.inputs for b in Batches(data, "block_influence")), "data"
    elif example_input is not None:
        batches, on = [example_input], "example input"
    else:
        return layer_rms(model, layers), " + layer_rms"
    bi = block_influence(model, layers, batches)
    if not np.isfinite(bi).all():
        return layer_rms(model, layers), " + layer_rms"
    return bi, f" + block_influence({on})"


class BlockInfluence:
    """Whole layers scored by Block Influence on ``data`` (ShortGPT); every other group by
    ``base`` (L2 magnitude unless given).

    >>> import torch, surgeon
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    >>> BlockInfluence([torch.randn(4, 8)]).name
    'block_influence'
    """

    name = "block_influence"

    def __init__(self, data: Any = None, *, base: Any = None, max_batches: int | None = None):
        self.batches = Batches(data, self.name, max_batches)
        self.base = base if base is not None else Magnitude(2)

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        rest = [g for g in groups if not g.layers]
        scored = iter(self.base.score(model, rest) if rest else [])
        layers = [name for g in groups if g.layers for name in g.layers]
        bi = block_influence(model, layers, (b.inputs for b in self.batches), name=self.name) if layers else None
        if bi is not None and not np.isfinite(bi).all():
            missed = layers[int(np.flatnonzero(~np.isfinite(bi))[0])]
            raise DataError(f"criterion {self.name!r}: no batch of data reached layer '{missed}' with an "
                            f"output shaped like its input, so its influence is unknown; pass batches "
                            f"that run through every layer, or another criterion")
        out, at = [], 0
        for g in groups:
            if g.layers:
                out.append(bi[at: at + len(g.layers)])
                at += len(g.layers)
            else:
                out.append(next(scored))
        return out
