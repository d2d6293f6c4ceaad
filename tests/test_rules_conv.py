"""Convolutions: plain Conv1d/2d/3d and ConvTranspose2d tie input channels to the weight's
in-channel dim and output channels to its out-channel dim; a grouped conv is pruned a whole group
at a time (``groups`` shrinks); a depthwise conv follows its input channel by channel."""

import numpy as np
import torch
from torch import nn

from helpers import (analyze, assert_frozen, assert_tied, check_shrink, check_zero_invariance,
                     group_of, units_of)

X = torch.randn(2, 3, 8, 8)


class Grouped(nn.Module):
    """stem -> conv(groups=g) -> plain conv: stem's channels and the grouped conv's outputs
    move together group by group."""

    def __init__(self, groups):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gconv = nn.Conv2d(16, 32, 3, padding=1, groups=groups)
        self.mid = nn.Conv2d(32, 48, 1)
        self.head = nn.Conv2d(48, 4, 1)

    def forward(self, x):
        x = torch.relu(self.gconv(torch.relu(self.stem(x))))
        return self.head(torch.relu(self.mid(x)))


class Depthwise(nn.Module):
    """MobileNet block: pointwise expand, depthwise (channel multiplier ``mult``), pointwise."""

    def __init__(self, mult):
        super().__init__()
        self.expand = nn.Conv2d(3, 24, 1)
        self.dw = nn.Conv2d(24, 24 * mult, 3, padding=1, groups=24)
        self.project = nn.Conv2d(24 * mult, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.expand(x))))
        return self.head(torch.relu(self.project(x)))


