"""Shuffles. A channel shuffle with g groups of C/g sends input channel k*(C/g) + j to output
j*g + k, so a unit is position j of every group (C/g units) and ``groups`` is kept; written by
hand as view/transpose/view, the reshape rule must find the same units as nn.ChannelShuffle.
PixelShuffle(r) folds blocks of r*r input channels into one output channel; PixelUnshuffle
unfolds one input channel into r*r outputs."""

import numpy as np
import pytest
import torch
from torch import nn

from helpers import (analyze, assert_frozen, assert_tied, check_shrink, check_zero_invariance,
                     group_of, units_of)

X = torch.randn(2, 3, 8, 8)


def shufflenet_shuffle(x, groups: int):
    """Verbatim from torchvision's ShuffleNetV2."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, num_channels, height, width)
    return x


def inferred_shuffle(x, groups: int):
    """The same shuffle letting view infer the per-group width."""
    n, _, h, w = x.shape
    x = x.view(n, groups, -1, h, w).transpose(1, 2)
    return x.reshape(n, -1, h, w)


class Shuffle(nn.Module):
    """stem (24 channels) -> shuffle(4 groups) -> pointwise conv -> head."""

    def __init__(self, kind, groups=4):
        super().__init__()
        self.kind, self.groups = kind, groups
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.shuffle = nn.ChannelShuffle(groups) if kind == "module" else None
        self.pw = nn.Conv2d(24, 32, 1)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        if self.kind == "module":
            x = self.shuffle(x)
        elif self.kind == "shufflenet":
            x = shufflenet_shuffle(x, self.groups)
        else:
            x = inferred_shuffle(x, self.groups)
        return self.head(torch.relu(self.pw(x)))


def _expected_units(c, g):
    """Before the shuffle channel i is position i % (c/g) of its group; after it, channel i
    holds position i // g."""
    return np.arange(c) % (c // g), np.arange(c) // g


def _check_shuffle_structure(kind):
    a = analyze(Shuffle(kind), X)
    g = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("pw.weight", 1), exactly=True)
    assert g.n_units == 6 and g.prunable and g.exact
    before, after = _expected_units(24, 4)
    np.testing.assert_array_equal(units_of(a, "stem.weight", 0), before)
    np.testing.assert_array_equal(units_of(a, "pw.weight", 1), after)
    pw = assert_tied(a, ("pw.weight", 0), ("pw.bias", 0), ("head.weight", 1), exactly=True)
    assert pw.n_units == 32 and pw.prunable


def test_channel_shuffle_module_structure():
    _check_shuffle_structure("module")


def test_channel_shuffle_inferred_view_structure():
    _check_shuffle_structure("inferred")


def test_channel_shuffle_shufflenet_structure():
    _check_shuffle_structure("shufflenet")


def test_channel_shuffle_shufflenet_is_safe():
    """Whatever it decides for the channels through the shuffle, the rest is pruned."""
    a = analyze(Shuffle("shufflenet"), X)
    g = group_of(a, "stem.weight", 0)
    assert tuple(sorted((m.name, m.dim) for m in g.tensors)) == (
        ("pw.weight", 1), ("stem.bias", 0), ("stem.weight", 0))
    assert group_of(a, "pw.weight", 0).prunable
    check_zero_invariance(Shuffle("shufflenet"), X, expect=["pw.weight"])
    check_shrink(Shuffle("shufflenet"), X)


@pytest.mark.parametrize("kind", ["module", "inferred"])
def test_channel_shuffle_behaviour(kind):
    check_zero_invariance(Shuffle(kind), X, expect=["stem.weight", "pw.weight"])
    small = check_shrink(Shuffle(kind), X)
    assert small.stem.out_channels % 4 == 0 and small.stem.out_channels < 24
    assert small.pw.in_channels == small.stem.out_channels
    if kind == "module":
        assert small.shuffle.groups == 4


class ManyGroups(nn.Module):
    """A hand-written shuffle with more groups (8) than channels per group (3). The code writes
    ``view(n, groups, -1, h, w)``: the per-group width is the factor left to vary, so it carries
    the units (position j of every group) and ``self.groups`` stays."""

    def __init__(self):
        super().__init__()
        self.groups = 8
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.pw = nn.Conv2d(24, 32, 1)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = inferred_shuffle(torch.relu(self.stem(x)), self.groups)
        return self.head(torch.relu(self.pw(x)))


def test_shuffle_many_groups_structure():
    a = analyze(ManyGroups(), X)
    g = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("pw.weight", 1), exactly=True)
    assert g.n_units == 3 and g.prunable and g.exact
    np.testing.assert_array_equal(units_of(a, "stem.weight", 0), np.arange(24) % 3)
    np.testing.assert_array_equal(units_of(a, "pw.weight", 1), np.arange(24) // 8)
    assert not a.coupling.attr_fixes


def test_shuffle_many_groups_behaviour():
    check_zero_invariance(ManyGroups(), X, expect=["stem.weight", "pw.weight"])
    small = check_shrink(ManyGroups(), X)
    assert small.groups == 8 and small.stem.out_channels % 8 == 0 and small.stem.out_channels < 24


class Pixel(nn.Module):
    """conv (32 = 8 x 2 x 2) -> PixelShuffle(2) -> conv (16) -> PixelUnshuffle(2) -> conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.ps = nn.PixelShuffle(2)
        self.mid = nn.Conv2d(8, 16, 3, padding=1)
        self.pu = nn.PixelUnshuffle(2)
        self.head = nn.Conv2d(64, 4, 1)

    def forward(self, x):
        x = self.ps(torch.relu(self.stem(x)))
        return self.head(self.pu(torch.relu(self.mid(x))))


def test_pixel_shuffle_structure():
    a = analyze(Pixel(), X)
    g = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("mid.weight", 1), exactly=True)
    assert g.n_units == 8 and g.prunable and g.exact
    np.testing.assert_array_equal(units_of(a, "stem.weight", 0), np.arange(32) // 4)
    np.testing.assert_array_equal(units_of(a, "mid.weight", 1), np.arange(8))
    g = assert_tied(a, ("mid.weight", 0), ("mid.bias", 0), ("head.weight", 1), exactly=True)
    assert g.n_units == 16 and g.prunable and g.exact
    np.testing.assert_array_equal(units_of(a, "head.weight", 1), np.arange(64) // 4)
    assert_frozen(group_of(a, "head.weight", 0), "model output")


def test_pixel_shuffle_behaviour():
    check_zero_invariance(Pixel(), X, expect=["stem.weight", "mid.weight"])
    small = check_shrink(Pixel(), X)
    assert small.stem.out_channels == 4 * small.mid.in_channels < 32
    assert small.head.in_channels == 4 * small.mid.out_channels
