"""Partial capture (surgeon.graph.partial): models whose forward is not one graph are captured as
the largest submodules that are, with the code between them opaque."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import surgeon
from surgeon.verify import count_flops, max_rel_error, measure

from helpers import check_zero_invariance, reference_output


class Gated(nn.Module):
    """A backbone and a head joined by data-dependent Python control flow: neither fx nor
    torch.export captures the whole forward."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        f = self.backbone(x).mean((2, 3))
        if float(f.abs().sum()) > 1e9:  # the value decides: no graph can hold this branch
            f = f * 0.5
        return self.head(f)


def _gated():
    torch.manual_seed(0)
    model = Gated().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so zeroed units matter
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(2, 3, 16, 16)


def _zero_removed(model: nn.Module, plan) -> nn.Module:
    """A copy of ``model`` with every parameter entry that ``plan`` removes set to zero."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for s in plan.slices:
            if s.tensor in params:
                gone = sorted(set(range(s.size)) - set(s.keep))
                params[s.tensor].index_fill_(s.dim, torch.tensor(gone, dtype=torch.long), 0.0)
    return out


def test_parts_are_captured_and_the_opaque_boundary_frozen():
    model, x = _gated()
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)  # the premise: the whole forward does not capture
    a = surgeon.analyze(model, x)
    assert a.traced.parts == ("backbone", "head")
    by_tensor = {(m.name, m.dim): g for g in a.groups for m in g.tensors}
    inner = by_tensor[("backbone.0.weight", 0)]  # a width wholly inside the backbone: prunable
    assert inner.prunable
    crossing = by_tensor[("backbone.3.weight", 0)]  # leaves the backbone into opaque code: kept
    assert not crossing.prunable and "output" in crossing.reason
    assert by_tensor[("head.0.weight", 0)].prunable
    assert not by_tensor[("head.0.weight", 1)].prunable  # enters the head from opaque code


def test_partial_capture_lands_on_target_with_zero_invariance():
    model, x = _gated()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = surgeon.plan(model, x, target=0.5, verify=True)
    small = surgeon.apply(model, plan)
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.5) <= 0.01
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the input model changed"
    assert "partial capture: backbone, head captured" in plan.report()
    zeroed = _zero_removed(model, plan)
    ref = reference_output(model, x)
    for batch in (x, torch.randn(3, 3, 24, 24)):  # a second input, of another size, too
        with torch.no_grad():
            err = max_rel_error(zeroed(batch), small(batch))
        assert err < 1e-5, f"zero-invariance {err:.3g}"
    with torch.no_grad():
        assert max_rel_error(ref, zeroed(x)) > 1e-3  # zeroing changed the output: the check is not vacuous


def test_partial_capture_units_zero_invariant():
    model, x = _gated()
    check_zero_invariance(model, x, expect=["backbone.0.weight", "head.0.weight"])


@pytest.fixture(scope="module")
def detector():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).eval()
    return model, ([torch.rand(3, 320, 320)],)


def _part_outputs(model: nn.Module, paths: list[str], x) -> dict[str, list[torch.Tensor]]:
    """The tensors each submodule in ``paths`` returns on ``x``."""
    got: dict[str, list[torch.Tensor]] = {}
    handles = []
    for p in paths:
        def hook(_m, _a, out, p=p):
            leaves = torch.utils._pytree.tree_leaves(out)
            got[p] = [t.detach().clone() for t in leaves if isinstance(t, torch.Tensor)]
        handles.append(model.get_submodule(p).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*x)
    finally:
        for h in handles:
            h.remove()
    return got


def test_detector_shrinks_to_target_with_every_part_zero_invariant(detector):
    model, x = detector
    plan = surgeon.plan(model, x, target=0.5, verify=True)
    small = surgeon.apply(model, plan)
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.5) <= 0.01
    parts = dict(plan.extra)["captured_parts"].split(", ")
    assert {"backbone", "rpn.head", "roi_heads.box_head"} <= set(parts)
    with torch.no_grad():
        dense, out = model(*x), small(*x)
    assert [sorted(d) for d in dense] == [sorted(d) for d in out]  # the same fields, boxes may differ
    want = _part_outputs(_zero_removed(model, plan), parts, x)
    have = _part_outputs(small, parts, x)
    for p in parts:
        assert len(want[p]) == len(have[p])
        for a, b in zip(want[p], have[p]):
            assert a.shape == b.shape
            assert max_rel_error(a, b) < 1e-4, f"part {p} differs from the zeroed original"


class RoutedMoE(nn.Module):
    """Index-routed top-k experts, as in the Mixtral reference code (``../shared/repros/moe_topk.py``)."""

    def __init__(self, d=64, h=128, n_experts=4, k=2):
        super().__init__()
        self.router, self.k = nn.Linear(d, n_experts), k
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))
                                     for _ in range(n_experts))

    def forward(self, x):
        w, idx = self.router(x).softmax(-1).topk(self.k, dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            out.index_add_(0, tok, expert(x[tok]) * w[tok, slot, None])
        return out


def test_index_routed_moe_prunes_expert_widths_for_any_routing():
    torch.manual_seed(0)
    model, x = RoutedMoE().eval(), torch.randn(32, 64)
    plan = surgeon.plan(model, x, target=0.5, verify=True)
    small = surgeon.apply(model, plan)
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.5) <= 0.01
    widths = [e[0].out_features for e in small.experts]
    assert all(w < 128 for w in widths), widths  # every expert got narrower
    assert small.router.out_features == 4  # the router, crossing opaque routing code, keeps its experts
    zeroed = _zero_removed(model, plan)
    other = torch.randn(48, 64) * 3  # routed differently from the example batch
    with torch.no_grad():
        _, idx_x = model.router(x).topk(2, dim=-1)
        _, idx_o = model.router(other).topk(2, dim=-1)
        assert not torch.equal(torch.bincount(idx_x.flatten(), minlength=4) / len(x),
                               torch.bincount(idx_o.flatten(), minlength=4) / len(other))
        for batch in (x, other):
            assert max_rel_error(zeroed(batch), small(batch)) < 1e-5
        assert max_rel_error(model(other), zeroed(other)) > 1e-3


class Selecting(nn.Module):
    """The opaque code decides how many rows the head runs on (as a detector's boxes)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))
        self.head = nn.Sequential(nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 4))

    def forward(self, x):
        f = self.backbone(x)
        keep = f[:, 0] > 0
        if int(keep.sum()) == 0:  # the value decides: no graph holds this branch
            return f.new_zeros(1, 4)
        return self.head(f[keep]).sum(0, keepdim=True)


