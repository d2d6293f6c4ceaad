"""Splitting channels: split/chunk (equal and unequal sizes), tensor slicing with getitem, and
unbind. Each piece's channels sit at an offset of the source's, so pieces that meet again
elementwise pair up source channels into one unit.

Sizes written in ``forward`` (``torch.split(y, [4, 8, 12])``, ``y[:, :6]``) cannot follow
pruning, so the sliced dim is frozen with the reason and the rest of the model still shrinks.
``chunk(2)`` re-splits at the middle at run time, so its pieces are tied index by index and
shrink evenly.
"""

import numpy as np
import pytest
import torch
from torch import nn

import surgeon

from helpers import (analyze, assert_frozen, assert_tied, check_shrink, check_zero_invariance,
                     group_of, units_of)

X = torch.randn(2, 3, 8, 8)


class ChunkGate(nn.Module):
    """a, b = conv(x).chunk(2): a * sigmoid(b) ties channel i to channel C + i."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 48, 3, padding=1)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        a, b = self.conv(torch.relu(self.stem(x))).chunk(2, dim=1)
        return self.head(a * torch.sigmoid(b))


class UnequalSplit(nn.Module):
    """torch.split with sizes [4, 8, 12], each piece read by its own conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)
        self.ha = nn.Conv2d(4, 6, 1)
        self.hb = nn.Conv2d(8, 6, 3, padding=1)
        self.hc = nn.Conv2d(12, 6, 1)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        a, b, c = torch.split(torch.relu(self.conv(x)), [4, 8, 12], dim=1)
        return self.head(torch.relu(self.ha(a) + self.hb(b) + self.hc(c)))


class Slicing(nn.Module):
    """y[:, :6], y[:, 6:] and a strided y[:, 1::2] of the same conv output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.ha = nn.Conv2d(6, 8, 1)
        self.hb = nn.Conv2d(10, 8, 3, padding=1)
        self.hc = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        z = self.ha(y[:, :6]) + self.hb(y[:, 6:, :, :]) + self.hc(y[:, 1::2])
        return self.head(torch.relu(z))


class ChunkSeparate(nn.Module):
    """a, b = y.chunk(2): each half read by its own conv, nothing ties a[i] to b[i]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.ha = nn.Conv2d(16, 8, 1)
        self.hb = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        a, b = torch.relu(self.conv(x)).chunk(2, dim=1)
        return self.head(torch.relu(self.ha(a) + self.hb(b)))


