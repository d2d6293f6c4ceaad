"""Mixture-of-experts as first-class units (issue 14, item 2).

Grouped matmuls (``torch._grouped_mm``, transformers' fallback op) are counted by the FLOP
counter and by the cost model, the same as the ``batched_mm`` and eager expert implementations
count the same model; stacked expert weights are coupled so that whole experts and the expert
intermediate width are units; the router criterion scores them from calibration data.

Oracles: FlopCounterMode counts with the experts, zero-invariance for expert widths, and for
whole experts the original model with the removed experts' router logits masked to -inf (what
removing an expert means: its tokens go to the next best), reload with ``from_pretrained``.
"""

from __future__ import annotations

import copy
import tempfile
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import surgeon
from helpers import MIN_STD, check_shrink, run
from surgeon.analysis.moe import unit_kinds
from surgeon.criteria import Magnitude, get_criterion
from surgeon.criteria.router import Router
from surgeon.graph.flops import ensure_formulas, grouped_mm_flops
from surgeon.planning.planner import build_plan
from surgeon.api import shrink_landing
from surgeon.options import ShrinkConfig
from surgeon.verify import count_flops, max_rel_error, output_shapes, zero_invariance

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", message=".*bos_token_id.*")


def _qwen():
    cfg = T.Qwen2MoeConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
                           moe_intermediate_size=64, shared_expert_intermediate_size=64)
    return T.Qwen2MoeForCausalLM(cfg).eval()


def _mixtral():
    cfg = T.MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, num_local_experts=8,
                          num_experts_per_tok=2)
    return T.MixtralForCausalLM(cfg).eval()


FAMILIES = {"qwen2_moe": (_qwen, "num_experts"), "mixtral": (_mixtral, "num_local_experts")}


def _inputs(seed: int = 0) -> dict:
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="module")
def analysed():
    """Each family's model, input and analysis: (model, x, analysis)."""
    out = {}
    for name, (build, _) in FAMILIES.items():
        torch.manual_seed(0)
        m, x = build(), _inputs()
        out[name] = (m, x, surgeon.analyze(m, x))
    return out


@pytest.fixture(scope="module")
def shrunk(analysed):
    """Each family shrunk once to half its FLOPs, from its analysis: (model, small, x)."""
    out = {}
    for name, (m, x, a) in analysed.items():
        shapes = {n: p.shape for n, p in m.state_dict().items()}
        small = shrink_landing(m, x, ShrinkConfig.of(target=0.5), a).model
        assert {n: p.shape for n, p in m.state_dict().items()} == shapes, "the input model changed"
        assert output_shapes(small, x) == output_shapes(m, x)
        out[name] = (m, small, x)
    return out


# -- counting ----------------------------------------------------------------------------------

def test_grouped_mm_formula_counts_like_the_per_expert_matmuls():
    ensure_formulas()
    ensure_formulas()  # idempotent
    a, b = torch.randn(24, 16), torch.randn(4, 16, 8)
    offs = torch.tensor([5, 12, 12, 24], dtype=torch.int32)
    with FlopCounterMode(display=False) as fc:
        out = torch._grouped_mm(a, b, offs=offs)
    assert fc.get_total_flops() == 2 * 24 * 16 * 8
    starts = [0, 5, 12, 12]
    ref = torch.cat([a[s:e] @ b[i] for i, (s, e) in enumerate(zip(starts, offs.tolist()))])
    assert torch.allclose(out, ref, atol=1e-5)
    # both operands 2-D (groups split K): one M x N slab per group, K shared among them
    assert grouped_mm_flops((6, 20), (20, 7), out_shape=(4, 6, 7)) == 2 * 6 * 20 * 7


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_experts_counted_the_same_by_every_implementation(analysed, name):
    m, x, a = analysed[name]
    counts = {}
    try:
        for impl in ("grouped_mm", "batched_mm", "eager"):
            m.set_experts_implementation(impl)
            counts[impl] = count_flops(m, x)
    finally:
        m.set_experts_implementation("grouped_mm")
    assert len(set(counts.values())) == 1, counts
    assert a.traced.total_flops() == counts["grouped_mm"]  # the cost model counts them too
    assert abs(a.cost("flops").base - counts["grouped_mm"]) < 1