class Transposed(nn.Module):
    """Conv -> ConvTranspose2d (upsampling) -> grouped ConvTranspose2d -> conv."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 24, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(24, 16, 2, stride=2)
        self.gup = nn.ConvTranspose2d(16, 24, 3, padding=1, groups=2)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        x = torch.relu(self.up(torch.relu(self.down(x))))
        return self.head(torch.relu(self.gup(x)))


class Conv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 24, 3, padding=1)
        self.c2 = nn.Conv1d(24, 32, 5, padding=2)
        self.head = nn.Conv1d(32, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.c2(torch.relu(self.c1(x)))))


class Conv3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv3d(2, 16, 3, padding=1)
        self.c2 = nn.Conv3d(16, 24, 3, padding=1)
        self.head = nn.Conv3d(24, 3, 1)

    def forward(self, x):
        return self.head(torch.relu(self.c2(torch.relu(self.c1(x)))))


def _check_grouped_structure(groups):
    a = analyze(Grouped(groups), X)
    g = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("gconv.weight", 0), ("gconv.bias", 0),
                    ("mid.weight", 1), exactly=True)
    assert g.n_units == groups and g.prunable and g.exact
    per_in, per_out = 16 // groups, 32 // groups
    np.testing.assert_array_equal(units_of(a, "stem.weight", 0), np.arange(16) // per_in)
    np.testing.assert_array_equal(units_of(a, "gconv.weight", 0), np.arange(32) // per_out)
    assert_frozen(group_of(a, "gconv.weight", 1), "per-group width of a grouped conv is kept")
    fix = [f for f in a.coupling.attr_fixes if (f.module, f.attr) == ("gconv", "groups")]
    assert len(fix) == 1
    mid = assert_tied(a, ("mid.weight", 0), ("mid.bias", 0), ("head.weight", 1), exactly=True)
    assert mid.n_units == 48 and mid.prunable


def _check_grouped_behaviour(groups):
    check_zero_invariance(Grouped(groups), X, expect=["gconv.weight", "mid.weight"])
    model = Grouped(groups)
    small = check_shrink(model, X)
    kept = small.gconv.groups
    assert 1 <= kept < groups, "whole groups are removed"
    assert small.gconv.in_channels == kept * (16 // groups) == small.stem.out_channels
    assert small.gconv.out_channels == kept * (32 // groups) == small.mid.in_channels
    assert small.gconv.weight.shape[1] == 16 // groups
    # the kept weights are whole groups of the original, in order
    w, sw = model.gconv.weight, small.gconv.weight
    per = 32 // groups
    blocks = [w[i * per:(i + 1) * per] for i in range(groups)]
    for j in range(kept):
        assert any(torch.equal(sw[j * per:(j + 1) * per], b) for b in blocks)


def test_grouped_conv_2_structure():
    _check_grouped_structure(2)


def test_grouped_conv_4_structure():
    _check_grouped_structure(4)


def test_grouped_conv_2_behaviour():
    _check_grouped_behaviour(2)


def test_grouped_conv_4_behaviour():
    _check_grouped_behaviour(4)


def test_depthwise_structure():
    a = analyze(Depthwise(1), X)
    g = assert_tied(a, ("expand.weight", 0), ("expand.bias", 0), ("dw.weight", 0), ("dw.bias", 0),
                    ("project.weight", 1), exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    for name, dim in g_dims(g):
        np.testing.assert_array_equal(units_of(a, name, dim), np.arange(24))
    assert_frozen(group_of(a, "dw.weight", 1), "per-group width")


def g_dims(g):
    return sorted((m.name, m.dim) for m in g.tensors)


def test_depthwise_multiplier_2_structure():
    a = analyze(Depthwise(2), X)
    g = assert_tied(a, ("expand.weight", 0), ("expand.bias", 0), ("dw.weight", 0), ("dw.bias", 0),
                    ("project.weight", 1), exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    np.testing.assert_array_equal(units_of(a, "expand.weight", 0), np.arange(24))
    # input channel j feeds outputs 2j and 2j + 1: one unit
    np.testing.assert_array_equal(units_of(a, "dw.weight", 0), np.arange(48) // 2)
    np.testing.assert_array_equal(units_of(a, "project.weight", 1), np.arange(48) // 2)


def test_depthwise_behaviour():
    check_zero_invariance(Depthwise(1), X, expect=["dw.weight", "project.weight"])
    small = check_shrink(Depthwise(1), X)
    assert small.dw.groups == small.dw.in_channels == small.dw.out_channels == small.expand.out_channels
    assert small.dw.groups < 24


def test_depthwise_multiplier_2_behaviour():
    check_zero_invariance(Depthwise(2), X, expect=["dw.weight", "project.weight"])
    small = check_shrink(Depthwise(2), X)
    assert small.dw.groups == small.dw.in_channels == small.expand.out_channels < 24
    assert small.dw.out_channels == 2 * small.dw.groups == small.project.in_channels


def test_conv_transpose_structure():
    a = analyze(Transposed(), X)
    g = assert_tied(a, ("down.weight", 0), ("down.bias", 0), ("up.weight", 0), exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    # a transposed conv's weight is (in, out / groups, kH, kW)
    # the grouped transposed conv: its input and output channels move by whole groups
    g = assert_tied(a, ("up.weight", 1), ("up.bias", 0), ("gup.weight", 0), ("gup.bias", 0),
                    ("head.weight", 1), exactly=True)
    assert g.n_units == 2 and g.prunable and g.exact
    np.testing.assert_array_equal(units_of(a, "up.weight", 1), np.arange(16) // 8)
    np.testing.assert_array_equal(units_of(a, "gup.weight", 0), np.arange(16) // 8)
    np.testing.assert_array_equal(units_of(a, "head.weight", 1), np.arange(24) // 12)
    assert [f.attr for f in a.coupling.attr_fixes if f.module == "gup"] == ["groups"]
    assert_frozen(group_of(a, "gup.weight", 1), "per-group width of a grouped transposed conv")


def test_conv_transpose_behaviour():
    check_zero_invariance(Transposed(), X, expect=["up.weight", "gup.weight"])
    small = check_shrink(Transposed(), X)
    assert small.up.in_channels == small.down.out_channels < 24
    assert small.up.out_channels == small.up.weight.shape[1] == small.gup.in_channels
    assert small.gup.out_channels == small.head.in_channels
    assert small.gup.in_channels == 8 * small.gup.groups and small.gup.out_channels == 12 * small.gup.groups


X1 = torch.randn(2, 3, 32)
X3 = torch.randn(2, 2, 6, 6, 6)


def test_conv1d_structure():
    a = analyze(Conv1d(), X1)
    g = assert_tied(a, ("c1.weight", 0), ("c1.bias", 0), ("c2.weight", 1), exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    g = assert_tied(a, ("c2.weight", 0), ("c2.bias", 0), ("head.weight", 1), exactly=True)
    assert g.n_units == 32 and g.prunable and g.exact
    assert_frozen(group_of(a, "c1.weight", 1), "model input")
    assert_frozen(group_of(a, "head.weight", 0), "model output")


def test_conv1d_behaviour():
    check_zero_invariance(Conv1d(), X1, expect=["c1.weight", "c2.weight"])
    small = check_shrink(Conv1d(), X1)
    assert small.c2.in_channels == small.c1.out_channels < 24


def test_conv3d_structure():
    a = analyze(Conv3d(), X3)
    g = assert_tied(a, ("c1.weight", 0), ("c1.bias", 0), ("c2.weight", 1), exactly=True)
    assert g.n_units == 16 and g.prunable and g.exact
    g = assert_tied(a, ("c2.weight", 0), ("c2.bias", 0), ("head.weight", 1), exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    assert_frozen(group_of(a, "c1.weight", 1), "model input")


def test_conv3d_behaviour():
    check_zero_invariance(Conv3d(), X3, expect=["c1.weight", "c2.weight"])
    small = check_shrink(Conv3d(), X3, 0.3)  # low enough that both convs must give units
    assert small.c2.in_channels == small.c1.out_channels < 16
