"""The public API: inputs it refuses, what it promises about the model it is given, plans."""

from __future__ import annotations

import doctest
import importlib
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
from surgeon.verify import count_flops, count_params


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.b1 = nn.BatchNorm2d(32)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.b2 = nn.BatchNorm2d(64)
        self.c3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(x)))
        y = y + torch.relu(self.c3(y))
        return self.fc(y.mean((2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(2, 3, 16, 16)


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0, -0.5, 1.5, float("nan"), float("inf")])
def test_target_out_of_range(net, target):
    model, x = net
    before = _snapshot(model)
    with pytest.raises((ValueError, TypeError), match="target"):
        surgeon.shrink(model, x, target=target)
    assert _same(before, model.state_dict())


@pytest.mark.parametrize("target", ["0.5", None, True])
def test_target_wrong_type(net, target):
    model, x = net
    with pytest.raises(TypeError, match="target"):
        surgeon.shrink(model, x, target=target)


def test_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        surgeon.shrink(lambda x: x, torch.randn(1, 3), target=0.5)


def test_input_the_model_rejects(net):
    model, _ = net
    before = _snapshot(model)
    with pytest.raises(ValueError, match="fails on the example input"):
        surgeon.shrink(model, torch.randn(2, 5, 16, 16), target=0.5)
    assert _same(before, model.state_dict())


def test_bad_example_input_type(net):
    model, _ = net
    with pytest.raises(TypeError, match="example_input"):
        surgeon.shrink(model, 3.0, target=0.5)


def test_unknown_metric(net):
    model, x = net
    with pytest.raises(ValueError, match="metric"):
        surgeon.shrink(model, x, target=0.5, metric="latencyy")


def test_unknown_criterion(net):
    model, x = net
    with pytest.raises(ValueError, match="criterion"):
        surgeon.shrink(model, x, target=0.5, criterion="nope")


@pytest.mark.parametrize("round_to", [0, -8, 2.5])
def test_bad_round_to(net, round_to):
    model, x = net
    with pytest.raises(ValueError, match="round_to"):
        surgeon.shrink(model, x, target=0.5, round_to=round_to)


def test_target_below_reachable_names_the_floor(net):
    model, x = net
    before = _snapshot(model)
    with pytest.raises(ValueError, match="lowest reachable") as info:
        surgeon.shrink(model, x, target=1e-5)
    assert isinstance(info.value, surgeon.PlanError)
    floor = float(re.search(r"lowest reachable flops ratio is ([0-9.]+)", str(info.value)).group(1))
    assert 1e-5 < floor < 0.5
    assert _same(before, model.state_dict())
    small = surgeon.shrink(model, x, target=math.ceil(floor * 1000) / 1000 + 0.01)
    assert count_flops(small, x) < count_flops(model, x)


def test_ignore_unknown_module(net):
    model, x = net
    with pytest.raises(AttributeError):
        surgeon.shrink(model, x, target=0.5, ignore=["nope"])


# -- promises ----------------------------------------------------------------------------------------------
def test_target_one_is_equivalent(net):
    model, x = net
    small = surgeon.shrink(model, x, target=1.0)
    assert small is not model
    assert count_params(small) == count_params(model)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))


def test_input_model_untouched_and_classes_kept(net):
    model, x = net
    model.train()
    before = _snapshot(model)
    small = surgeon.shrink(model, x, target=0.5)
    assert _same(before, model.state_dict())  # BN statistics were not updated by tracing
    assert model.training and all(m.training for m in model.modules())
    assert type(small) is Net and small.c1.out_channels < 32
    assert set(small.state_dict()) == set(model.state_dict())


def test_inplace(net):
    model, x = net
    out = surgeon.shrink(model, x, target=0.5, inplace=True)
    assert out is model and model.c1.out_channels < 32
    model(x)


def test_same_input_same_plan(net):
    model, x = net
    a = surgeon.plan(model, x, target=0.5)
    b = surgeon.plan(model, x, target=0.5)
    assert a == b and a.to_json() == b.to_json()


def test_plan_json_round_trip_and_apply_matches_shrink(net, tmp_path):
    model, x = net
    p = surgeon.plan(model, x, target=0.5)
    p.save(tmp_path / "plan.json")
    q = surgeon.Plan.load(tmp_path / "plan.json")
    assert q == p
    via_plan = surgeon.apply(model, q)
    via_shrink = surgeon.shrink(model, x, target=0.5)
    assert _same(via_plan.state_dict(), via_shrink.state_dict())
    text = p.summary()
    assert "flops" in text and "groups shrink" in text