# -- shrink, config, reload --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_shrink_prunes_experts_and_reloads(shrunk, name):
    m, small, x = shrunk[name]
    field = FAMILIES[name][1]
    try:
        for impl in ("batched_mm", "grouped_mm"):  # counted with the experts, however they run
            m.set_experts_implementation(impl)
            small.set_experts_implementation(impl)
            assert abs(count_flops(small, x) / count_flops(m, x) - 0.5) <= 0.01
    finally:
        m.set_experts_implementation("grouped_mm")
    e0, e1 = m.model.layers[0].mlp.experts, small.model.layers[0].mlp.experts
    assert e1.gate_up_proj.shape[:2] != e0.gate_up_proj.shape[:2], "no expert was pruned"
    assert e1.num_experts == e1.gate_up_proj.shape[0] == getattr(small.config, field)
    assert getattr(small.config, field) >= small.config.num_experts_per_tok
    assert getattr(m.config, field) == 8  # the input's config is untouched
    width = e1.down_proj.shape[2]
    assert width * 2 == e1.gate_up_proj.shape[1]
    assert width in (small.config.intermediate_size, getattr(small.config, "moe_intermediate_size", None))
    assert width % 4 == 0  # torch._grouped_mm wants 16-byte strides
    with tempfile.TemporaryDirectory() as d:
        small.save_pretrained(d)
        again = type(small).from_pretrained(d).eval()
    ref = run(small, x)
    assert float(ref.std()) > MIN_STD
    assert float((ref - run(again, x)).abs().max()) < 1e-4
    out = small.generate(x["input_ids"][:1, :4], max_new_tokens=8, do_sample=False, use_cache=True)
    assert out.shape == (1, 12)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_expert_units_and_floor(analysed, name):
    m, x, a = analysed[name]
    kinds = unit_kinds(a)
    experts = [g for g, k in zip(a.groups, kinds) if k == "experts" and g.prunable]
    widths = [g for g, k in zip(a.groups, kinds) if k == "expert width" and g.prunable]
    assert len(experts) == len(widths) == 2  # one of each per layer, bundled across layers
    for g in experts:
        names = {(mm.name.rsplit(".", 2)[-2:][-1], mm.dim) for mm in g.tensors}
        assert {("weight", 0), ("gate_up_proj", 0), ("down_proj", 0)} <= names
        assert g.min_units == 2 and not g.exact  # top-2 routing: rerouted, at least 2 kept
    assert any(set(b) == {experts[0].id, experts[1].id} for b in a.bundles)
    # the floor holds even when asked for far less
    p = surgeon.plan(m, x, target=0.2, metric="params", analysis=a, min_keep=1)
    kept = {d.group: d.kept for d in p.decisions}
    assert all(kept[g.id] == 2 for g in experts)


def test_topk_whose_indices_are_not_expert_ids_stays_frozen():
    class Pick(nn.Module):  # top-k positions used to gather: their values count in the full width
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 16)

        def forward(self, x):
            _, i = self.a(x).topk(4, dim=-1)
            return torch.gather(self.b(x), -1, i)

    a = surgeon.analyze(Pick().eval(), torch.randn(5, 8))
    g = next(g for g in a.groups if ("a.weight", 0) in {(t.name, t.dim) for t in g.tensors})
    assert not g.prunable and "positions" in g.reason


# -- oracles -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_expert_width_zero_invariance(analysed, name):
    m, x, a = analysed[name]
    g = next(g for g, k in zip(a.groups, unit_kinds(a)) if k == "expert width")
    assert g.exact
    assert float(run(m, x).std()) > MIN_STD
    units = [1, 5, 9, 17, 30, 41, 50, 63]  # 8 of 64: 16-byte strides, as torch._grouped_mm wants
    assert zero_invariance(m, x, {g.id: units}, analysis=a) < 1e-4


