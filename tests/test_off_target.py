"""A landing outside 0.01 of the target is said out loud: an OffTargetWarning (a SurgeonWarning)
with the ratio the independent counter measured, the groups whose unit steps blocked a closer
landing, and what may help; the plan records the same text and ``plan.report()`` shows it."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from torch import nn

import surgeon
from surgeon.errors import OffTargetWarning, SurgeonWarning
from surgeon.planning.plan import Plan
from surgeon.verify import count_flops


class SharedTwice(nn.Module):
    """One bottleneck applied twice: each of its 3 hidden units is worth ~0.29 of the FLOPs, and
    nothing else can shrink (the residual width is the input's, the head's is the output's)."""

    def __init__(self):
        super().__init__()
        self.down = nn.Linear(32, 3)
        self.up = nn.Linear(3, 32)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        x = x + self.up(torch.relu(self.down(x)))
        x = x + self.up(torch.relu(self.down(x)))
        return self.head(x)


def _x():
    return torch.randn(4, 32, generator=torch.Generator().manual_seed(0))


def _caught(fn):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in seen if issubclass(w.category, OffTargetWarning)]


def test_shared_module_called_twice_warns_with_the_ratio_and_the_group():
    m, x = SharedTwice(), _x()
    small, seen = _caught(lambda: surgeon.shrink(m, x, target=0.5))
    got = count_flops(small, x) / count_flops(m, x)
    assert abs(got - 0.5) > 0.01  # the case of the issue: no step of 1 unit lands nearer
    assert len(seen) == 1 and issubclass(seen[0].category, SurgeonWarning)
    msg = str(seen[0].message)
    assert f"{got:.4f}" in msg and "target 0.5" in msg
    assert "down.weight" in msg and "one unit at a time" in msg  # the group that blocked it
    assert "What may help" in msg
    assert seen[0].filename == __file__  # points at the caller's line


def test_report_shows_the_miss_and_it_survives_json():
    m, x = SharedTwice(), _x()
    p, seen = _caught(lambda: surgeon.plan(m, x, target=0.5, verify=True))
    assert seen
    report = p.report()
    assert "OFF TARGET" in report and "down.weight" in report
    again = Plan.from_json(p.to_json())
    assert dict(again.extra)["off_target"] == dict(p.extra)["off_target"]


def test_coarse_rounding_suggests_round_to_none():
    m = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(2, 8)
    small, seen = _caught(lambda: surgeon.shrink(m, x, target=0.7, round_to=32))
    assert small[0].out_features == 32  # 32 or 64 hidden units: half or all of the FLOPs
    msg = str(seen[0].message)
    assert "round_to=None" in msg and "32 units at a time" in msg
    assert "min_keep" not in msg and "layers=True" not in msg  # it went below the target, not above
    assert re.search(r"landed at 0\.5\d* of the flops", msg)


def test_unverified_shrink_warns_from_the_plan():
    m, x = SharedTwice(), _x()
    _, seen = _caught(lambda: surgeon.shrink(m, x, target=0.5, verify=False))
    assert len(seen) == 1


def test_on_target_is_silent():
    m = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.randn(2, 8)
    small, seen = _caught(lambda: surgeon.shrink(m, x, target=0.5, round_to=None))
    assert not seen
    assert abs(count_flops(small, x) / count_flops(m, x) - 0.5) <= 0.01


def test_warning_can_be_made_an_error():
    m, x = SharedTwice(), _x()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SurgeonWarning)
        with pytest.raises(OffTargetWarning, match="outside target 0.5"):
            surgeon.shrink(m, x, target=0.5)
    assert json.dumps(str(OffTargetWarning("x")))  # a plain message, nothing to pickle
