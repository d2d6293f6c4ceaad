"""surgeon.latency: per-layer tables (cache, fit), the latency cost model, metric="latency",
runtime-aware rounding and the errors for bad input.

Most tests time nothing: an analytic backend (latency = a fixed overhead plus the layer's
multiply-accumulates with channels padded to blocks of 16, like onnxruntime's NCHWc kernels)
stands in for onnxruntime, so the tests are fast and deterministic. One test runs the real
onnxruntime backend on a tiny net and asserts only what timing noise cannot change.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
from surgeon import latency
from surgeon.latency.rounding import AutoRound, preferred_multiple
from surgeon.latency.runtime import interleaved
from surgeon.latency.table import GRID, LayerSig, Table, TableCache, interp2
from surgeon.verify import count_flops, count_params, output_shapes


from fakes import _layer_cost, _model_cost, fake  # noqa: F401 - the analytic backend's fixture


class Net(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.c3 = nn.Conv2d(width, 2 * width, 1)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(self.dw(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(1, 3, 24, 24)


# -- the table -------------------------------------------------------------------------------------
def test_cache_written_then_reused(fake, net, tmp_path):
    model, x = net
    a = surgeon.analyze(model, x)
    a, key = latency.attach(a, x, "ort-cpu")
    assert key == "latency:ort-cpu"
    files = list((tmp_path / "latency").glob("ort-cpu-*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())
    assert stored["machine"] == "fake machine" and len(stored["tables"]) == 5  # c1, c2, dw, c3, fc
    first = fake.timed
    assert first > 0
    b = surgeon.analyze(model, x)
    b, _ = latency.attach(b, x, "ort-cpu")
    assert fake.timed == first, "a second analysis re-measured layers the cache holds"
    keep = [np.random.default_rng(0).random(g.n_units) > 0.3 for g in a.groups]
    assert a.cost(key).total(keep) == pytest.approx(b.cost(key).total(keep))


def test_cache_of_another_machine_is_not_used(fake, net, tmp_path):
    model, x = net
    latency.attach(surgeon.analyze(model, x), x, "ort-cpu")
    first = fake.timed
    fake.machine = lambda: "another machine"
    latency.attach(surgeon.analyze(model, x), x, "ort-cpu")
    assert fake.timed == 2 * first


def _table(ms) -> Table:
    sig = LayerSig("conv", 64, 64, (1, 8, 8), (3, 3), (1, 1), (1, 1), (1, 1))
    w = [max(8, round(64 * f / 8) * 8) for f in GRID]
    return Table(sig, w, w, ms)


def test_fit_is_monotone_in_width_and_ignores_an_outlier():
    f = np.array(GRID)
    truth = 0.05 + 0.1 * f[:, None] + 0.1 * f[None, :] + 1.0 * f[:, None] * f[None, :]
    noisy = truth * (1 + 0.03 * np.random.default_rng(0).standard_normal(truth.shape))
    noisy[1, 1] *= 8  # another process took the core during one timing
    t = _table(noisy.tolist())
    fo, fi, ms = t.grid()
    assert (np.diff(ms, axis=0) >= 0).all() and (np.diff(ms, axis=1) >= 0).all()
    assert ms[-1, -1] == pytest.approx(truth[-1, -1], rel=0.1)
    assert ms[1, 1] < 2 * truth[1, 1], "the outlier leaked into the fit"
    vals = [t.at(q, q) for q in np.linspace(0.05, 1.0, 40)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert min(vals) >= 0


def test_interp2_hits_grid_points_and_interpolates_between():
    fo = fi = np.array([GRID])
    ms = np.arange(25, dtype=float).reshape(1, 5, 5)
    assert interp2(fo, fi, ms, np.array([0.5]), np.array([0.75]))[0] == pytest.approx(ms[0, 2, 3])
    mid = interp2(fo, fi, ms, np.array([0.625]), np.array([1.0]))[0]
    assert mid == pytest.approx((ms[0, 2, 4] + ms[0, 3, 4]) / 2)


def test_table_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path))
    sig = LayerSig("linear", 32, 48, (1,))
    calls = []

    def measure(cases):
        calls.append(len(cases))
        return [float(m.in_features * m.out_features) for m, _ in cases]

    c = TableCache("ort-cpu", "m")
    t = c.get(sig, 8, measure)
    assert calls == [25] and t.ms[-1][-1] == 32 * 48
    c.save()
    t2 = TableCache("ort-cpu", "m").get(sig, 8, measure)
    assert calls == [25] and t2.ms == t.ms


# -- planning against latency ------------------------------------------------------------------------
def test_latency_metric_shrinks_to_target(fake, net):
    model, x = net
    shapes = output_shapes(model, x)
    small = surgeon.shrink(model, x, target=0.5, metric="latency", runtime="ort-cpu")
    assert output_shapes(small, x) == shapes
    assert count_params(small) < count_params(model)
    got = _model_cost(small, x) / _model_cost(model, x)
    assert abs(got / 0.5 - 1) <= 0.1  # the promise: within 10% of the target, as the backend measures


def test_latency_plan_records_metric_and_rounds_for_the_runtime(fake, net):
    model, x = net
    p = surgeon.plan(model, x, 0.6, metric="latency", runtime="ort-cpu")
    assert p.metric == "latency:ort-cpu" and p.round_to == "auto"
    assert abs(p.ratio - 0.6) < 0.1
    step = AutoRound(preferred_multiple("ort-cpu")).for_group(64)
    for d in p.decisions:
        if d.kept < d.units and d.units >= 64:
            assert d.kept % step == 0, (d, step)
    assert surgeon.Plan.from_json(p.to_json()) == p


def test_latency_marginal_prefers_expensive_layers(fake, net):
    model, x = net
    a = surgeon.analyze(model, x)
    a, key = latency.attach(a, x, "ort-cpu")
    cost = a.cost(key)
    full = cost.total(a.full_keep())
    assert full == pytest.approx(cost.base)
    marg = cost.marginal()
    assert all((m >= 0).all() for m in marg) and any((m > 0).any() for m in marg)
    for gi, g in enumerate(a.groups):  # removing a group's units one by one never costs more
        if g.prunable:
            keep = a.full_keep()
            keep[gi][: g.n_units // 2] = False
            assert cost.total(keep) <= full + 1e-9


def _net_cost(model: nn.Module, x, dw: float = 1.0) -> float:
    """Analytic latency of a whole model: the padded cost of each conv and linear layer, the
    depthwise and grouped ones ``dw`` times that."""
    calls = []
    hooks = [m.register_forward_hook(lambda m, inp, out: calls.append((m, inp[0])))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
        for h in hooks:
            h.remove()
        return 5.0 + sum(_layer_cost(m, i) * (dw if getattr(m, "groups", 1) > 1 else 1.0) for m, i in calls)


def test_counted_target_on_a_runtime_takes_the_order_timed_faster(fake, net, monkeypatch):
    from surgeon.criteria import get_criterion
    from surgeon.planning.planner import build_plan, solve

    model, x = net
    # tables in which the depthwise conv runs 4x slower per MAC than the others (memory-bound, as
    # on a real CPU), so ranking by milliseconds per FLOP differs from ranking by score ...
    layers = fake.layers
    monkeypatch.setattr(fake, "layers", lambda cases: [t * (4.0 if m.groups > 1 else 1.0) if isinstance(m, nn.Conv2d)
                                                       else t for (m, _), t in zip(cases, layers(cases))])
    # ... and a runtime that times whole models by those layer costs, where the latency model,
    # fitted to the tables and the dense model's time, predicts the two plans in the other order
    monkeypatch.setattr(fake, "ratio", lambda dense, small, x: _net_cost(small, x, 4.0) / _net_cost(dense, x, 4.0))
    a = surgeon.analyze(model, x)
    a, key = latency.attach(a, x, "ort-cpu")
    scores = get_criterion("l2").score(model, a.groups)
    cands = [solve(a, scores, "flops", 0.5, None, 0.1, key, w, per_target=True) for w in (1.0, 0.0)]
    assert [int(k.sum()) for k in cands[0]] != [int(k.sum()) for k in cands[1]]  # two real choices
    timed = [_net_cost(surgeon.apply(model, build_plan(a, k, target=0.5, metric="flops", criterion="l2",
                                                           round_to=None)), x, 4.0) for k in cands]
    best = cands[int(np.argmin(timed))]
    assert best is not min(cands, key=a.cost(key).total)  # premise: timing and prediction disagree
    p = surgeon.plan(model, x, 0.5, runtime="ort-cpu", round_to=None, analysis=a)
    assert [d.kept for d in p.decisions] == [int(k.sum()) for k in best]
    assert abs(p.ratio - 0.5) <= 0.01
    a.cost(key).example_input = None  # nothing to time with: the latency model predicts
    assert latency.fastest(a, "ort-cpu", cands) is min(cands, key=a.cost(key).total)


def test_per_target_ranking_thins_what_is_slow_for_its_flops(fake, net, monkeypatch):
    """A FLOPs target ranked by milliseconds per FLOP takes units first from the group whose
    layers run slowest for their FLOPs (here the depthwise conv's), and still lands on the target."""
    from surgeon.criteria import get_criterion
    from surgeon.planning.planner import solve

    model, x = net
    layers = fake.layers
    monkeypatch.setattr(fake, "layers", lambda cases: [t * (4.0 if isinstance(m, nn.Conv2d) and m.groups > 1 else 1.0)
                                                       for (m, _), t in zip(cases, layers(cases))])
    a = surgeon.analyze(model, x)
    a, key = latency.attach(a, x, "ort-cpu")
    scores = get_criterion("l2").score(model, a.groups)
    dw = next(gi for gi, g in enumerate(a.groups) if any(m.name == "dw.weight" for m in g.tensors))
    by_score = solve(a, scores, "flops", 0.5, None, 0.1)
    per_flop = solve(a, scores, "flops", 0.5, None, 0.1, key, 1.0, per_target=True)
    assert per_flop[dw].sum() < by_score[dw].sum()
    flops = a.cost("flops")
    for keep in (by_score, per_flop):
        assert abs(flops.total(keep) / flops.base - 0.5) <= 0.01
    # without per_target the same call ranks by milliseconds saved, not per FLOP
    assert [int(k.sum()) for k in solve(a, scores, "flops", 0.5, None, 0.1, key, 1.0)] != \
        [int(k.sum()) for k in per_flop]


def test_round_to_auto_steps():
    r = AutoRound(16)  # whole blocks of 16 channels; a group narrower than a block keeps its width
    assert [r.for_group(n) for n in (8, 12, 16, 24, 32, 64, 256)] == [8, 12, 16, 16, 16, 16, 16]


class Inverted(nn.Module):
    """MobileNet-V2's narrow high-resolution stages in miniature: 32-, 16- and 24-channel groups,
    an 8-channel squeeze, depthwise convs, wide groups further on and a residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2, 1)
        self.dw1 = nn.Conv2d(32, 32, 3, 1, 1, groups=32)
        self.pw1 = nn.Conv2d(32, 16, 1)
        self.ex2 = nn.Conv2d(16, 96, 1)
        self.dw2 = nn.Conv2d(96, 96, 3, 2, 1, groups=96)
        self.se1, self.se2 = nn.Conv2d(96, 8, 1), nn.Conv2d(8, 96, 1)
        self.pw2 = nn.Conv2d(96, 24, 1)
        self.ex3, self.dw3, self.pw3 = nn.Conv2d(24, 144, 1), nn.Conv2d(144, 144, 3, 1, 1, groups=144), \
            nn.Conv2d(144, 24, 1)
        self.head = nn.Conv2d(24, 256, 1)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = self.pw1(torch.relu(self.dw1(x)))
        x = torch.relu(self.dw2(torch.relu(self.ex2(x))))
        x = x * torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = self.pw2(x)
        x = x + self.pw3(torch.relu(self.dw3(torch.relu(self.ex3(x)))))
        return self.fc(torch.relu(self.head(x)).mean((2, 3)))


def test_auto_rounding_keeps_whole_blocks_in_narrow_groups():
    """Widths off the 16-channel block made MobileNet-V2's early stages slower than dense on
    onnxruntime (32->24 and 16->8): narrow groups keep a multiple of 16 or their full width."""
    torch.manual_seed(0)
    model, x = Inverted().eval(), torch.randn(1, 3, 64, 64)
    p = surgeon.plan(model, x, 0.5)
    assert p.round_to == "auto" and abs(p.ratio - 0.5) <= 0.002
    small = surgeon.apply(model, p)
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.5) <= 0.01
    narrow = {"stem": 32, "pw1": 16, "se1": 8, "pw2": 24}
    kept = {name: getattr(small, name).out_channels for name in narrow}
    assert kept["pw1"] == 16 and kept["se1"] == 8  # a block or less: never pruned
    assert all(kept[n] == w or kept[n] % 16 == 0 for n, w in narrow.items()), kept
    assert kept["stem"] < 32 or kept["pw2"] < 24  # the narrow groups still take part
    assert all(small.get_submodule(n).out_channels % 16 == 0 for n in ("ex2", "ex3", "head")
               if small.get_submodule(n).out_channels < model.get_submodule(n).out_channels)
    free = surgeon.plan(model, x, 0.5, round_to=None)  # premise: unrounded, the narrow groups move off the block
    assert any(d.kept % 16 and d.kept < d.units for d in free.decisions)


def test_runtime_rounds_flops_target():
    torch.manual_seed(0)
    model, x = Net(256).eval(), torch.randn(1, 3, 16, 16)
    small = surgeon.shrink(model, x, target=0.5, runtime="ort-cpu")
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.5) <= 0.01
    step = preferred_multiple("ort-cpu")
    assert all(w % step == 0 for w in (small.c1.out_channels, small.c2.out_channels, small.c3.out_channels))


def test_auto_rounding_gives_way_to_the_exact_target(net):
    model, x = net
    coarse = surgeon.plan(model, x, 0.5, round_to=16)
    assert abs(coarse.ratio - 0.5) > 0.002  # premise: steps of 16 cannot land on 0.5 in this net
    p = surgeon.plan(model, x, 0.5)  # round_to="auto" by default
    assert p.round_to is None and abs(p.ratio - 0.5) <= 0.002
    wide = surgeon.plan(Net(256).eval(), x, 0.5)
    assert wide.round_to == "auto" and abs(wide.ratio - 0.5) <= 0.002
    assert all(d.kept % 16 == 0 for d in wide.decisions if d.kept < d.units and d.units >= 64)


def test_auto_rounding_never_refuses_a_target_the_unrounded_plan_reaches():
    net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Conv2d(64, 8, 3))
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(surgeon.PlanError):
        surgeon.plan(net, x, 0.05, round_to=16)  # the step floors keep more than 5%
    p = surgeon.plan(net, x, 0.05)
    assert p.round_to is None and abs(p.ratio - 0.05) <= 0.01


# -- bad input -----------------------------------------------------------------------------------------
def test_latency_without_runtime(net):
    model, x = net
    with pytest.raises(ValueError, match="runtime="):
        surgeon.shrink(model, x, target=0.5, metric="latency")


@pytest.mark.parametrize("runtime", ["tpu", "onnxruntime", 3])
def test_unknown_runtime(net, runtime):
    model, x = net
    with pytest.raises(ValueError, match="ort-cpu"):
        surgeon.plan(model, x, target=0.5, metric="latency", runtime=runtime)


def test_bad_round_to_string(net):
    model, x = net
    with pytest.raises(ValueError, match="auto"):
        surgeon.shrink(model, x, target=0.5, round_to="fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_runtime_without_gpu(net):
    model, x = net
    with pytest.raises(ValueError, match="CUDA"):
        surgeon.shrink(model, x, target=0.5, metric="latency", runtime="torch-cuda")


def test_counted_cost_model_refuses_latency(net):
    model, x = net
    a = surgeon.analyze(model, x)
    with pytest.raises(ValueError, match="runtime"):
        a.cost("latency")


# -- the real backend, asserting only what noise cannot change -------------------------------------
def test_ort_backend_measures_and_caches(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SURGEON_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    x = torch.randn(1, 3, 16, 16)
    a = surgeon.analyze(model, x)
    a, key = latency.attach(a, x, "ort-cpu")
    cost = a.cost(key)
    assert cost.base > 0 and cost.base_ms > 0
    assert len(list((tmp_path / "latency").glob("*.json"))) == 1
    assert all(t.table is not None for t in cost.terms if not t.elementwise)
    r = latency.measured_ratio(model, model, x, "ort-cpu")
    assert 0.3 < r < 3.0


# -- landing metric="latency" ----------------------------------------------------------------------
def test_reaim_scales_then_takes_the_secant():
    want = 0.5
    measure = (lambda goal: 0.2 + 0.6 * goal)  # latency ratio linear in the planned goal, not proportional
    tried = [(0.5, measure(0.5))]
    second = latency.reaim(tried, want)
    assert second == pytest.approx(0.5 * want / measure(0.5))  # first miss: scale by want / measured
    tried.append((second, measure(second)))
    assert measure(latency.reaim(tried, want)) == pytest.approx(want)  # then the line through two tries
    noisy = [(0.5, 0.46), (0.54, 0.44)]  # noise made the line decreasing: scale the last try instead
    assert latency.reaim(noisy, want) == pytest.approx(0.54 * want / 0.44)
    assert latency.reaim([(0.9, 0.3)], want) == 1.0  # never past the whole model


def test_interleaved_times_min_rounds_then_stops_at_the_budget():
    calls = []
    runs = [lambda: calls.append(0), lambda: calls.append(1)]
    t = interleaved(runs, rounds=50, warmup=0, budget_s=0.0, min_rounds=9)
    assert t.rounds == 9 and calls.count(0) == calls.count(1) == 9
    assert interleaved(runs, rounds=6, warmup=0, budget_s=60.0, min_rounds=3).rounds == 6
