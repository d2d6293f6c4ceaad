"""Elementwise binary ops on residual paths: add, sub and mul with broadcasting tie the
channels of every operand to the output's, and a per-channel parameter joins the group."""

import dataclasses

import numpy as np
import torch
from torch import nn

from surgeon.graph.groups import Member
from surgeon.verify import zero_invariance

from helpers import (analyze, assert_frozen, assert_not_tied, assert_tied, check_shrink,
                     check_zero_invariance, group_of, reference_output)

X = torch.randn(2, 3, 8, 8)


class AddSub(nn.Module):
    """stem -> x + block(x) -> x - c3(x) -> head: one residual group through every add/sub."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.c2(torch.relu(self.c1(x)))
        x = torch.sub(x, self.c3(x))
        return self.head(x)


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(pool(x))))): (N, C, 1, 1) broadcast over (N, C, H, W)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.fc1 = nn.Conv2d(12, 6, 1)
        self.fc2 = nn.Conv2d(6, 12, 1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head(x * s)


class LinearSE(nn.Module):
    """SE with Linear layers on pooled features, broadcast back with s[:, :, None, None], and a
    centring x - pool(x) (sub with broadcasting)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 10, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(10, 5)
        self.fc2 = nn.Linear(5, 10)
        self.head = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        s = self.pool(x).flatten(1)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        x = x * s[:, :, None, None]
        x = x - self.pool(x)
        return self.head(x)


class LayerScale(nn.Module):
    """x + gamma * block(x) with gamma an nn.Parameter of shape (C, 1, 1), and a gated branch
    a(x) * b(x) (mul of two same-shaped tensors)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = nn.Conv2d(16, 16, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((16, 1, 1), 0.5))
        self.a = nn.Conv2d(16, 12, 1)
        self.b = nn.Conv2d(16, 12, 1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.gamma * self.block(x)
        return self.head(self.a(x) * torch.sigmoid(self.b(x)))


def test_add_sub_structure():
    a = analyze(AddSub(), X)
    g = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("c1.weight", 1), ("c2.weight", 0),
                    ("c2.bias", 0), ("c3.weight", 0), ("c3.weight", 1), ("c3.bias", 0),
                    ("head.weight", 1), exactly=True)
    assert g.n_units == 8 and g.prunable and g.exact
    hidden = assert_tied(a, ("c1.weight", 0), ("c1.bias", 0), ("c2.weight", 1), exactly=True)
    assert hidden.n_units == 16 and hidden.prunable and hidden.exact
    assert_frozen(group_of(a, "stem.weight", 1), "model input 'x'")
    assert_frozen(group_of(a, "head.weight", 0), "model output")
    assert len(a.groups) == 4


def test_zero_invariance_detects_a_wrong_mapping():
    """The oracle the behaviour tests rely on: a unit mapped to the wrong consumer columns."""
    model = AddSub()
    reference_output(model, X)
    a = analyze(model, X)
    g = group_of(a, "head.weight", 1)
    assert zero_invariance(model, X, {g.id: [1, 5]}, analysis=a) < 1e-4
    wrong = dataclasses.replace(g, members=[Member(m.key, np.roll(m.unit_of, 1)) if m.key == ("p", "head.weight", 1)
                                            else m for m in g.members])
    a = dataclasses.replace(a, groups=tuple(wrong if h is g else h for h in a.groups))
    assert zero_invariance(model, X, {g.id: [1, 5]}, analysis=a) > 1e-2


def test_add_sub_behaviour():
    check_zero_invariance(AddSub(), X, expect=["stem.weight", "c1.weight"])
    check_shrink(AddSub(), X)


def test_squeeze_excite_structure():
    a = analyze(SqueezeExcite(), X)
    g = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("fc1.weight", 1), ("fc2.weight", 0),
                    ("fc2.bias", 0), ("head.weight", 1), exactly=True)
    assert g.n_units == 12 and g.prunable and g.exact  # mean over H, W is not over channels
    se = assert_tied(a, ("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1), exactly=True)
    assert se.n_units == 6 and se.prunable and se.exact
    assert_not_tied(a, ("fc1.weight", 0), ("stem.weight", 0))


def test_squeeze_excite_behaviour():
    check_zero_invariance(SqueezeExcite(), X, expect=["stem.weight", "fc1.weight"])
    check_shrink(SqueezeExcite(), X)


def test_linear_se_structure():
    a = analyze(LinearSE(), X)
    g = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("fc1.weight", 1), ("fc2.weight", 0),
                    ("fc2.bias", 0), ("head.weight", 1), exactly=True)
    assert g.n_units == 10 and g.prunable and g.exact
    se = assert_tied(a, ("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1), exactly=True)
    assert se.n_units == 5 and se.prunable


def test_linear_se_behaviour():
    check_zero_invariance(LinearSE(), X, expect=["stem.weight", "fc1.weight"])
    check_shrink(LinearSE(), X)


def test_layer_scale_structure():
    a = analyze(LayerScale(), X)
    g = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("block.weight", 0), ("block.weight", 1),
                    ("block.bias", 0), ("gamma", 0), ("a.weight", 1), ("b.weight", 1), exactly=True)
    assert g.n_units == 16 and g.prunable and g.exact
    gate = assert_tied(a, ("a.weight", 0), ("a.bias", 0), ("b.weight", 0), ("b.bias", 0),
                       ("head.weight", 1), exactly=True)
    assert gate.n_units == 12 and gate.prunable and gate.exact
    # the size-1 dims of gamma broadcast: they are in no prunable group
    for d in (1, 2):
        assert not group_of(a, "gamma", d).prunable


def test_layer_scale_behaviour():
    check_zero_invariance(LayerScale(), X, expect=["gamma", "a.weight"])
    small = check_shrink(LayerScale(), X)
    assert small.gamma.shape[0] == small.stem.out_channels == small.block.in_channels
    assert small.gamma.shape[1:] == (1, 1)
