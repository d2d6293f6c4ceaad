"""Attention. nn.MultiheadAttention ties its embedding width to the residual width it reads and
makes one unit of position j of every head, so ``num_heads`` is kept and ``embed_dim`` and
``head_dim`` shrink; the group is inexact (the attention scale depends on head_dim, and the
residual is layer-normalised). A hand-written attention with F.scaled_dot_product_attention
prunes head_dim through the reshapes, and is exact when the scale is given explicitly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import (analyze, assert_frozen, assert_tied, check_shrink, check_zero_invariance,
                     group_of, units_of)

D, H = 32, 4


class Block(nn.Module):
    """Pre-norm transformer block: embed, x + MHA(LN(x)), x + MLP(LN(x)), head."""

    def __init__(self, batch_first=True):
        super().__init__()
        self.embed = nn.Linear(8, D)
        self.ln1 = nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, H, batch_first=batch_first)
        self.ln2 = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, 4 * D)
        self.fc2 = nn.Linear(4 * D, D)
        self.head = nn.Linear(D, 5)

    def forward(self, x):
        x = self.embed(x)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x)


class SDPA(nn.Module):
    """qkv -> reshape(B, L, 3, heads, head_dim) -> sdpa -> reshape(B, L, -1) -> proj, residual."""

    def __init__(self, scale=None):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = H, D // H, scale
        self.embed = nn.Linear(6, D)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.head = nn.Linear(D, 5)

    def forward(self, x):
        x = self.embed(x)
        b, seq, _ = x.shape
        qkv = self.qkv(x).reshape(b, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.head(x + self.proj(y.transpose(1, 2).reshape(b, seq, -1)))


def _x(batch_first):
    return torch.randn(2, 6, 8) if batch_first else torch.randn(6, 2, 8)


RESIDUAL = [("embed.weight", 0), ("embed.bias", 0), ("ln1.weight", 0), ("ln1.bias", 0),
            ("attn.in_proj_weight", 1), ("attn.in_proj_weight", 0), ("attn.in_proj_bias", 0),
            ("attn.out_proj.weight", 0), ("attn.out_proj.weight", 1), ("attn.out_proj.bias", 0),
            ("ln2.weight", 0), ("ln2.bias", 0), ("fc1.weight", 1), ("fc2.weight", 0),
            ("fc2.bias", 0), ("head.weight", 1)]


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_structure(batch_first):
    a = analyze(Block(batch_first), _x(batch_first))
    g = assert_tied(a, *RESIDUAL, exactly=True)
    head_dim = D // H
    assert g.n_units == head_dim and g.prunable and not g.exact
    assert "the attention scale depends on head_dim" in a.coupling.inexact[("p", "attn.out_proj.weight", 1)]
    # unit j: position j of every head, in the residual and in each of q, k, v
    np.testing.assert_array_equal(units_of(a, "attn.in_proj_weight", 0), np.arange(3 * D) % head_dim)
    np.testing.assert_array_equal(units_of(a, "attn.out_proj.weight", 1), np.arange(D) % head_dim)
    np.testing.assert_array_equal(units_of(a, "embed.weight", 0), np.arange(D) % head_dim)
    mlp = assert_tied(a, ("fc1.weight", 0), ("fc1.bias", 0), ("fc2.weight", 1), exactly=True)
    assert mlp.n_units == 4 * D and mlp.prunable and mlp.exact
    assert_frozen(group_of(a, "embed.weight", 1), "model input")
    assert_frozen(group_of(a, "head.weight", 0), "model output")


@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_behaviour(batch_first):
    x = _x(batch_first)
    worst = check_zero_invariance(Block(batch_first), x, expect=["fc1.weight"])
    a = analyze(Block(batch_first), x)
    assert set(worst) == {group_of(a, "fc1.weight", 0).id}  # the only exact prunable group
    small = check_shrink(Block(batch_first), x)
    attn = small.attn
    assert attn.num_heads == H and attn.batch_first == batch_first
    assert attn.embed_dim == attn.in_proj_weight.shape[1] == small.embed.out_features
    assert attn.head_dim * H == attn.embed_dim
    assert attn.in_proj_weight.shape[0] == 3 * attn.embed_dim
    assert attn.out_proj.in_features == attn.out_proj.out_features == attn.embed_dim
    assert small.ln1.normalized_shape == small.ln2.normalized_shape == (attn.embed_dim,)
    assert attn.embed_dim < D and attn.head_dim < D // H
    assert small.fc1.out_features < 4 * D


XS = torch.randn(2, 6, 6)


@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa_structure(scale):
    a = analyze(SDPA(scale), XS)
    head_dim = D // H
    g = assert_tied(a, ("qkv.weight", 0), ("qkv.bias", 0), ("proj.weight", 1), exactly=True)
    assert g.n_units == head_dim and g.prunable
    # the default scale 1/sqrt(head_dim) changes with head_dim; a given scale does not
    assert g.exact == (scale is not None)
    if scale is None:
        assert "attention scale" in g.inexact_reason
    np.testing.assert_array_equal(units_of(a, "qkv.weight", 0), np.arange(3 * D) % head_dim)
    np.testing.assert_array_equal(units_of(a, "proj.weight", 1), np.arange(D) % head_dim)
    assert [(f.module, f.attr) for f in a.coupling.attr_fixes] == [("", "head_dim")]
    resid = assert_tied(a, ("embed.weight", 0), ("embed.bias", 0), ("qkv.weight", 1),
                        ("proj.weight", 0), ("proj.bias", 0), ("head.weight", 1), exactly=True)
    assert resid.n_units == D and resid.prunable and resid.exact


@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa_behaviour(scale):
    expect = ["embed.weight"] + (["qkv.weight"] if scale is not None else [])
    check_zero_invariance(SDPA(scale), XS, expect=expect)
    small = check_shrink(SDPA(scale), XS, 0.3)  # low enough that head_dim must give units
    assert small.num_heads == H and small.head_dim < D // H
    assert small.qkv.out_features == 3 * H * small.head_dim
    assert small.proj.in_features == H * small.head_dim
