"""Compensation without training (surgeon.compensate, shrink(..., compensate=True)).

Oracles: the least-squares refit can only lower each refitted layer's error against the original
layer output on the calibration data (per output channel, on the same input); removing units
whose producers are exactly zero, or exact linear combinations of kept units with nothing
nonlinear in between, is undone exactly; FLOPs, shapes and the user's model never change.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.compensate import compensate, recalibrate_bn
from surgeon.graph.trace import eval_mode
from surgeon.planning.planner import build_plan
from surgeon.verify import count_flops, max_rel_error

MIN_STD = 1e-3


class Res(nn.Module):
    """A stem, one residual block (BatchNorms, bias-free convs) and a linear head."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.head(x.mean((2, 3)))


def _settled(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics that are the exact statistics of the input
    distribution (as after training), so the model is a fair stand-in for a trained one."""
    torch.manual_seed(seed)
    recalibrate_bn(model, [torch.randn(64, 3, 12, 12) for _ in range(4)])
    return model.eval()


@pytest.fixture(scope="module")
def res():
    return _settled(Res())


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 3, 12, 12, generator=g), torch.zeros(32)) for _ in range(4)]


def _out(model, x):
    with eval_mode(model), torch.no_grad():
        return model(x)


def _layer_io(model: nn.Module, name: str, x: torch.Tensor):
    got = {}
    h = model.get_submodule(name).register_forward_hook(lambda m, a, o: got.update(i=a[0], o=o))
    try:
        _out(model, x)
    finally:
        h.remove()
    return got["i"], got["o"]


def test_refit_never_increases_layer_error(res, calib):
    x1 = calib[0][0][:1]
    a = surgeon.analyze(res, x1)
    p = surgeon.plan(res, x1, 0.5, analysis=a)
    plain = surgeon.apply(res, p)
    fixed = compensate(res, surgeon.apply(res, p), p, a, calib, norms="keep")
    out_keep = {s.tensor: list(s.keep) for s in p.slices if s.dim == 0}
    refitted = 0
    xs = torch.cat([b[0] for b in calib])
    for name in ("conv1", "conv2", "head"):
        if ("p", name + ".weight", 1) not in {m.key for g in a.groups for m in g.members}:
            continue
        inp, _ = _layer_io(fixed, name, xs)  # the input the compensated model really feeds it
        _, want = _layer_io(res, name, xs)
        keep = out_keep.get(name + ".weight")
        if keep is not None:
            want = want[:, keep]
        bn = {"conv1": "bn1", "conv2": "bn2"}.get(name)
        with torch.no_grad():
            new = fixed.get_submodule(name)(inp)
            old = plain.get_submodule(name)(inp)
            if bn:  # a bias-free conv's fitted bias lives in its BatchNorm's running mean
                shift = plain.get_submodule(bn).running_mean - fixed.get_submodule(bn).running_mean
                new = new + shift[None, :, None, None]
        dims = [0, 2, 3] if new.dim() == 4 else [0]
        err_new = ((new - want) ** 2).sum(dims)
        err_old = ((old - want) ** 2).sum(dims)
        assert bool((err_new <= err_old * (1 + 1e-5) + 1e-9).all()), name  # per output channel
        assert float(err_new.sum()) < 0.97 * float(err_old.sum()), name
        refitted += 1
    assert refitted >= 2
    ref = _out(res, xs)
    assert float(ref.std()) > MIN_STD
    assert max_rel_error(ref, _out(fixed, xs)) < 0.7 * max_rel_error(ref, _out(plain, xs))


def test_shrink_compensate_lowers_output_error_keeps_flops_and_user_model(res, calib):
    x1 = calib[0][0][:1]
    before = copy.deepcopy(res.state_dict())
    res.train()
    plain = surgeon.shrink(res, x1, 0.5)
    fixed = surgeon.shrink(res, x1, 0.5, data=calib, compensate=True)
    assert res.training and all(m.training for m in res.modules())
    res.eval()
    assert all(torch.equal(before[k], v) for k, v in res.state_dict().items())
    assert count_flops(fixed, x1) == count_flops(plain, x1) < count_flops(res, x1)
    assert {k: v.shape for k, v in fixed.state_dict().items()} == \
        {k: v.shape for k, v in plain.state_dict().items()}
    xt = torch.randn(128, 3, 12, 12, generator=torch.Generator().manual_seed(7))  # held out
    ref = _out(res, xt)
    assert float(ref.std()) > MIN_STD
    assert max_rel_error(ref, _out(fixed, xt)) < 0.7 * max_rel_error(ref, _out(plain, xt))


def _zeroed_plan(model, x1, drop: dict[str, list[int]]):
    """Zero the producers of some units (by a member tensor name) and plan their removal."""
    a = surgeon.analyze(model, x1)
    keep = a.full_keep()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, units in drop.items():
            gi = next(i for i, g in enumerate(a.groups) if any(m.key == ("p", name, 0) for m in g.members))
            g = a.groups[gi]
            keep[gi][units] = False
            for m in g.tensors:
                if m.dim == 0 and m.name in params:
                    params[m.name].index_fill_(0, torch.as_tensor(g.unit_indices(m, units)), 0.0)
    return a, build_plan(a, keep, target=1.0, metric="flops", criterion="manual", round_to=None)


@pytest.mark.parametrize("with_data", [True, False])
def test_planted_zero_units_leave_the_output_unchanged(calib, with_data):
    model = _settled(Res(), seed=3)
    x1 = calib[0][0][:1]
    a, p = _zeroed_plan(model, x1, {"conv1.weight": [0, 3, 5, 9, 12]})
    xs = torch.cat([b[0] for b in calib])
    ref = _out(model, xs)
    assert float(ref.std()) > MIN_STD
    small = surgeon.apply(model, p)
    assert max_rel_error(ref, _out(small, xs)) < 1e-4  # the removal itself is exact
    compensate(model, small, p, a, calib if with_data else None)
    assert max_rel_error(ref, _out(small, xs)) < 1e-4


def test_data_free_rebuilds_units_that_are_combinations_of_kept_ones():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 24), nn.Linear(24, 4))  # nothing nonlinear in between
    removed, kept = [1, 4, 7, 20], [i for i in range(24) if i not in (1, 4, 7, 20)]
    with torch.no_grad():  # each removed unit (row and bias) is a mix of kept units
        mix = torch.randn(len(removed), len(kept))
        net[0].weight[removed] = mix @ net[0].weight[kept]
        net[0].bias[removed] = mix @ net[0].bias[kept]
    x = torch.randn(256, 8)
    a = surgeon.analyze(net, x[:1])
    keep = a.full_keep()
    gi = next(i for i, g in enumerate(a.groups) if any(m.key == ("p", "0.weight", 0) for m in g.members))
    keep[gi][removed] = False
    p = build_plan(a, keep, target=1.0, metric="flops", criterion="manual", round_to=None)
    ref = _out(net, x)
    plain = surgeon.apply(net, p)
    assert max_rel_error(ref, _out(plain, x)) > 0.1
    fixed = compensate(net, surgeon.apply(net, p), p, a, ridge=1e-9)
    assert max_rel_error(ref, _out(fixed, x)) < 1e-4


def test_bn_recalibration_measures_the_data_and_restores_modes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=0.3), nn.ReLU(), nn.Dropout(0.5))
    net.train()
    net[3].eval()
    x = torch.randn(16, 3, 10, 10)
    assert recalibrate_bn(net, [(x, None)]) == 1
    with torch.no_grad():
        h = net[0](x)
    assert torch.allclose(net[1].running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(net[1].running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert net[1].momentum == 0.3 and net.training and net[1].training and not net[3].training


def test_bad_data_is_refused_clearly(res):
    x1 = torch.randn(1, 3, 12, 12)
    with pytest.raises(ValueError, match="fails on the first calibration batch.*shaped"):
        surgeon.shrink(res, x1, 0.5, data=[torch.randn(4, 5, 12, 12)], compensate=True)
    with pytest.raises(ValueError, match="data is empty"):
        surgeon.shrink(res, x1, 0.5, data=[], compensate=True)
    with pytest.raises(TypeError, match="iterable of batches"):
        surgeon.shrink(res, x1, 0.5, data=3, compensate=True)


def test_layers_called_twice_are_left_alone():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 16)
            self.b = nn.Linear(16, 16)
            self.c = nn.Linear(16, 3)

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.b(torch.relu(self.a(x)))))))

    torch.manual_seed(0)
    net = Twice()
    x = torch.randn(64, 6)
    small = surgeon.shrink(net, x[:1], 0.5, data=[x], compensate=True)
    plain = surgeon.shrink(net, x[:1], 0.5)
    assert torch.equal(small.b.weight, plain.b.weight)  # shared input, no single target
    assert np.isfinite(_out(small, x).numpy()).all()


class Depthwise(nn.Module):
    """A depthwise conv (never refitted) between two dense convs: its BatchNorm gets its own fit."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.dwbn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(self.stem(x))))
        return self.head(F.relu(self.dwbn(self.dw(x))).mean((2, 3)))


@pytest.mark.parametrize("norms", ["fit", "keep", "recalibrate"])
def test_batchnorm_after_an_unrefitted_layer(calib, norms):
    model = _settled(Depthwise(), seed=2)
    x1 = calib[0][0][:1]
    a = surgeon.analyze(model, x1)
    p = surgeon.plan(model, x1, 0.5, analysis=a)
    kept = {s.tensor: list(s.keep) for s in p.slices if s.dim == 0}.get("dwbn.running_mean")
    assert kept is not None and ("p", "conv.weight", 1) in {m.key for g in a.groups for m in g.members}
    plain = surgeon.apply(model, p)
    fixed = compensate(model, surgeon.apply(model, p), p, a, calib, norms=norms)
    xs = torch.cat([b[0] for b in calib])
    inp, _ = _layer_io(fixed, "dwbn", xs)
    _, want = _layer_io(model, "dwbn", xs)
    want = want[:, kept]
    with torch.no_grad():
        err_new = ((fixed.dwbn(inp) - want) ** 2).sum((0, 2, 3))
        err_old = ((plain.dwbn(inp) - want) ** 2).sum((0, 2, 3))
    if norms == "keep":
        assert torch.equal(fixed.dwbn.weight, plain.dwbn.weight)
    if norms == "fit":
        assert bool((err_new <= err_old * (1 + 1e-5) + 1e-9).all())  # per channel
        assert float(err_new.sum()) < float(err_old.sum())
        assert torch.equal(fixed.dwbn.running_var, plain.dwbn.running_var)  # shapes and stats kept
    if norms == "recalibrate":  # the statistics are those of the data the BatchNorm now sees
        assert torch.allclose(fixed.dwbn.running_mean, inp.mean((0, 2, 3)), atol=1e-4)
    assert torch.equal(fixed.bn.running_var, plain.bn.running_var)  # fed by a refitted conv
    assert torch.equal(fixed.stem[1].running_var, plain.stem[1].running_var)  # its input is unchanged


def test_one_sample_batches_still_hold_some_out():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(200, 6)
    data = [(x[i:i + 1], None) for i in range(100)]  # one sample per batch
    plain = surgeon.shrink(net, x[:1], 0.5)
    fixed = surgeon.shrink(net, x[:1], 0.5, data=data, compensate=True)
    ref = _out(net, x[100:])
    assert float(ref.std()) > MIN_STD
    assert max_rel_error(ref, _out(fixed, x[100:])) < max_rel_error(ref, _out(plain, x[100:]))