def _masked_router(router: nn.Module, removed: list[int]):
    """A forward hook that reruns a transformers-5 top-k router with ``removed`` experts' logits
    at -inf (the reference for removing them)."""
    def hook(mod, args, _out):
        h = args[0].reshape(-1, mod.hidden_dim)
        logits = F.linear(h, mod.weight)
        logits[:, removed] = float("-inf")
        probs = F.softmax(logits.float(), dim=-1)
        top, idx = torch.topk(probs, mod.top_k, dim=-1)
        if getattr(mod, "norm_topk_prob", True):
            top = top / top.sum(dim=-1, keepdim=True)
        return logits, top.to(logits.dtype), idx
    return router.register_forward_hook(hook)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_removing_experts_is_masking_their_router_logits(analysed, name):
    m, x, a = analysed[name]
    removed = [1, 4, 6]
    keep = a.full_keep()
    for gi, (g, k) in enumerate(zip(a.groups, unit_kinds(a))):
        if k == "experts":
            keep[gi][removed] = False
    plan = build_plan(a, keep, target=1.0, metric="flops", criterion="manual", round_to=None)
    small = surgeon.apply(m, plan)
    assert small.model.layers[1].mlp.experts.num_experts == 5
    hooks = [_masked_router(layer.mlp.gate, removed) for layer in m.model.layers]
    try:
        ref = run(m, x)
    finally:
        for h in hooks:
            h.remove()
    assert float(ref.std()) > MIN_STD
    assert max_rel_error(ref, run(small, x)) < 1e-4
    assert max_rel_error(run(m, x), run(small, x)) > 1e-3  # the removal did change the model


# -- the router criterion ----------------------------------------------------------------------

def test_router_criterion_scores_an_unused_expert_lowest(analysed):
    m0, x, a = analysed["mixtral"]
    m = copy.deepcopy(m0)
    with torch.no_grad():
        for layer in m.model.layers:  # expert 3: the biggest weights, and never routed to
            layer.mlp.experts.gate_up_proj[3] *= 3
            layer.mlp.experts.down_proj[3] *= 3
            layer.mlp.gate.weight[3] *= 3
    hooks = [_masked_router(layer.mlp.gate, [3]) for layer in m.model.layers]
    data = [_inputs(s) for s in range(3)]
    crit = get_criterion("router", data=data)
    assert isinstance(crit, Router)
    try:
        scores = crit.score(m, list(a.groups))  # a's groups name the copy's tensors too
    finally:
        for h in hooks:
            h.remove()
    kinds = unit_kinds(a)
    for g, s, k in zip(a.groups, scores, kinds):
        assert s.shape == (g.n_units,) and np.isfinite(s).all()
        if k == "experts":
            assert int(np.argmin(s)) == 3
    # without data it is magnitude
    plain = Router().score(m, list(a.groups))
    for s, t in zip(plain, Magnitude(2).score(m, list(a.groups))):
        assert np.allclose(s, t)
    for s, k in zip(plain, kinds):
        if k == "experts":
            assert int(np.argmin(s)) != 3  # magnitude alone would keep it


