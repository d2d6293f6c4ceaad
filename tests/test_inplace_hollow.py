"""``shrink(inplace=True)`` lands on hollow trial cuts (no second copy of the weights) and reshapes
the model once; where the weights' values steer what runs, or a refit needs them, it lands a copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import surgeon
import surgeon.landing as landing_mod
from surgeon.slicing.hollow import Hollow
from surgeon.surgery import apply_own
from surgeon.verify import count_flops, measure


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


X = torch.randn(2, 3, 16, 16)


@torch.fx.wrap
def _steer(w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y @ y.T @ y if w.sum() > 0 else y  # more FLOPs when the weights sum above zero


class _Steered(nn.Module):
    """What runs depends on a weight's value: hollow zeros would take the other branch."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 64), nn.Linear(64, 8)
        self.gate = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return _steer(self.gate, self.b(torch.relu(self.a(x))))


def _real_copies(monkeypatch) -> list:
    """Record every cut that copied real tensors (not on meta, not in place)."""
    made = []
    real = landing_mod.apply_own

    def spy(model, plan, inplace=False):
        if not inplace and next(model.parameters()).device.type != "meta":
            made.append(plan)
        return real(model, plan, inplace)
    monkeypatch.setattr(landing_mod, "apply_own", spy)
    return made


def test_hollow_cut_shares_what_it_keeps_and_counts_as_the_real_cut():
    net = _net()
    p = surgeon.plan(net, X, target=0.5)
    hollow = Hollow(net)
    small = hollow.cut(p)
    real = apply_own(net, p)
    assert measure(small, X) == measure(real, X)  # same FLOPs, same output shapes
    cut = {s.tensor for s in p.slices}
    for name, t in small.state_dict(keep_vars=True).items():
        assert t.shape == real.state_dict()[name].shape
        if name in cut:
            assert not t.any()  # hollow: zeros, not the original's values
        else:
            assert t is net.state_dict(keep_vars=True)[name]  # shared, not copied


def test_inplace_lands_on_hollow_cuts_without_a_real_copy(monkeypatch):
    made = _real_copies(monkeypatch)
    ref, net = _net(), _net()
    held = net[0].weight
    expected = surgeon.shrink(ref, X, target=0.5)
    n = len(made)
    assert n >= 1  # the spy sees the copies a plain shrink makes
    out = surgeon.shrink(net, X, target=0.5, inplace=True)
    assert out is net and held is net[0].weight and held.shape[0] == net[0].out_channels < 32
    assert len(made) == n  # no real copy: trial cuts were hollow, the model reshaped once
    torch.testing.assert_close(net(X), expected(X))
    assert abs(count_flops(net, X) / count_flops(ref, X) - 0.5) <= 0.01


def test_values_that_steer_the_forward_fall_back_to_a_real_copy(monkeypatch):
    made = _real_copies(monkeypatch)
    torch.manual_seed(0)
    net, ref = _Steered().eval(), None
    ref = _Steered().eval()
    ref.load_state_dict(net.state_dict())
    x = torch.randn(4, 8)
    out = surgeon.shrink(net, x, target=0.6, inplace=True, round_to=None)
    assert out is net and len(made) >= 1  # the all-hollow model skips `extra`: it landed a copy
    torch.testing.assert_close(net(x), surgeon.shrink(ref, x, target=0.6, round_to=None)(x))


@pytest.mark.parametrize("kw", [{"compensate": True}, {"verify": False}])
def test_what_needs_values_or_no_count_lands_a_copy_as_before(monkeypatch, kw):
    made = _real_copies(monkeypatch)
    ref, net = _net(), _net()
    expected = surgeon.shrink(ref, X, target=0.5, **kw)
    n = len(made)
    surgeon.shrink(net, X, target=0.5, inplace=True, **kw)
    assert len(made) > n
    torch.testing.assert_close(net(X), expected(X))