def test_plan_for_another_model_is_refused(net):
    model, x = net
    p = surgeon.plan(model, x, target=0.5)
    small = surgeon.apply(model, p)
    with pytest.raises(surgeon.PlanError, match="build a new plan"):
        surgeon.apply(small, p)


def test_metric_params(net):
    model, x = net
    small = surgeon.shrink(model, x, target=0.5, metric="params")
    assert abs(count_params(small) / count_params(model) - 0.5) <= 0.01


def test_round_to(net):
    model, x = net
    small = surgeon.shrink(model, x, target=0.5, round_to=8)
    for conv in (small.c1, small.c2):
        assert conv.out_channels % 8 == 0
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.5) <= 0.05


class _Res(nn.Module):
    def __init__(self, d: int = 16):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class _LayersFirst:
    """A layer group's scores spread far below 1, every channel's are 1: scores are normalised
    by their group's mean, so the group's lowest layers rank below every channel."""

    name = "layers_first"

    def score(self, model, groups):
        return [np.geomspace(1e-3, 1.0, g.n_units) if g.layers else np.ones(g.n_units) for g in groups]


@pytest.mark.parametrize("layers", [False, True])
def test_plan_parameter_counts_match_the_applied_model(net, layers):
    """The plan's params_before/params_after (read off its slices and dropped layers) are what
    count_params gives for the model before and after apply."""
    torch.manual_seed(0)
    cases = [net, (nn.Sequential(*[_Res() for _ in range(4)]).eval(), torch.randn(2, 16))]
    for model, x in cases:
        p = surgeon.plan(model, x, target=0.4, layers=layers, criterion=_LayersFirst())
        extra = dict(p.extra)
        small = surgeon.apply(model, p)
        assert extra["params_before"] == count_params(model)
        assert extra["params_after"] == count_params(small) < count_params(model)
    assert not layers or p.drops  # the residual blocks: some go whole


def test_min_keep_floor_is_a_whole_rounding_step():
    """A group pushed to its min_keep floor keeps a whole number of round_to steps (the floor
    rounded up), not min_keep's exact count: 20% of 100 channels is 20, kept as 32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 100, 3), nn.ReLU(), nn.Conv2d(100, 100, 3), nn.ReLU(), nn.Conv2d(100, 8, 3))
    x = torch.randn(1, 3, 20, 20)
    p = surgeon.plan(model, x, target=0.15, round_to=16, min_keep=0.2)
    kept = [d.kept for d in p.decisions if d.units == 100]
    assert kept and all(k % 16 == 0 and k >= 20 for k in kept)
    assert 32 in kept  # at least one group sits on the floor


def test_ignore(net):
    model, x = net
    small = surgeon.shrink(model, x, target=0.6, ignore=[model.c1])
    assert small.c1.weight.shape == model.c1.weight.shape


# -- capture ---------------------------------------------------------------------------------------------
class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 32)
        self.b = nn.Linear(32, 4)

    def forward(self, x, scale=None):
        h = torch.relu(self.a(x))
        if scale is not None:
            h = h * scale
        return self.b(h)


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict"])
def test_input_kinds(kind):
    model = TwoInputs()
    x = torch.randn(3, 8)
    example = {"tensor": x, "tuple": (x, torch.tensor(2.0)), "dict": {"x": x}}[kind]
    small = surgeon.shrink(model, example, target=0.5)
    assert small.a.out_features < 32


class ShapeBranch(nn.Module):
    """fx cannot trace a branch on a shape; torch.export can."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 32)
        self.b = nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.shape[0] > 1:
            h = h * 2
        return self.b(h)


def test_export_fallback():
    model, x = ShapeBranch(), torch.randn(3, 8)
    t = surgeon.trace(model, x)
    assert t.mode == "export"
    small = surgeon.shrink(model, x, target=0.5)
    assert small.a.out_features < 32 and small(x).shape == (3, 4)


class DataBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return x


def test_trace_error_says_what_to_do():
    with pytest.raises(surgeon.TraceError, match="What to do"):
        surgeon.trace(DataBranch(), torch.ones(2, 8))


# -- the public surface -----------------------------------------------------------------------------------
def test_public_names():
    for name in surgeon.__all__:
        assert getattr(surgeon, name) is not None


@pytest.mark.parametrize("module", ["surgeon", "surgeon.api", "surgeon.surgery", "surgeon.verify", "surgeon.options", "surgeon._atomic",
                                    "surgeon.graph.trace"])
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