class Stacked(nn.Module):
    """A hand-written stacked MoE calling torch._grouped_mm (captured by fx): top-k router, tokens
    sorted by expert, ``histc`` with ``self.num_experts`` bins, two grouped matmuls."""

    def __init__(self, d: int = 32, h: int = 64, n: int = 4, k: int = 2):
        super().__init__()
        self.num_experts, self.k = n, k
        self.router = nn.Linear(d, n, bias=False)
        self.w1 = nn.Parameter(torch.randn(n, h, d) / d ** 0.5)
        self.w2 = nn.Parameter(torch.randn(n, d, h) / h ** 0.5)
        self.out = nn.Linear(d, 8)

    def forward(self, x):
        w, idx = torch.topk(self.router(x).softmax(-1), self.k, dim=-1)
        ids, perm = torch.sort(idx.reshape(-1))
        counts = torch.histc(ids.float(), bins=self.num_experts, min=0, max=self.num_experts - 1)
        offs = torch.cumsum(counts, 0).to(torch.int32)
        h = torch.relu(torch._grouped_mm(x[perm // self.k], self.w1.transpose(1, 2), offs=offs))
        y = torch._grouped_mm(h, self.w2.transpose(1, 2), offs=offs) * w.reshape(-1)[perm, None]
        y = torch.zeros_like(y).index_copy(0, perm, y)
        return self.out(x + y.view(x.shape[0], self.k, -1).sum(1))


def test_hand_written_stacked_experts():
    torch.manual_seed(0)
    m, x = Stacked().eval(), torch.randn(16, 32)
    a = surgeon.analyze(m, x)
    (g,) = [g for g in a.groups if ("w1", 0) in {(t.name, t.dim) for t in g.tensors}]
    assert {(t.name, t.dim) for t in g.tensors} == {("router.weight", 0), ("w1", 0), ("w2", 0)}
    assert g.prunable and g.min_units == 2
    keep = a.full_keep()
    keep[a.groups.index(g)][[0, 3]] = False
    small = surgeon.apply(m, build_plan(a, keep, target=1.0, metric="flops", criterion="manual", round_to=None))
    assert small.num_experts == 2 and small.w1.shape[0] == 2 and small.router.out_features == 2

    _matches_routing_without(m, small, x, [0, 3])


def _matches_routing_without(m, small, x, removed: list[int]) -> None:
    """Removing whole experts is not zero-invariant (their tokens are routed elsewhere): the shrunk
    model must compute what the original does with those experts' router logits at -inf."""
    def mask(_mod, _args, out):
        out = out.clone()
        out[..., removed] = float("-inf")
        return out
    h = m.router.register_forward_hook(mask)
    try:
        ref = run(m, x)
    finally:
        h.remove()
    assert float(ref.std()) > MIN_STD
    assert max_rel_error(ref, run(small, x)) < 1e-4
    assert max_rel_error(run(m, x), run(small, x)) > 1e-3


# -- the per-expert-module layout ----------------------------------------------------------------

class DenseMoE(nn.Module):
    """A ModuleList of expert MLPs mixed by a dense softmax router (every expert runs)."""

    def __init__(self, d: int = 32, h: int = 64, n: int = 4):
        super().__init__()
        self.router = nn.Linear(d, n)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d)) for _ in range(n))
        self.head = nn.Linear(d, 8)

    def forward(self, x):
        w = self.router(x).softmax(-1)
        ys = torch.stack([e(x) for e in self.experts], dim=-1)
        return self.head(x + (ys * w.unsqueeze(-2)).sum(-1))


def test_per_expert_modules_shrink_and_zero_invariance():
    torch.manual_seed(0)
    m, x = DenseMoE().eval(), torch.randn(16, 32)
    a = surgeon.analyze(m, x)
    (experts,) = [g for g, k in zip(a.groups, unit_kinds(a)) if k == "experts"]
    assert experts.prunable and experts.layers == tuple(f"experts.{i}" for i in range(4))
    assert {(t.name, t.dim) for t in experts.tensors} == {("router.weight", 0), ("router.bias", 0)}
    hidden = [g for g in a.groups if g.prunable and any(".0.weight" in mm.name and mm.dim == 0
                                                        and mm.name.startswith("experts.") for mm in g.tensors)]
    assert len(hidden) == 4  # each expert's intermediate width is a unit of its own
    assert float(run(m, x).std()) > MIN_STD
    err = zero_invariance(m, x, {g.id: [0, 3, 17] for g in hidden}, analysis=a)
    assert err < 1e-4
    small = check_shrink(m, x, 0.5)
    assert all(e[0].out_features < 64 for e in small.experts)


def test_per_expert_modules_removing_experts_is_masking_the_router():
    torch.manual_seed(0)
    m, x = DenseMoE().eval(), torch.randn(16, 32)
    a = surgeon.analyze(m, x)
    gi = next(i for i, k in enumerate(unit_kinds(a)) if k == "experts")
    keep = a.full_keep()
    keep[gi][[1, 2]] = False
    plan = build_plan(a, keep, target=1.0, metric="flops", criterion="manual", round_to=None)
    small = surgeon.apply(m, plan)
    assert len(small.experts) == 2 and small.router.out_features == 2
    assert small.experts[1][0].weight.data_ptr() != m.experts[3][0].weight.data_ptr()
    assert torch.equal(small.experts[1][0].weight, m.experts[3][0].weight)

    _matches_routing_without(m, small, x, [1, 2])
    assert abs(count_flops(small, x) - a.cost("flops").total(keep)) < 1  # the cost model agrees
