"""Normalisation and per-channel layers. Batch and instance norms are per channel (exact: a
zeroed channel stays zero); LayerNorm and RMSNorm normalise over the channels (inexact);
GroupNorm keeps num_groups and removes the same position from every group (inexact); PReLU with
per-channel slopes follows the channels; Embedding keeps its vocabulary and prunes its width."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import (analyze, assert_frozen, assert_tied, check_shrink, check_zero_invariance,
                     group_of, units_of)

X = torch.randn(2, 3, 8, 8)


class ConvBN(nn.Module):
    """conv -> BatchNorm2d / InstanceNorm2d / PReLU -> conv -> head."""

    def __init__(self, norm):
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)
        self.norm = {
            "bn": lambda: nn.BatchNorm2d(24),
            "bn_plain": lambda: nn.BatchNorm2d(24, affine=False),
            "in": lambda: nn.InstanceNorm2d(24, affine=True),
            "in_plain": lambda: nn.InstanceNorm2d(24),
            "in_stats": lambda: nn.InstanceNorm2d(24, affine=True, track_running_stats=True),
            "prelu": lambda: nn.PReLU(24),
        }[norm]()
        self.act = nn.Identity() if norm == "prelu" else nn.ReLU()
        self.mid = nn.Conv2d(24, 32, 3, padding=1)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.act(self.norm(self.conv(x)))
        return self.head(torch.relu(self.mid(x)))


NORM_TENSORS = {
    "bn": ["weight", "bias", "running_mean", "running_var"],
    "bn_plain": ["running_mean", "running_var"],
    "in": ["weight", "bias"],
    "in_plain": [],
    "in_stats": ["weight", "bias", "running_mean", "running_var"],
    "prelu": ["weight"],
}


@pytest.mark.parametrize("norm", list(NORM_TENSORS))
def test_channel_norm_structure(norm):
    a = analyze(ConvBN(norm), X)
    members = [("conv.weight", 0), ("conv.bias", 0), ("mid.weight", 1)]
    members += [(f"norm.{t}", 0) for t in NORM_TENSORS[norm]]
    g = assert_tied(a, *members, exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    for name, dim in members:
        np.testing.assert_array_equal(units_of(a, name, dim), np.arange(24))
    assert group_of(a, "mid.weight", 0).prunable


@pytest.mark.parametrize("norm", [
    "bn", "bn_plain", "in", "in_stats", "prelu",
    pytest.param("in_plain", marks=[
        pytest.mark.filterwarnings("error:input's size at dim=1 does not match num_features")]),
])
def test_channel_norm_behaviour(norm):
    check_zero_invariance(ConvBN(norm), X, expect=["conv.weight", "mid.weight"])
    small = check_shrink(ConvBN(norm), X)
    c = small.conv.out_channels
    assert c == small.mid.in_channels
    if norm == "prelu":
        assert small.norm.num_parameters == small.norm.weight.numel() == c
    else:
        assert small.norm.num_features == c
    for t in NORM_TENSORS[norm]:
        assert getattr(small.norm, t).shape == (c,)


class MLPBN(nn.Module):
    """Linear -> BatchNorm1d on (N, C), and Conv1d -> BatchNorm1d on (N, C, L)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 24, 3, padding=1)
        self.bn_seq = nn.BatchNorm1d(24)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc1 = nn.Linear(24, 48)
        self.bn = nn.BatchNorm1d(48)
        self.fc2 = nn.Linear(48, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn_seq(self.conv(x)))).flatten(1)
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


X1 = torch.randn(4, 4, 16)


def test_batch_norm_1d_structure():
    a = analyze(MLPBN(), X1)
    g = assert_tied(a, ("conv.weight", 0), ("conv.bias", 0), ("bn_seq.weight", 0), ("bn_seq.bias", 0),
                    ("bn_seq.running_mean", 0), ("bn_seq.running_var", 0), ("fc1.weight", 1),
                    exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    g = assert_tied(a, ("fc1.weight", 0), ("fc1.bias", 0), ("bn.weight", 0), ("bn.bias", 0),
                    ("bn.running_mean", 0), ("bn.running_var", 0), ("fc2.weight", 1), exactly=True)
    assert g.n_units == 48 and g.prunable and g.exact


def test_batch_norm_1d_behaviour():
    check_zero_invariance(MLPBN(), X1, expect=["conv.weight", "fc1.weight"])
    small = check_shrink(MLPBN(), X1)
    assert small.bn.num_features == small.fc1.out_features == small.bn.running_mean.shape[0]
    assert small.bn_seq.num_features == small.conv.out_channels == small.fc1.in_features
    assert small.fc1.out_features < 48 or small.conv.out_channels < 24


class Tokens(nn.Module):
    """Pre-norm residual MLP on (N, L, C) tokens with LayerNorm or RMSNorm."""

    def __init__(self, norm):
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.norm = nn.LayerNorm(32) if norm == "layer" else nn.RMSNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x))))
        return self.head(x)


