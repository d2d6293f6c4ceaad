"""surgeon.search: an evolutionary per-group allocation landed on the exact target by the planner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
from surgeon.criteria import checked_scores, get_criterion
from surgeon.planning.plan import Plan
from surgeon.planning.planner import solve
from surgeon.search import search_run
from surgeon.verify import count_flops


class _TwoBranches(nn.Module):
    """Two parallel hidden layers of one width summed into the logits; branch b's head is scaled
    down 100x, so it hardly matters. Scores are normalised within each group, so the default
    plan thins both branches alike; an allocation measured on the output keeps branch a."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 64), nn.Linear(16, 64)
        self.head_a, self.head_b = nn.Linear(64, 8), nn.Linear(64, 8)

    def forward(self, x):
        return self.head_a(torch.relu(self.a(x))) + self.head_b(torch.relu(self.b(x)))


def _misleading_mlp() -> nn.Module:
    torch.manual_seed(0)
    net = _TwoBranches()
    with torch.no_grad():
        net.head_a.weight *= 8  # logits with real spread (std of a few units)
        net.head_b.weight *= 0.08
    return net.eval()


def test_group_weight_moves_the_allocation_and_keeps_the_target():
    net = _misleading_mlp()
    x = torch.randn(4, 16)
    a = surgeon.analyze(net, x)
    scores = checked_scores(get_criterion("l2"), net, list(a.groups))
    live = [gi for gi, g in enumerate(a.groups) if g.prunable]
    assert len(live) == 2
    plain = solve(a, scores, "flops", 0.5)
    w = np.ones(len(a.groups))
    w[live[0]] = 50.0  # the first group's units now rank far higher: it keeps more
    weighted = solve(a, scores, "flops", 0.5, group_weight=w)
    assert weighted[live[0]].sum() > plain[live[0]].sum()
    assert weighted[live[1]].sum() < plain[live[1]].sum()
    cost = a.cost("flops")
    for keep in (plain, weighted):
        assert cost.total(keep) / cost.base == pytest.approx(0.5, abs=0.01)
    assert [k.tolist() for k in solve(a, scores, "flops", 0.5, group_weight=np.ones(len(a.groups)))] == \
        [k.tolist() for k in plain]  # weights of one leave the default order as it was


def test_search_beats_a_misleading_default_and_returns_a_normal_plan(tmp_path):
    net = _misleading_mlp()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 16, generator=g) for _ in range(3)]
    x = calib[0][:2]
    found = search_run(net, x, 0.4, data=calib, budget=16, quiet=True, seed=0)
    assert found.evaluations <= 16 and len(found.history) == found.evaluations
    assert found.history == sorted(found.history, reverse=True)  # the best so far never gets worse
    assert found.score < 0.8 * found.default_score, (found.score, found.default_score)
    plan = found.plan
    assert isinstance(plan, Plan) and plan.criterion == "l2+search"
    small = surgeon.apply(net, plan)
    assert count_flops(small, x) / count_flops(net, x) == pytest.approx(0.4, abs=0.01)
    assert count_flops(surgeon.apply(net, found.default_plan), x) / count_flops(net, x) == pytest.approx(0.4, abs=0.01)
    path = tmp_path / "plan.json"
    plan.save(path)
    again = surgeon.apply(net, Plan.load(path))
    torch.testing.assert_close(again(calib[1]), small(calib[1]))
    # the calibration score is what the search says it is: recompute it independently
    with torch.no_grad():
        kl = np.mean([float(torch.nn.functional.kl_div(small(c).log_softmax(-1), net(c).log_softmax(-1),
                                                       log_target=True, reduction="batchmean")) for c in calib])
    assert kl == pytest.approx(found.score, rel=1e-4)


def test_budget_in_seconds_and_bad_arguments():
    net = _misleading_mlp()
    calib = [torch.randn(8, 16)]
    found = search_run(net, calib[0], 0.5, data=calib, budget=50, seconds=0.0, quiet=True)
    assert found.evaluations == 1 and found.plan.decisions == found.default_plan.decisions
    plan = surgeon.search(net, calib[0], 0.5, data=calib, budget=3, quiet=True)
    assert plan.criterion.endswith("+search")
    with pytest.raises(surgeon.SurgeonError, match="calibration"):
        surgeon.search(net, calib[0], 0.5, data=None, quiet=True)
    with pytest.raises(ValueError, match="budget"):
        surgeon.search(net, calib[0], 0.5, data=calib, budget=0, quiet=True)
    with pytest.raises(ValueError, match="runtime"):
        surgeon.search(net, calib[0], 0.5, data=calib, runtime="ort-cpu", quiet=True)


def test_docstring_examples():
    import doctest
    import importlib

    for name in ("surgeon.search", "surgeon.recover"):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, name