class SpatialSlice(nn.Module):
    """Slicing and indexing spatial dims (and a full slice of channels) pass channels through."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)
        self.mid = nn.Conv2d(24, 24, 3)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))[:, :, 1:, :-1]
        y = self.mid(y[..., ::2, :])
        return self.head(y[:, :])[:, :, 0]


class UnbindQKV(nn.Module):
    """qkv = fc(x).reshape(N, L, 3, -1).permute(2, 0, 1, 3).unbind(0): channel j of q, k and v
    is one unit (positions j, C + j and 2C + j of fc's output)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.qkv = nn.Linear(16, 3 * 12)
        self.proj = nn.Linear(12, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        h = self.inp(x)
        n, seq, _ = h.shape
        q, k, v = self.qkv(h).reshape(n, seq, 3, -1).permute(2, 0, 1, 3).unbind(0)
        return self.out(h + self.proj(q * torch.sigmoid(k) + v))


class UnbindChannels(nn.Module):
    """Unbinding the channel dim makes one output per channel: that dim cannot shrink."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.post = nn.Conv2d(1, 12, 3, padding=1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        r, g, b, a = torch.unbind(self.conv(x), 1)
        y = (r * g + b - a).unsqueeze(1)
        return self.head(torch.relu(self.post(y)))


def test_chunk_structure():
    a = analyze(ChunkGate(), X)
    g = assert_tied(a, ("conv.weight", 0), ("conv.bias", 0), ("head.weight", 1), exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    conv = units_of(a, "conv.weight", 0)
    np.testing.assert_array_equal(conv[:24], conv[24:])  # a[i] and b[i] are one unit
    np.testing.assert_array_equal(units_of(a, "head.weight", 1), conv[:24])
    stem = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("conv.weight", 1), exactly=True)
    assert stem.n_units == 16 and stem.prunable


def test_chunk_behaviour():
    check_zero_invariance(ChunkGate(), X, expect=["conv.weight", "stem.weight"])
    small = check_shrink(ChunkGate(), X)
    assert small.conv.out_channels == 2 * small.head.in_channels


def test_unequal_split_structure():
    a = analyze(UnequalSplit(), X)
    g = group_of(a, "conv.weight", 0)
    assert_frozen(g, "split sizes are written in the code")
    for name in ("ha.weight", "hb.weight", "hc.weight"):
        assert group_of(a, name, 1) is g
    summed = assert_tied(a, ("ha.weight", 0), ("hb.weight", 0), ("hc.weight", 0), ("head.weight", 1))
    assert summed.n_units == 6 and summed.prunable


def test_unequal_split_behaviour():
    check_zero_invariance(UnequalSplit(), X, expect=["ha.weight"])
    small = surgeon.shrink(UnequalSplit(), X, target=0.8)
    assert small.conv.out_channels == 24 and small.ha.out_channels < 6


def test_slicing_structure():
    a = analyze(Slicing(), X)
    assert_frozen(group_of(a, "conv.weight", 0), "sliced with fixed bounds")
    assert group_of(a, "ha.weight", 0).prunable


def test_slicing_behaviour():
    small = surgeon.shrink(Slicing(), X, target=0.8)
    assert small.conv.out_channels == 16 and small.ha.in_channels == 6


def test_chunk_separate_structure():
    a = analyze(ChunkSeparate(), X)
    conv = units_of(a, "conv.weight", 0)
    np.testing.assert_array_equal(conv[:16], conv[16:])  # the halves shrink evenly
    np.testing.assert_array_equal(units_of(a, "ha.weight", 1), conv[:16])
    np.testing.assert_array_equal(units_of(a, "hb.weight", 1), conv[16:])
    assert_tied(a, ("conv.weight", 0), ("conv.bias", 0), ("ha.weight", 1), ("hb.weight", 1),
                exactly=True)


def test_chunk_separate_behaviour():
    check_zero_invariance(ChunkSeparate(), X, expect=["ha.weight"])
    small = check_shrink(ChunkSeparate(), X)
    assert small.conv.out_channels == 2 * small.ha.in_channels == 2 * small.hb.in_channels


def test_spatial_slice_structure():
    a = analyze(SpatialSlice(), X)
    g = assert_tied(a, ("conv.weight", 0), ("conv.bias", 0), ("mid.weight", 1), exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    g = assert_tied(a, ("mid.weight", 0), ("mid.bias", 0), ("head.weight", 1), exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    assert_frozen(group_of(a, "head.weight", 0), "model output")


def test_spatial_slice_behaviour():
    check_zero_invariance(SpatialSlice(), X, expect=["conv.weight", "mid.weight"])
    check_shrink(SpatialSlice(), X)


XS = torch.randn(2, 6, 8)


def test_unbind_qkv_structure():
    a = analyze(UnbindQKV(), XS)
    g = assert_tied(a, ("qkv.weight", 0), ("qkv.bias", 0), ("proj.weight", 1), exactly=True)
    assert g.n_units == 12 and g.prunable and g.exact
    qkv = units_of(a, "qkv.weight", 0)
    np.testing.assert_array_equal(qkv[:12], qkv[12:24])
    np.testing.assert_array_equal(qkv[:12], qkv[24:])
    np.testing.assert_array_equal(units_of(a, "proj.weight", 1), qkv[:12])
    resid = assert_tied(a, ("inp.weight", 0), ("inp.bias", 0), ("qkv.weight", 1), ("proj.weight", 0),
                        ("proj.bias", 0), ("out.weight", 1), exactly=True)
    assert resid.n_units == 16 and resid.prunable


def test_unbind_qkv_behaviour():
    check_zero_invariance(UnbindQKV(), XS, expect=["qkv.weight", "inp.weight"])
    small = check_shrink(UnbindQKV(), XS)
    assert small.qkv.out_features == 3 * small.proj.in_features


def test_unbind_channels_structure():
    a = analyze(UnbindChannels(), X)
    assert_frozen(group_of(a, "conv.weight", 0), "unbind")
    g = assert_tied(a, ("post.weight", 0), ("post.bias", 0), ("head.weight", 1), exactly=True)
    assert g.prunable and g.n_units == 12


def test_unbind_channels_behaviour():
    check_zero_invariance(UnbindChannels(), X, expect=["post.weight"])
    small = check_shrink(UnbindChannels(), X, min_keep=1)  # one small group carries all the cut
    assert small.conv.out_channels == 4
