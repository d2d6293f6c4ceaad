"""What models do inside ``forward`` (issue 15): state cached on the first call, widths kept in
int attributes and checked, and views of parameters that autograd cannot hook.

Each model here is a tiny pure-torch copy of the habit. The checks: the user's model is left
exactly as it was (every parameter, buffer and plain attribute, by identity and by value), and
``shrink(target=0.5)`` lands on half the FLOPs (independent ``FlopCounterMode`` count) with
zero-invariance against the original with the removed units zeroed; where the use of an
attribute cannot be followed, the groups it reads are kept whole with a reason naming the
module and the attribute, never a failure after surgery.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_rules_channel_dependent import MIN_STD, ZI_TOL, zeroed_like_plan
from torch import nn

import surgeon
from surgeon.api import shrink_landing
from surgeon.graph._snapshot import ReadRecorder, Snapshot, untouched
from surgeon.options import ShrinkConfig
from surgeon.verify import count_flops

FLOPS_TOL = 0.01


# -- oracles -----------------------------------------------------------------------------------------------
def model_state(model: nn.Module) -> dict:
    """Every entry of every module's ``__dict__`` (registries one level down): identity and a copy."""
    out: dict = {}

    def put(key, v):
        out[key] = (id(v), v.detach().clone() if isinstance(v, torch.Tensor) else repr(v), type(v))

    for name, m in model.named_modules():
        for k, v in vars(m).items():
            if isinstance(v, dict):
                put((name, k), sorted(v, key=str))
                for kk, vv in v.items():
                    put((name, k, kk), vv)
            else:
                put((name, k), v)
    return out


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys(), f"entries added or removed: {set(before) ^ set(after)}"
    for key, (i1, v1, t1) in before.items():
        i2, v2, t2 = after[key]
        assert t1 is t2, f"{key}: {t1.__name__} became {t2.__name__}"
        if isinstance(v1, torch.Tensor):
            assert i1 == i2 and v1.shape == v2.shape and torch.equal(v1, v2), f"{key} changed"
        else:
            assert v1 == v2, f"{key}: {v1} became {v2}"


def check_habit(net: nn.Module, x: torch.Tensor, target: float = 0.5) -> Any:
    """Shrink ``net``: untouched, on target, zero-invariant. Returns the landing."""
    net.eval()
    before = model_state(net)
    landing = shrink_landing(net, x, ShrinkConfig.of(target=target))
    assert_same_state(before, model_state(net))
    dense = count_flops(_cold_copy(net), x)
    ratio = count_flops(landing.model, x) / dense
    assert abs(ratio - target) <= FLOPS_TOL, ratio
    with torch.no_grad():
        ref = zeroed_like_plan(net, landing.plan)(x)
        out = landing.model(x)
    assert type(out) is torch.Tensor and float(ref.std()) > MIN_STD
    err = float((ref - out).abs().max() / ref.abs().max())
    assert err < ZI_TOL, err
    return landing


def _cold_copy(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net)


# -- 1. state written on the first forward -------------------------------------------------------------------
class AnchorHead(nn.Module):
    """Caches anchors in a plain attribute when it first sees an input size (class defaults);
    the check on ``self.shape`` is data flow fx cannot trace, so the cold capture is torch.export."""

    shape, anchors = None, torch.empty(0)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 8, 1)

    def forward(self, x):
        if self.shape != x.shape:
            self.anchors, self.shape = torch.arange(x.shape[2] * x.shape[3], dtype=x.dtype), x.shape
        return self.conv(x).flatten(2) + self.anchors


def _cached_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                         nn.ReLU(), AnchorHead()).eval()


def test_cached_attr_repro_leaves_the_model_and_lands():
    net, x = _cached_net(), torch.randn(1, 3, 16, 16)
    check_habit(net, x)
    assert "anchors" not in vars(net[4]) and net[4].shape is None  # class defaults visible again
    assert type(net(x)) is torch.Tensor


def test_capture_of_a_stateful_model_is_taken_warm():
    net, x = _cached_net(), torch.randn(1, 3, 16, 16)
    t = surgeon.trace(net, x)
    assert t.warmed and "anchors" not in vars(net[4])
    with torch.no_grad():
        assert torch.equal(net(x), _cached_net()(x))  # the user's model computes as before