XT = torch.randn(2, 7, 6)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_trailing_norm_structure(norm):
    a = analyze(Tokens(norm), XT)
    members = [("embed.weight", 0), ("embed.bias", 0), ("norm.weight", 0), ("fc1.weight", 1),
               ("fc2.weight", 0), ("fc2.bias", 0), ("head.weight", 1)]
    if norm == "layer":
        members.append(("norm.bias", 0))
    g = assert_tied(a, *members, exactly=True)
    assert g.n_units == 32 and g.prunable and not g.exact
    assert "normalised over this dim" in g.inexact_reason and "'norm'" in g.inexact_reason
    mlp = assert_tied(a, ("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1), exactly=True)
    assert mlp.n_units == 64 and mlp.prunable and mlp.exact


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_trailing_norm_behaviour(norm):
    worst = check_zero_invariance(Tokens(norm), XT, expect=["fc1.weight"])
    assert len(worst) == 1  # the residual group is inexact and is not checked
    small = check_shrink(Tokens(norm), XT)
    assert small.norm.normalized_shape == (small.embed.out_features,)
    assert small.norm.weight.shape == (small.embed.out_features,)


class ConvLayerNorm(nn.Module):
    """LayerNorm([C, H, W]) on a conv output: weight dim 0 follows the channels, H and W stay."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.LayerNorm([16, 8, 8])
        self.mid = nn.Conv2d(16, 24, 3, padding=1)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.mid(torch.relu(self.norm(self.conv(x))))))


def test_layer_norm_chw_structure():
    a = analyze(ConvLayerNorm(), X)
    g = assert_tied(a, ("conv.weight", 0), ("conv.bias", 0), ("norm.weight", 0), ("norm.bias", 0),
                    ("mid.weight", 1), exactly=True)
    assert g.n_units == 16 and g.prunable and not g.exact
    for d in (1, 2):
        assert not group_of(a, "norm.weight", d).prunable
        assert group_of(a, "norm.weight", d).id == group_of(a, "norm.bias", d).id


def test_layer_norm_chw_behaviour():
    check_zero_invariance(ConvLayerNorm(), X, expect=["mid.weight"])
    small = check_shrink(ConvLayerNorm(), X)
    assert small.norm.normalized_shape == (small.conv.out_channels, 8, 8)


class ConvGN(nn.Module):
    def __init__(self, groups=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.gn = nn.GroupNorm(groups, 32)
        self.mid = nn.Conv2d(32, 24, 3, padding=1)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.mid(torch.relu(self.gn(self.conv(x))))))


def test_group_norm_structure():
    a = analyze(ConvGN(), X)
    g = assert_tied(a, ("conv.weight", 0), ("conv.bias", 0), ("gn.weight", 0), ("gn.bias", 0),
                    ("mid.weight", 1), exactly=True)
    assert g.n_units == 8 and g.prunable and not g.exact  # 8 channels per group
    assert "group norm" in g.inexact_reason
    # unit j: position j of each of the 4 groups
    np.testing.assert_array_equal(units_of(a, "gn.weight", 0), np.arange(32) % 8)


def test_group_norm_behaviour():
    check_zero_invariance(ConvGN(), X, expect=["mid.weight"])
    small = check_shrink(ConvGN(), X)
    assert small.gn.num_groups == 4
    c = small.conv.out_channels
    assert small.gn.num_channels == c == small.gn.weight.shape[0] and c % 4 == 0 and c < 32


def test_prelu_shared_slope_structure():
    class Shared(ConvBN):
        def __init__(self):
            super().__init__("prelu")
            self.norm = nn.PReLU()

    a = analyze(Shared(), X)
    assert_frozen(group_of(a, "norm.weight", 0), "single shared PReLU slope")
    g = assert_tied(a, ("conv.weight", 0), ("conv.bias", 0), ("mid.weight", 1), exactly=True)
    assert g.prunable and g.exact
    check_zero_invariance(Shared(), X, expect=["conv.weight"])


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 24)
        self.fc1 = nn.Linear(24, 48)
        self.fc2 = nn.Linear(48, 5)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.emb(ids))))


IDS = torch.randint(0, 50, (3, 7))


def test_embedding_structure():
    a = analyze(Embed(), IDS)
    g = assert_tied(a, ("emb.weight", 1), ("fc1.weight", 1), exactly=True)
    assert g.n_units == 24 and g.prunable and g.exact
    assert_frozen(group_of(a, "emb.weight", 0), "vocabulary rows are kept")


def test_embedding_behaviour():
    check_zero_invariance(Embed(), IDS, expect=["emb.weight", "fc1.weight"])
    small = check_shrink(Embed(), IDS)
    assert small.emb.num_embeddings == 50
    assert small.emb.embedding_dim == small.fc1.in_features == small.emb.weight.shape[1]
