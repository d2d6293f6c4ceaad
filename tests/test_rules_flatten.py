"""Flattening C x H x W into a Linear layer: channel c owns the block of H*W consecutive inputs
of the Linear, whether flattened with torch.flatten, nn.Flatten, view or reshape. A reshape that
hard-codes the flattened width cannot follow pruning and freezes the channels."""

import numpy as np
import pytest
import torch
from torch import nn

from helpers import (analyze, assert_frozen, assert_tied, check_shrink, check_zero_invariance,
                     group_of, units_of)

X = torch.randn(2, 3, 8, 8)
C, HW = 16, 4 * 4


def _flatten(kind, y):
    if kind == "torch.flatten":
        return torch.flatten(y, 1)
    if kind == "method":
        return y.flatten(1)
    if kind == "view":
        return y.view(y.size(0), -1)
    if kind == "reshape":
        return y.reshape(y.shape[0], -1)
    raise ValueError(kind)


class ConvFC(nn.Module):
    """conv -> pool to 4x4 -> flatten -> fc -> fc."""

    def __init__(self, kind="torch.flatten"):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, C, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.flat = nn.Flatten() if kind == "module" else None
        self.fc1 = nn.Linear(C * HW, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        y = self.flat(y) if self.flat is not None else _flatten(self.kind, y)
        return self.fc2(torch.relu(self.fc1(y)))


class HardCoded(nn.Module):
    """y.view(-1, 256): the flattened width is a literal, so the channels must stay."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.conv = nn.Conv2d(24, C, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(C * HW, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        y = self.conv(torch.relu(self.stem(x)))
        y = self.pool(torch.relu(y)).view(-1, 256)
        return self.fc2(torch.relu(self.fc1(y)))


class SeqFlatten(nn.Module):
    """Channels-last tokens (N, L, C) reshaped to (N, L * C) into a Linear: here L is the outer
    factor, so each of the C units owns L inputs at stride C."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 12)
        self.fc = nn.Linear(5 * 12, 20)
        self.out = nn.Linear(20, 3)

    def forward(self, x):
        h = torch.relu(self.embed(x))
        return self.out(torch.relu(self.fc(h.reshape(h.shape[0], -1))))


KINDS = ["torch.flatten", "method", "module", "view", "reshape"]


@pytest.mark.parametrize("kind", KINDS)
def test_flatten_structure(kind):
    a = analyze(ConvFC(kind), X)
    g = assert_tied(a, ("conv.weight", 0), ("conv.bias", 0), ("fc1.weight", 1), exactly=True)
    assert g.n_units == C and g.prunable and g.exact
    np.testing.assert_array_equal(units_of(a, "conv.weight", 0), np.arange(C))
    np.testing.assert_array_equal(units_of(a, "fc1.weight", 1), np.arange(C * HW) // HW)
    hidden = assert_tied(a, ("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1), exactly=True)
    assert hidden.n_units == 32 and hidden.prunable
    assert_frozen(group_of(a, "fc2.weight", 0), "model output")


@pytest.mark.parametrize("kind", ["torch.flatten", "module", "view"])
def test_flatten_behaviour(kind):
    check_zero_invariance(ConvFC(kind), X, expect=["conv.weight", "fc1.weight"])
    small = check_shrink(ConvFC(kind), X)
    assert small.fc1.in_features == small.conv.out_channels * HW
    assert small.conv.out_channels < C


def test_hard_coded_view_structure():
    a = analyze(HardCoded(), X)
    g = group_of(a, "conv.weight", 0)
    assert_frozen(g, "reshape hard-codes width 256")
    assert ("fc1.weight", 1) in {(m.name, m.dim) for m in g.tensors}
    assert group_of(a, "fc1.weight", 0).prunable
    assert group_of(a, "stem.weight", 0).prunable


def test_hard_coded_view_behaviour():
    check_zero_invariance(HardCoded(), X, expect=["fc1.weight", "stem.weight"])
    small = check_shrink(HardCoded(), X)
    assert small.conv.out_channels == C and small.fc1.in_features == C * HW


XS = torch.randn(2, 5, 6)


def test_token_flatten_structure():
    a = analyze(SeqFlatten(), XS)
    g = assert_tied(a, ("embed.weight", 0), ("embed.bias", 0), ("fc.weight", 1), exactly=True)
    assert g.n_units == 12 and g.prunable and g.exact
    np.testing.assert_array_equal(units_of(a, "fc.weight", 1), np.arange(60) % 12)


def test_token_flatten_behaviour():
    check_zero_invariance(SeqFlatten(), XS, expect=["embed.weight", "fc.weight"])
    small = check_shrink(SeqFlatten(), XS)
    assert small.fc.in_features == 5 * small.embed.out_features