class DictCache(nn.Module):
    """Fills a cache dict in place and counts its calls in a buffer (both traced by fx)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.cache: dict = {}
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls.add_(1)
        self.cache["last"] = x
        return self.conv(x)


def test_in_place_state_is_taken_back():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), DictCache(32), nn.ReLU(),
                        nn.Conv2d(32, 8, 1)).eval()
    x = torch.randn(1, 3, 12, 12)
    check_habit(net, x)
    assert net[2].cache == {} and float(net[2].calls) == 0.0


def test_snapshot_restores_attributes_classes_and_buffers():
    class Box(nn.Module):
        default = 3

        def __init__(self):
            super().__init__()
            self.register_buffer("b", torch.zeros(4))
            self.items = [1, 2]

    m = Box()
    b, items = m.b, m.items
    with untouched(m) as snap:
        m.extra = torch.ones(1)
        m.default = 5  # shadows the class default
        Box.default = 7
        m.b.add_(1)
        m.items.append(3)
        assert len(snap.changes()) >= 4
    assert "extra" not in vars(m) and "default" not in vars(m) and Box.default == 3
    assert m.b is b and torch.equal(m.b, torch.zeros(4)) and m.items is items and items == [1, 2]
    assert Snapshot(m).changes() == []


# -- 2. widths kept in int attributes and checked in forward -----------------------------------------------
class Down(nn.Module):
    """``assert x.shape[1] == self.channels``: the width of the input, checked in Python."""

    def __init__(self, c: int):
        super().__init__()
        self.channels = c
        self.conv = nn.Conv2d(c, c, 3, 2, 1)

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.conv(x)


class Up(nn.Module):
    """``self.out_channels`` checked against what its own conv produces."""

    def __init__(self, c: int):
        super().__init__()
        self.out_channels = c
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.shape[1] != self.out_channels:
            raise ValueError("width changed")
        return y


def test_channels_attr_repro_is_fixed_by_surgery():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), Down(64), nn.ReLU(), nn.Conv2d(64, 8, 3))
    x = torch.randn(1, 3, 32, 32)
    landing = check_habit(net, x)
    small = landing.model
    assert small[2].channels == small[0].out_channels < 64  # the attribute follows the input width
    assert any(a.module == "2" and a.attr == "channels" for a in landing.plan.attrs)


def test_attribute_checked_against_the_output_width():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 48, 3, padding=1), nn.ReLU(), Up(48), nn.ReLU(), nn.Conv2d(48, 8, 3))
    x = torch.randn(1, 3, 16, 16)
    landing = check_habit(net, x)
    assert landing.model[2].out_channels == landing.model[2].conv.out_channels


class TwoChecks(nn.Module):
    """One attribute checked against two widths that prune independently: nothing fits both."""

    def __init__(self, c: int):
        super().__init__()
        self.c = c
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        assert x.shape[1] == self.c and y.shape[1] == self.c
        return y


def test_attribute_no_width_fits_keeps_its_groups_whole_with_a_reason():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), TwoChecks(32), nn.ReLU(),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 8, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    a = surgeon.analyze(net, x)
    frozen = [g for g in a.groups if g.reason and "'2' reads its attribute 'c'" in g.reason]
    assert len(frozen) == 2, [g.reason for g in a.groups]
    check_habit(net, x, target=0.7)  # the 64-wide group still prunes, and the result runs


def test_reads_are_recorded_only_for_user_modules():
    net = nn.Sequential(nn.Conv2d(3, 16, 3), Down(16))
    with ReadRecorder(net) as rec:
        net(torch.randn(1, 3, 8, 8))
    assert rec.reads() == (("1", "channels", 16),)
    assert "channels" not in vars(Down)  # the recording descriptor is gone


# -- 3. a view of a parameter taken under no_grad (Expected gradient function to be set) ---------------------
class Positions(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(16, 32))

    def forward(self, n: int):
        with torch.no_grad():  # a leaf view that requires grad but has no gradient function
            return self.table[:n]


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos = Positions()
        self.fc1, self.fc2 = nn.Linear(32, 128), nn.Linear(128, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = x + self.pos(x.shape[1])
        return self.head(x + self.fc2(torch.relu(self.fc1(x))))


def test_no_grad_view_of_a_parameter_is_counted_and_shrunk():
    torch.manual_seed(0)
    net, x = TinyEncoder().eval(), torch.randn(2, 8, 32)
    with pytest.raises(AssertionError, match="gradient function"):  # torch's own counter fails
        from torch.utils.flop_counter import FlopCounterMode

        with torch.enable_grad(), FlopCounterMode(display=False):
            net(x)
    assert count_flops(net, x) > 0
    check_habit(net, x)


class CatNet(nn.Module):
    """The checked module's input and output end up in one group (a cat joins them): the two
    dims of its width lose different units, and the attribute must follow the input's."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1, bias=False)
        self.down = Down(16)
        self.mix = nn.Conv2d(32, 24, 3, padding=1)
        self.head = nn.Conv2d(24, 8, 1)

    def forward(self, x):
        a = torch.relu(self.stem(x))
        b = nn.functional.interpolate(self.down(a), scale_factor=2.0)
        return self.head(torch.relu(self.mix(torch.cat([b, a], 1))))


def test_attribute_follows_the_right_dim_of_a_joint_group():
    torch.manual_seed(0)
    net, x = CatNet().eval(), torch.randn(1, 3, 16, 16)
    landing = check_habit(net, x)
    assert landing.model.down.channels == landing.model.stem.out_channels
