"""The GNN criterion: checkpoint, fallback to the base criterion, graph construction, errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.criteria import Magnitude

pytest.importorskip("torch_geometric")

from surgeon.criteria.gnn import CHECKPOINT, GNNCriterion, load, require_pyg  # noqa: E402
from surgeon.criteria.gnn.features import (EDGE_TYPES, GROUP_FEATURES, UNIT_FEATURES,  # noqa: E402
                                           model_features, taylor_scores, to_pyg)
from surgeon.criteria.gnn.model import MetaNet  # noqa: E402
from surgeon.verify import count_flops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class ResCat(nn.Module):
    """c1 -> (+ c2) residual -> two branches c3, c4 -> concat -> pool -> fc."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 1)
        self.c2 = nn.Conv2d(4, 4, 1)
        self.c3 = nn.Conv2d(4, 2, 1)
        self.c4 = nn.Conv2d(4, 3, 1)
        self.fc = nn.Linear(5, 6)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        y = x + self.c2(x)
        z = torch.cat([torch.relu(self.c3(y)), torch.relu(self.c4(y))], 1)
        return self.fc(z.mean((2, 3)))


class Unseen(nn.Module):
    """Shapes the metanetwork never trained on: depthwise conv, squeeze-excite, 3-channel input."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.bn = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.se1, self.se2 = nn.Linear(24, 6), nn.Linear(6, 24)
        self.pw = nn.Conv2d(24, 40, 1)
        self.head = nn.Linear(40, 7)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.dw(x))
        s = torch.sigmoid(self.se2(F.relu(self.se1(x.mean((2, 3))))))
        x = F.relu(self.pw(x * s[:, :, None, None]))
        return self.head(x.mean((2, 3)))


def _data(model, shape, classes, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *shape, generator=g), torch.randint(0, classes, (8,), generator=g)) for _ in range(n)]


def _untrained(layers=3):
    torch.manual_seed(0)
    return MetaNet(2 + len(UNIT_FEATURES) + len(GROUP_FEATURES), len(EDGE_TYPES), hidden=16, layers=layers)


def test_checkpoint_ships_small_and_loads_without_network(monkeypatch):
    assert CHECKPOINT.exists() and CHECKPOINT.stat().st_size <= 5 * 2 ** 20
    record = json.loads((CHECKPOINT.parent / "train_record.json").read_text())
    assert record["command"].startswith("python -m surgeon.criteria.gnn.train")
    # trained for today's planner and features, on models and seeds the benchmark never judges it on
    assert record["planner"].startswith("score / group mean (cost_weight=0)")
    assert record["features"] == {"unit": list(UNIT_FEATURES), "group": list(GROUP_FEATURES), "edge": list(EDGE_TYPES)}
    from surgeon.criteria.gnn import zoo

    assert not {m["model"] for m in record["models"]} & {s.name for s in zoo.HELDOUT_SPECS}
    assert not {m["seed"] for m in record["models"]} & set(zoo.HELDOUT_SEEDS)
    assert any("layers" in m["units"] for m in record["models"])  # whole layers were in the training zoo

    def no_network(*a, **k):
        raise AssertionError("the GNN criterion tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    net = load()
    assert len(net.layers) >= 1  # the shipped network passes messages
    torch.manual_seed(0)
    model = Unseen().eval()
    x = torch.randn(1, 3, 12, 12)
    small = surgeon.shrink(model, x, 0.6, criterion="gnn")
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.6) <= 0.01


@pytest.mark.parametrize("with_data", [False, True])
def test_untrained_network_is_the_base_criterion(with_data):
    torch.manual_seed(1)
    model = Unseen().eval()
    x = torch.randn(1, 3, 12, 12)
    a = surgeon.analyze(model, x)
    data = _data(model, (3, 12, 12), 7) if with_data else None
    got = GNNCriterion(data=data, net=_untrained()).score(model, a.groups)
    want = taylor_scores(model, a.groups, data) if with_data else Magnitude(2).score(model, a.groups)
    prunable = [i for i, g in enumerate(a.groups) if g.prunable]
    assert prunable
    for i in prunable:
        assert np.ptp(want[i]) > 0  # a real ranking to reproduce
        np.testing.assert_array_equal(np.argsort(got[i], kind="stable"), np.argsort(want[i], kind="stable"))
        np.testing.assert_allclose(got[i], want[i], rtol=0, atol=0)
    # and so the plan is the base criterion's plan
    p_gnn = surgeon.plan(model, x, 0.5, criterion=GNNCriterion(data=data, net=_untrained()), analysis=a)
    p_base = surgeon.plan(model, x, 0.5, criterion=_Fixed(want), analysis=a)
    assert p_gnn.slices == p_base.slices and any(d.kept < d.units for d in p_gnn.decisions)


class _Fixed:
    name = "fixed"

    def __init__(self, scores):
        self.scores = scores

    def score(self, model, groups):
        return self.scores


@pytest.mark.parametrize("with_data", [False, True])
def test_shipped_scores_have_the_right_shapes_on_an_unseen_model(with_data):
    torch.manual_seed(2)
    model = Unseen().eval()
    x = torch.randn(1, 3, 12, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = surgeon.analyze(model, x)
    crit = GNNCriterion(data=_data(model, (3, 12, 12), 7) if with_data else None)
    scores = crit.score(model, a.groups)
    assert len(scores) == len(a.groups)
    for g, s in zip(a.groups, scores):
        assert s.shape == (g.n_units,) and np.isfinite(s).all() and (s >= 0).all()
    # the trained network changes the base ranking somewhere (it is not the identity)
    base = Magnitude(2).score(model, a.groups) if not with_data else taylor_scores(model, a.groups, crit.data)
    assert any(not np.allclose(s, b) for g, s, b in zip(a.groups, scores, base) if g.prunable)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    assert all(p.grad is None for p in model.parameters())
    small = surgeon.shrink(model, x, 0.5, criterion=crit)
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.5) <= 0.01


def test_graph_of_a_residual_concat_model():
    model = ResCat().eval()
    a = surgeon.analyze(model, torch.randn(1, 3, 8, 8))
    widths = sorted(g.n_units for g in a.groups if g.prunable)
    assert widths == [4, 5]  # the residual stream (c1, c2 out) and the concat (c3 + c4 -> fc)
    graph = to_pyg(model_features(model, a.groups))
    n_groups = len(a.groups)
    assert n_groups == 4  # input channels, residual, concat, output
    assert graph.num_nodes == n_groups + 9
    assert int(graph.x[:, 0].sum()) == 9 and int(graph.x[:, 1].sum()) == n_groups
    ea = graph.edge_attr
    col = {t: ea[:, EDGE_TYPES.index(t)] for t in EDGE_TYPES}
    # member: 9 units, both ways; group flow c1, c3, c4, fc both ways, and c2 (it reads and
    # writes the residual group) as one self-loop; unit flow through c3 (2 x top-3 of 4) and
    # c4 (3 x 3), both ways
    assert int(col["member"].sum()) == 18
    assert int(col["unit"].sum()) == 30
    assert graph.edge_index.shape[1] == 18 + 9 + 30
    flow = (col["member"] == 0) & (col["unit"] == 0)
    assert int(flow.sum()) == 9
    loops = graph.edge_index[0] == graph.edge_index[1]
    assert int(loops.sum()) == 1 and bool(col["conv"][loops].all()) and bool(col["residual"][loops].all())
    assert int(col["conv"][flow].sum()) == 7 and int(col["linear"][flow].sum()) == 2
    assert int(col["residual"][flow].sum()) == 3  # c1 and c2 write the residual group
    assert int(col["concat"][flow].sum()) == 4  # c3 and c4 each write part of the concat
    assert int(col["attention"].sum()) == 0
    assert int(col["reverse"].sum()) == (graph.edge_index.shape[1] - 1) // 2
    # reverse edges mirror forward ones
    fwd = {tuple(e) for e, r in zip(graph.edge_index.t().tolist(), col["reverse"].tolist()) if r == 0
           and e[0] != e[1]}
    back = {tuple(e[::-1]) for e, r in zip(graph.edge_index.t().tolist(), col["reverse"].tolist()) if r == 1}
    assert fwd == back
    # unit-to-unit weights are shares of each destination unit's incoming weight
    assert float(col["weight"].max()) <= 1.0 and float(col["weight"][col["unit"] == 1].min()) > 0


def test_attention_edges_are_typed():
    mha = nn.MultiheadAttention(16, 4, batch_first=True)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.attn, self.fc, self.out = nn.Linear(5, 16), mha, nn.Linear(16, 32), nn.Linear(32, 3)

        def forward(self, x):
            h = self.inp(x)
            h = h + self.attn(h, h, h, need_weights=False)[0]
            return self.out(torch.relu(self.fc(h))).mean(1)

    model = Tiny().eval()
    a = surgeon.analyze(model, torch.randn(2, 6, 5))
    g = to_pyg(model_features(model, a.groups))
    att = g.edge_attr[:, EDGE_TYPES.index("attention")] == 1
    # in_proj and out_proj read and write the attention group: two typed self-loops on it
    assert int(att.sum()) == 2 and bool((g.edge_index[0, att] == g.edge_index[1, att]).all())


def test_missing_torch_geometric_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)  # import torch_geometric -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'surgeon\[gnn\]'.*torch-geometric"):
        require_pyg()
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ImportError, match="criterion='gnn' needs torch-geometric"):
        surgeon.shrink(net, torch.randn(1, 4), 0.5, criterion="gnn")


def test_import_surgeon_does_not_import_torch_geometric():
    code = ("import sys; sys.modules['torch_geometric'] = None; import surgeon; "
            "s = surgeon.shrink(__import__('torch').nn.Linear(4, 4), __import__('torch').randn(1, 4), 1.0); "
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_training_script_writes_a_loadable_checkpoint(tmp_path):
    pytest.importorskip("sklearn")
    from surgeon.criteria.gnn import train

    out = tmp_path / "mini.pt"
    assert train.main(["--models", "mlp-64-32-digits", "--epochs", "30", "--out", str(out)]) == 0
    rec = json.loads((tmp_path / "train_record.json").read_text())
    assert [m["model"] for m in rec["models"]] == ["mlp-64-32-digits"] * 2
    assert rec["fits"]["mini.pt"]["loss_final"] < rec["fits"]["mini.pt"]["loss_untrained"]
    net = load(out)
    assert len(net.layers) == 3 and len(load(tmp_path / "mini_nomp.pt").layers) == 0


def test_gnn_by_name_takes_data_like_the_other_criteria():
    torch.manual_seed(3)
    model = Unseen().eval()
    x = torch.randn(1, 3, 12, 12)
    data = _data(model, (3, 12, 12), 7)
    crit = surgeon.criteria.get_criterion("gnn", data=data)
    assert isinstance(crit, GNNCriterion) and crit.data is data
    a = surgeon.analyze(model, x)
    with_data = crit.score(model, a.groups)
    without = surgeon.criteria.get_criterion("gnn").score(model, a.groups)
    assert any(not np.allclose(s, t) for g, s, t in zip(a.groups, with_data, without) if g.prunable)
    small = surgeon.shrink(model, x, 0.5, criterion="gnn", data=data)
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.5) <= 0.01


class ResBlock(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class ResBlocks(nn.Module):
    """Three residual MLP blocks: with ``layers=True`` each block is also a removable unit."""

    def __init__(self, d=16, hidden=32):
        super().__init__()
        self.inp = nn.Linear(6, d)
        self.blocks = nn.Sequential(*[ResBlock(d, hidden) for _ in range(3)])
        self.out = nn.Linear(d, 4)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


def test_training_and_heldout_zoos_are_disjoint():
    from surgeon.criteria.gnn import zoo

    zoo.check_disjoint(zoo.TRAIN_SPECS, zoo.TRAIN_SEEDS)  # the shipped split
    with pytest.raises(ValueError, match="overlaps the held-out"):
        zoo.check_disjoint(zoo.TRAIN_SPECS + [zoo.HELDOUT_SPECS[0]], zoo.TRAIN_SEEDS)
    twin = zoo.Spec("renamed", zoo.HELDOUT_SPECS[1].arch, zoo.HELDOUT_SPECS[1].data, dict(zoo.HELDOUT_SPECS[1].kwargs))
    with pytest.raises(ValueError, match="renamed"):  # the same config under another name
        zoo.check_disjoint([twin], zoo.TRAIN_SEEDS)
    with pytest.raises(ValueError, match="seeds"):
        zoo.check_disjoint(zoo.TRAIN_SPECS, (zoo.HELDOUT_SEEDS[0],))


def test_whole_layers_are_units_with_block_influence_and_contain_edges():
    torch.manual_seed(4)
    model = ResBlocks().eval()
    x = torch.randn(2, 6)
    a = surgeon.analyze(model, x, layers=True)
    (li,) = [i for i, g in enumerate(a.groups) if g.layers and g.prunable]
    data = [(torch.randn(8, 6), torch.randint(0, 4, (8,)))]
    f = model_features(model, a.groups, data)
    want, _ = surgeon.criteria.layer_scores(model, list(a.groups[li].layers), data)
    np.testing.assert_allclose(f.base[li], want)  # the base of a layer unit: its Block Influence
    assert np.ptp(want) > 0
    row = f.group_x[li]
    assert row[GROUP_FEATURES.index("layers")] == 1 and row[GROUP_FEATURES.index("heads")] == 0
    # each block contains the hidden group of its two linears: a contains edge from its unit
    inside = {(u, gj) for gi, u, gj in f.contains if gi == li}
    assert {u for u, _ in inside} == {0, 1, 2}
    for u, gj in inside:
        assert any(m.name.startswith(f"blocks.{u}.") for m in a.groups[gj].tensors)
    g = to_pyg(f)
    assert int(g.edge_attr[:, EDGE_TYPES.index("contains")].sum()) == 2 * len(f.contains)
    # untrained: the layers keep their Block Influence; the shipped network corrects it
    got = GNNCriterion(data=data, net=_untrained()).score(model, a.groups)
    np.testing.assert_allclose(got[li], want)
    shipped = GNNCriterion(data=data).score(model, a.groups)
    assert shipped[li].shape == (3,) and np.isfinite(shipped[li]).all() and (shipped[li] > 0).all()
    small = surgeon.shrink(model, x, 0.5, criterion=GNNCriterion(data=data), layers=True)
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.5) <= 0.01


def test_soft_planner_lands_where_the_planner_does():
    """Training models today's planner: at the hard threshold, each group keeps what
    ``surgeon.plan`` keeps with the same scores (score / group mean, 10% floor, exact FLOPs), up
    to the few units the planner trades between groups to land exactly. (Ranking by score per
    unit of cost, as the former planner did, keeps 20-35 units more or fewer here.)"""
    from surgeon.criteria.gnn.train import Landing

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(12, 160), nn.ReLU(), nn.Linear(160, 96), nn.ReLU(), nn.Linear(96, 3)).eval()
    x = torch.randn(1, 12)
    a = surgeon.analyze(model, x)
    scores = Magnitude(2).score(model, a.groups)
    prunable = [i for i, g in enumerate(a.groups) if g.prunable]
    land = Landing(a, prunable)
    z = np.concatenate([np.log(scores[gi] / scores[gi].mean()) for gi in prunable])
    for target in (0.7, 0.5, 0.3):
        ok = land.removable(z)
        gone = ok & (z < land.threshold(z, ok, target))
        keep = np.ones(land.n, dtype=bool)
        keep[land.flat[gone]] = False
        assert abs(land.cost.total_flat(keep) / land.cost.base - target) <= 0.01
        plan = surgeon.plan(model, x, target, criterion=_Fixed(scores), round_to=None, analysis=a)
        for k, gi in enumerate(prunable):
            n = a.groups[gi].n_units
            kept = n - int(gone[land.starts[k]:land.starts[k + 1]].sum())
            assert abs(kept - plan.decisions[gi].kept) <= max(1, round(0.04 * n)), (target, gi, kept, plan.decisions[gi].kept)


def test_a_checkpoint_for_other_features_is_refused(tmp_path):
    net = _untrained()
    path = tmp_path / "old.pt"
    torch.save({"config": net.config, "state_dict": net.state_dict(), "base": "auto",
                "features": {"unit": ["l2"], "group": [], "edge": []}}, path)
    with pytest.raises(ValueError, match="retrain it with"):
        load(path)
