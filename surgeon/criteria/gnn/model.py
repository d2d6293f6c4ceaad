"""The metanetwork: a few message-passing layers over the group/unit graph that output a
correction to the base criterion's scores.

``score = base * exp(correction)``; the output layer starts at zero, so an untrained network
returns the base criterion's scores exactly. ``layers=0`` is the no-message-passing ablation:
the same features and heads, each unit scored on its own (an MLP).
"""

from __future__ import annotations

import torch
from torch import nn

from ._pyg import require_pyg

__all__ = ["MetaNet", "CLAMP"]

CLAMP = 4.0  # |correction| <= CLAMP: a unit's score moves by at most e^4 either way


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, o))


def _edge_layer(hidden: int, edge_dim: int):
    pyg = require_pyg()

    class EdgeLayer(pyg.nn.MessagePassing):
        """m_ij = MLP([h_i, h_j, e_ij]); h_i <- LayerNorm(h_i + MLP([h_i, mean_j m_ij]))."""

        def __init__(self):
            super().__init__(aggr="mean")
            self.msg = _mlp(2 * hidden + edge_dim, hidden, hidden)
            self.upd = _mlp(2 * hidden, hidden, hidden)
            self.norm = nn.LayerNorm(hidden)

        def forward(self, h, edge_index, edge_attr):
            agg = self.propagate(edge_index, h=h, edge_attr=edge_attr)
            return self.norm(h + self.upd(torch.cat([h, agg], -1)))

        def message(self, h_i, h_j, edge_attr):
            return self.msg(torch.cat([h_i, h_j, edge_attr], -1))

    return EdgeLayer()


class MetaNet(nn.Module):
    def __init__(self, node_dim: int, edge_dim: int, hidden: int = 32, layers: int = 3):
        super().__init__()
        self.config = dict(node_dim=node_dim, edge_dim=edge_dim, hidden=hidden, layers=layers)
        self.enc = _mlp(node_dim, hidden, hidden)
        self.layers = nn.ModuleList(_edge_layer(hidden, edge_dim) for _ in range(layers))
        self.head = _mlp(hidden + node_dim, hidden, 1)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, data) -> torch.Tensor:
        """The correction for every unit node, in ``data.unit_nodes`` order."""
        h = self.enc(data.x)
        for layer in self.layers:
            h = layer(h, data.edge_index, data.edge_attr)
        out = self.head(torch.cat([h, data.x], -1))[data.unit_nodes, 0]
        return CLAMP * torch.tanh(out / CLAMP)
