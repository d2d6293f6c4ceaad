"""Groups, units and the coupling graph on hand-built models with known answers."""

from __future__ import annotations

import networkx as nx
import numpy as np
import torch
import torchvision

import surgeon
from surgeon.graph.groups import components


def test_components_match_a_reference():
    rng = np.random.default_rng(0)
    n = 500
    a, b = rng.integers(0, n, 300), rng.integers(0, n, 300)
    labels = components(n, a, b)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(a.tolist(), b.tolist()))
    for comp in nx.connected_components(g):
        comp = list(comp)
        assert len(set(labels[comp].tolist())) == 1
    assert len(set(labels.tolist())) == nx.number_connected_components(g)


def test_long_chain_converges():
    n = 100_000
    labels = components(n, np.arange(n - 1), np.arange(1, n))
    assert (labels == 0).all()


def test_networkx_view_has_the_groups_as_components():
    model = torchvision.models.resnet18(weights=None).eval()
    a = surgeon.analyze(model, torch.randn(1, 3, 64, 64))
    g = a.coupling.to_networkx()
    comp_of = {}
    for i, comp in enumerate(nx.connected_components(g)):
        for key in comp:
            comp_of[key] = i
    for group in a.groups:
        assert len({comp_of[m.key] for m in group.members}) == 1
    assert len({comp_of[m.key] for grp in a.groups for m in grp.members[:1]}) == len(a.groups)


def test_residual_stream_is_one_group_and_classifier_is_kept():
    model = torchvision.models.resnet18(weights=None).eval()
    a = surgeon.analyze(model, torch.randn(1, 3, 64, 64))
    by_tensor = {(m.name, m.dim): g for g in a.groups for m in g.tensors}
    stem = by_tensor["conv1.weight", 0]
    assert stem is by_tensor["layer1.0.conv2.weight", 0] is by_tensor["layer1.1.bn2.weight", 0]
    assert stem is by_tensor["layer1.0.conv1.weight", 1] is by_tensor["layer2.0.downsample.0.weight", 1]
    assert stem.prunable and stem.n_units == 64
    assert not by_tensor["fc.bias", 0].prunable and "model output" in by_tensor["fc.bias", 0].reason
    assert not by_tensor["conv1.weight", 1].prunable and "model input" in by_tensor["conv1.weight", 1].reason
    inner = by_tensor["layer1.0.conv1.weight", 0]
    assert inner is by_tensor["layer1.0.bn1.weight", 0] is by_tensor["layer1.0.conv2.weight", 1]
    assert inner is not stem and inner.exact
