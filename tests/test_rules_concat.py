"""torch.cat on channels: the output's channels are the operands' channels at offsets, so a
consumer's input dim is one group whose units are the union of every branch's channels, and a
frozen operand (a model input) keeps its part while the rest is pruned."""

import numpy as np
import torch
from torch import nn

from helpers import (analyze, assert_frozen, assert_tied, check_shrink, check_zero_invariance,
                     group_of, units_of)

X = torch.randn(2, 3, 8, 8)


class Dense(nn.Module):
    """DenseNet style: each layer (1x1 bottleneck, then 3x3) appends its output to its input."""

    def __init__(self, c0=12, k=8, b=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c0, 3, padding=1)
        self.b1 = nn.Conv2d(c0, b, 1)
        self.l1 = nn.Conv2d(b, k, 3, padding=1)
        self.b2 = nn.Conv2d(c0 + k, b, 1)
        self.l2 = nn.Conv2d(b, k, 3, padding=1)
        self.head = nn.Conv2d(c0 + 2 * k, 4, 1)

    def forward(self, x):
        x0 = torch.relu(self.stem(x))
        x1 = torch.cat([x0, self.l1(torch.relu(self.b1(x0)))], 1)
        x2 = torch.cat((x1, self.l2(torch.relu(self.b2(x1)))), dim=1)
        return self.head(x2)


class Inception(nn.Module):
    """Three branches of different widths concatenated, followed by a conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.Conv2d(16, 8, 1)
        self.b2a = nn.Conv2d(16, 12, 1)
        self.b2b = nn.Conv2d(12, 10, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.b3 = nn.Conv2d(16, 6, 1)
        self.post = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([self.b1(x), self.b2b(torch.relu(self.b2a(x))), self.b3(self.pool(x))], 1)
        return self.post(torch.relu(y))


class InputCat(nn.Module):
    """cat([x, features(x)]): the three input channels are frozen, the features are not."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(19, 8, 3, padding=1)

    def forward(self, x):
        return self.head(torch.cat([x, torch.relu(self.feat(x))], 1))


def test_dense_structure():
    a = analyze(Dense(), X)
    # every channel the head reads is one group: stem's 12, l1's 8, l2's 8
    g = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("b1.weight", 1), ("l1.weight", 0),
                    ("l1.bias", 0), ("b2.weight", 1), ("l2.weight", 0), ("l2.bias", 0),
                    ("head.weight", 1), exactly=True)
    assert g.n_units == 12 + 8 + 8 and g.prunable and g.exact
    stem, l1, l2 = (units_of(a, n, 0) for n in ("stem.weight", "l1.weight", "l2.weight"))
    assert len(set(stem) | set(l1) | set(l2)) == 28  # disjoint units
    np.testing.assert_array_equal(units_of(a, "head.weight", 1), np.concatenate([stem, l1, l2]))
    np.testing.assert_array_equal(units_of(a, "b2.weight", 1), np.concatenate([stem, l1]))
    np.testing.assert_array_equal(units_of(a, "b1.weight", 1), stem)
    for conv in ("b1", "b2"):  # the bottlenecks are groups of their own
        inner = assert_tied(a, (f"{conv}.weight", 0), (f"{conv}.bias", 0),
                            (f"l{conv[1]}.weight", 1), exactly=True)
        assert inner.n_units == 16 and inner.prunable
    assert_frozen(group_of(a, "head.weight", 0), "model output")
    assert_frozen(group_of(a, "stem.weight", 1), "model input 'x'")


def test_dense_behaviour():
    check_zero_invariance(Dense(), X, expect=["stem.weight", "l1.weight", "b1.weight"])
    small = check_shrink(Dense(), X)
    c0, k1, k2 = small.stem.out_channels, small.l1.out_channels, small.l2.out_channels
    assert small.b1.in_channels == c0
    assert small.b2.in_channels == c0 + k1 and small.head.in_channels == c0 + k1 + k2


def test_inception_structure():
    a = analyze(Inception(), X)
    g = assert_tied(a, ("b1.weight", 0), ("b1.bias", 0), ("b2b.weight", 0), ("b2b.bias", 0),
                    ("b3.weight", 0), ("b3.bias", 0), ("post.weight", 1), exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    np.testing.assert_array_equal(
        units_of(a, "post.weight", 1),
        np.concatenate([units_of(a, n, 0) for n in ("b1.weight", "b2b.weight", "b3.weight")]))
    stem = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("b1.weight", 1), ("b2a.weight", 1),
                       ("b3.weight", 1), exactly=True)  # max pool passes channels through
    assert stem.n_units == 16 and stem.prunable
    inner = assert_tied(a, ("b2a.weight", 0), ("b2a.bias", 0), ("b2b.weight", 1), exactly=True)
    assert inner.n_units == 12


def test_inception_behaviour():
    check_zero_invariance(Inception(), X, expect=["b1.weight", "b2a.weight", "stem.weight"])
    small = check_shrink(Inception(), X)
    assert small.post.in_channels == (small.b1.out_channels + small.b2b.out_channels
                                      + small.b3.out_channels)


def test_cat_with_input_structure():
    a = analyze(InputCat(), X)
    # the input's channels are what feat reads, so feat's in-channel dim joins the group too
    g = assert_tied(a, ("feat.weight", 0), ("feat.bias", 0), ("feat.weight", 1), ("head.weight", 1),
                    exactly=True)
    assert g.n_units == 19 and g.prunable and g.exact
    head_in = units_of(a, "head.weight", 1)
    np.testing.assert_array_equal(head_in[:3], units_of(a, "feat.weight", 1))
    np.testing.assert_array_equal(head_in[3:], units_of(a, "feat.weight", 0))
    assert g.frozen_units[head_in[:3]].all()  # the input's channels stay
    assert not g.frozen_units[head_in[3:]].any()  # the features' may go
    assert g.frozen_units.sum() == 3


def test_cat_with_input_behaviour():
    model = InputCat()
    check_zero_invariance(model, X, expect=["feat.weight"])
    small = check_shrink(model, X)
    assert small.feat.in_channels == 3
    assert small.head.in_channels == 3 + small.feat.out_channels < 19
    torch.testing.assert_close(small.head.weight[:, :3], model.head.weight[:, :3])