def test_a_changed_workload_is_said_out_loud():
    from surgeon.landing import _own_workload

    torch.manual_seed(3)
    model, x = Selecting().eval(), torch.randn(64, 16)
    a = surgeon.analyze(model, x)
    assert a.traced.parts == ("backbone", "head")
    plan = surgeon.plan(model, x, target=1.0)
    assert _own_workload(a, measure(model, x)[0], plan, 1.0) is plan  # the same work: nothing to say
    busier = copy.deepcopy(model)
    with torch.no_grad():
        busier.backbone[2].bias[0] = 1e3  # every row selected: the head runs on all 64
    with pytest.warns(surgeon.OffTargetWarning, match="own forward on the example keeps"):
        noted = _own_workload(a, measure(busier, x)[0], plan, 1.0)
    own = count_flops(busier, x) / count_flops(model, x)
    assert own > 1.05 and dict(noted.extra)["own_workload"] == pytest.approx(own, rel=1e-4)
    assert "WORKLOAD" in noted.report()


def _mask_rcnn(score_thresh: float):
    """A small Mask R-CNN (ResNet-18 FPN, 91 classes, 160 px): its mask head runs once per box it
    returns, and with random weights the boxes scoring above the default 0.05 are few and move with
    any pruning."""
    tv = pytest.importorskip("torchvision")
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(1)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    model = tv.models.detection.MaskRCNN(backbone, num_classes=91, min_size=160, max_size=160,
                                         box_score_thresh=score_thresh, box_detections_per_img=20,
                                         rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50).eval()
    return model, ([torch.rand(3, 160, 160)],)


def _shrunk_and_warnings(model, x):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        small = surgeon.shrink(model, x, target=0.5)
    with torch.no_grad():
        dense, out = model(*x), small(*x)
    assert [sorted(d) for d in dense] == [sorted(d) for d in out]  # the same fields, boxes may differ
    boxes = (len(dense[0]["boxes"]), len(out[0]["boxes"]))
    return small, boxes, [str(w.message) for w in seen if issubclass(w.category, surgeon.OffTargetWarning)]


def test_a_detector_lands_on_its_own_forward_at_a_fixed_workload():
    model, x = _mask_rcnn(0.05)  # torchvision's default threshold: the boxes kept are an accident
    small, boxes, warned = _shrunk_and_warnings(model, x)
    own = count_flops(small, x) / count_flops(model, x)
    assert boxes[0] != boxes[1], "premise: the pruning changed how many boxes pass the threshold"
    assert abs(own - 0.5) > 0.01
    assert len(warned) == 1 and f"its own forward on the example keeps {own:.4f}" in warned[0]
    assert "box_score_thresh=0.0" in warned[0]  # what may help

    model, x = _mask_rcnn(0.0)  # the same weights, every image returns box_detections_per_img boxes
    small, boxes, warned = _shrunk_and_warnings(model, x)
    assert boxes == (20, 20)
    assert abs(count_flops(small, x) / count_flops(model, x) - 0.5) <= 0.01
    assert not warned
