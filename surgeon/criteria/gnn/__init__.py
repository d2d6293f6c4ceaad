"""A learned criterion: a graph metanetwork that corrects a base criterion's unit scores.

``shrink(model, x, criterion="gnn")`` scores units with the checkpoint shipped in the package
(``weights/gnn.pt``, made by ``python -m surgeon.criteria.gnn.train``). Pass calibration data to
use the data-aware features and Taylor as the base (without data the base is L2 magnitude)::

    from surgeon.criteria.gnn import GNNCriterion
    small = surgeon.shrink(model, x, 0.5, criterion=GNNCriterion(data=[(xb, yb), ...]))

Unit kinds: channels (and attention widths) of every group, and whole layers with
``layers=True`` (their base score is their Block Influence on the data). Head and expert groups
get their kind as a feature but none was in the training zoo. It is not a default criterion:
``benchmarks/gnn_table.md`` has the held-out comparison that decides that.

It needs torch-geometric (``pip install "surgeon[gnn]"``); ``import surgeon`` does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ...graph.groups import PruneGroup
from ._pyg import require_pyg

__all__ = ["GNNCriterion", "require_pyg", "load", "CHECKPOINT", "ABLATION_CHECKPOINT"]

WEIGHTS = Path(__file__).resolve().parent / "weights"
CHECKPOINT = WEIGHTS / "gnn.pt"
ABLATION_CHECKPOINT = WEIGHTS / "gnn_nomp.pt"


def load(path: str | Path = CHECKPOINT):
    """The metanetwork stored at ``path`` (no network access; weights only)."""
    from .model import MetaNet

    from .features import EDGE_TYPES, GROUP_FEATURES, UNIT_FEATURES

    require_pyg()
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    want = {"unit": list(UNIT_FEATURES), "group": list(GROUP_FEATURES), "edge": list(EDGE_TYPES)}
    if ckpt.get("features") != want:
        raise ValueError(f"the GNN checkpoint {path} was trained on other features than this version computes "
                         f"({ckpt.get('features')} against {want}): retrain it with "
                         "`python -m surgeon.criteria.gnn.train --out <path>`")
    net = MetaNet(**ckpt["config"])
    net.load_state_dict(ckpt["state_dict"])
    net.base = ckpt.get("base", "auto")
    net.eval()
    return net


class GNNCriterion:
    """Scores = base criterion x exp(metanetwork correction), per unit.

    ``data``: calibration batches (``(inputs, labels)`` pairs, or inputs alone), used for the
    Taylor and activation features; ``loss_fn(output, labels)`` defaults to cross-entropy.
    ``net``: a :class:`~surgeon.criteria.gnn.model.MetaNet` (default: the shipped checkpoint).
    """

    name = "gnn"

    def __init__(self, data: Any = None, loss_fn: Callable | None = None, net: nn.Module | None = None,
                 checkpoint: str | Path | None = None):
        require_pyg()
        self.data = data
        self.loss_fn = loss_fn
        self.net = net if net is not None else load(checkpoint or CHECKPOINT)

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        from .features import model_features, to_pyg

        base = getattr(self.net, "base", "auto")
        if base == "taylor" and self.data is None:
            base = "l2"  # data-free: the network falls back to correcting L2
        f = model_features(model, groups, self.data, self.loss_fn, base=base)
        out = [np.asarray(b, dtype=np.float64).copy() for b in f.base]
        if not f.prunable:
            return out
        graph = to_pyg(f)
        with torch.no_grad():
            corr = self.net(graph).double().numpy()
        k = 0
        for gi in f.prunable:
            n = groups[gi].n_units
            out[gi] = out[gi] * np.exp(corr[k:k + n])
            k += n
        return out
