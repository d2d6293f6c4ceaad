"""An op with no coupling rule is never guessed: every dim it touches is frozen with a reason
that names the op, exactly the groups holding those dims are kept whole, and the rest of the
model is still pruned."""

import pytest
import torch
from torch import nn

from helpers import (analyze, assert_frozen, assert_tied, check_shrink, check_zero_invariance,
                     group_of)

X = torch.randn(2, 3, 8, 8)


def channel_mix(x):
    """Mixes neighbouring channels: no rule can know that, so it must stay opaque."""
    return x + 0.5 * torch.roll(x, 1, dims=1)


torch.fx.wrap("channel_mix")


class Opaque(nn.Module):
    """stem -> a -> <op with no rule> -> b -> head, plus a residual MLP after b."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.a = nn.Conv2d(24, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 24, 3, padding=1)
        self.c = nn.Conv2d(24, 32, 3, padding=1)
        self.d = nn.Conv2d(32, 24, 1)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        y = self.a(torch.relu(self.stem(x)))
        if self.kind == "fft":
            y = torch.fft.fft(y, dim=-1).abs()
        else:
            y = channel_mix(y)
        y = torch.relu(self.b(y))
        y = y + self.d(torch.relu(self.c(y)))
        return self.head(y)


OP_NAMES = {"fft": "fft_fft", "wrapped": "channel_mix"}


@pytest.mark.parametrize("kind", ["fft", "wrapped"])
def test_unknown_op_structure(kind):
    a = analyze(Opaque(kind), X)
    name = OP_NAMES[kind]
    before = group_of(a, "a.weight", 0)
    after = group_of(a, "b.weight", 1)
    assert before.id != after.id  # the op ties nothing to anything
    for g in (before, after):
        assert_frozen(g, "no coupling rule for", name)
    assert {(m.name, m.dim) for m in before.tensors} == {("a.weight", 0), ("a.bias", 0)}
    assert {(m.name, m.dim) for m in after.tensors} == {("b.weight", 1)}
    # every other group is untouched by the op: prunable unless it is the model's input/output
    stem = assert_tied(a, ("stem.weight", 0), ("stem.bias", 0), ("a.weight", 1), exactly=True)
    resid = assert_tied(a, ("b.weight", 0), ("b.bias", 0), ("c.weight", 1), ("d.weight", 0),
                        ("d.bias", 0), ("head.weight", 1), exactly=True)
    mlp = assert_tied(a, ("c.weight", 0), ("c.bias", 0), ("d.weight", 1), exactly=True)
    for g in (stem, resid, mlp):
        assert g.prunable and g.exact
    frozen = {g.id for g in a.groups if not g.prunable}
    assert frozen == {before.id, after.id, group_of(a, "stem.weight", 1).id,
                      group_of(a, "head.weight", 0).id}
    for g in a.groups:
        if g.id not in (before.id, after.id):
            assert g.reason is None or name not in g.reason


@pytest.mark.parametrize("kind", ["fft", "wrapped"])
def test_unknown_op_behaviour(kind):
    check_zero_invariance(Opaque(kind), X, expect=["stem.weight", "b.weight", "c.weight"])
    small = check_shrink(Opaque(kind), X)
    assert small.a.out_channels == small.b.in_channels == 16
    widths = (small.stem.out_channels, small.b.out_channels, small.c.out_channels)
    assert sum(widths) < 24 + 24 + 32  # pruned elsewhere
