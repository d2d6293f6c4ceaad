"""Ops that the torch.export capture (the fallback for every model torch.fx cannot trace, all
Hugging Face models among them) records as ATen calls: each has a rule on both capture paths,
and a size that torch.export writes as a number is tied to the width it follows (the module's
own attribute, or what a trial cut shows) or frozen when it is truly fixed."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from helpers import analyze, assert_frozen, assert_tied, check_shrink, check_zero_invariance, group_of


def _branch(x):
    """Python control flow on a shape: torch.fx cannot trace it, torch.export can."""
    return x * 2 if x.shape[-1] > 1 else x


class Bilinear(nn.Module):  # aten_t_crash: `a(x) @ b(y).t()` on the export path
    def __init__(self, export=True):
        super().__init__()
        self.export = export
        self.a, self.b = nn.Linear(16, 64), nn.Linear(16, 64)

    def forward(self, x, y):
        if self.export:
            x = _branch(x)
        return self.a(x) @ self.b(y).t()


@pytest.mark.parametrize("export", [False, True])
def test_t_ties_the_contracted_width(export):
    m, x = Bilinear(export).eval(), (torch.randn(4, 16), torch.randn(5, 16))
    a = analyze(m, x)
    assert a.traced.mode == ("export" if export else "fx")
    g = assert_tied(a, ("a.weight", 0), ("b.weight", 0))
    assert g.prunable
    check_zero_invariance(m, x, expect=["a.weight", "b.weight"])
    check_shrink(m, x)


class TLinear(nn.Linear):  # numpy_T: `x @ self.weight.T + self.bias`
    def forward(self, x):
        return x @ self.weight.T + self.bias


class MTLinear(nn.Linear):
    def forward(self, x):
        return x @ self.weight.mT + self.bias


class TNet(nn.Module):
    def __init__(self, export, cls=TLinear):
        super().__init__()
        self.export = export
        self.f1, self.f2, self.out = cls(64, 256), cls(256, 64), nn.Linear(64, 10)

    def forward(self, x):
        if self.export:
            x = _branch(x)
        return self.out(torch.relu(self.f2(torch.relu(self.f1(x)))))


@pytest.mark.parametrize("export", [False, True])
@pytest.mark.parametrize("cls", [TLinear, MTLinear])
def test_weight_transpose_attribute(export, cls):
    m, x = TNet(export, cls).eval(), torch.randn(8, 64)
    a = analyze(m, x)
    assert a.traced.mode == ("export" if export else "fx")
    assert group_of(a, "f1.weight", 0).prunable and group_of(a, "f2.weight", 0).prunable
    assert_tied(a, ("f1.weight", 0), ("f1.bias", 0), ("f2.weight", 1))
    check_zero_invariance(m, x, expect=["f1.weight", "f2.weight"])
    check_shrink(m, x)


class RMSNorm(nn.Module):  # type_as: Gemma-style norm that casts back with `.type_as(x)`
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return (y * (1.0 + self.w.float())).type_as(x)


class Residual(nn.Module):
    def __init__(self, export):
        super().__init__()
        self.export = export
        self.inp, self.norm, self.fc1, self.fc2 = nn.Linear(32, 128), RMSNorm(128), nn.Linear(128, 512), nn.Linear(512, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x):
        if self.export:
            x = _branch(x)
        h = self.inp(x)
        h = h + self.fc2(torch.relu(self.fc1(self.norm(h))))
        return self.out(h)


@pytest.mark.parametrize("export", [False, True])
def test_type_as_keeps_the_residual_prunable(export):
    m, x = Residual(export).eval(), torch.randn(4, 32)
    a = analyze(m, x)
    g = assert_tied(a, ("inp.weight", 0), ("norm.w", 0), ("fc2.weight", 0), ("out.weight", 1))
    assert g.prunable, g.reason
    check_shrink(m, x)


class DepthwiseNet(nn.Module):  # export_groupconv: a depthwise conv captured as aten.conv2d
    def __init__(self, export):
        super().__init__()
        self.export = export
        self.pw1, self.dw = nn.Conv2d(3, 64, 1), nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.pw2, self.fc = nn.Conv2d(64, 64, 1), nn.Linear(64, 10)

    def forward(self, x):
        if self.export:
            x = _branch(x)
        return self.fc(self.pw2(torch.relu(self.dw(torch.relu(self.pw1(x))))).mean((2, 3)))


@pytest.mark.parametrize("export", [False, True])
def test_depthwise_conv_on_both_paths(export):
    m, x = DepthwiseNet(export).eval(), torch.randn(1, 3, 16, 16)
    a = analyze(m, x)
    assert a.traced.mode == ("export" if export else "fx")
    g = assert_tied(a, ("pw1.weight", 0), ("dw.weight", 0), ("pw2.weight", 1))
    assert g.prunable, g.reason
    check_zero_invariance(m, x, expect=["pw1.weight", "dw.weight"])
    small = check_shrink(m, x)
    assert small.dw.groups == small.dw.out_channels == small.dw.in_channels < 64


class GroupedLiteral(nn.Module):
    """F.conv2d with a literal groups count in user code: nothing surgery updates."""

    def __init__(self):
        super().__init__()
        self.pw1, self.pw2, self.fc = nn.Conv2d(3, 64, 1), nn.Conv2d(64, 64, 1), nn.Linear(64, 10)
        self.w = nn.Parameter(torch.randn(64, 1, 3, 3))

    def forward(self, x):
        h = F.conv2d(torch.relu(self.pw1(_branch(x))), self.w, padding=1, groups=64)
        return self.fc(self.pw2(h).mean((2, 3)))


def test_literal_groups_in_user_code_stays_frozen():
    m, x = GroupedLiteral().eval(), torch.randn(1, 3, 8, 8)
    a = analyze(m, x)
    assert a.traced.mode == "export"
    assert_frozen(group_of(a, "pw1.weight", 0), "literal groups")


class AdaLN(nn.Module):  # layernorm_noaffine: the normalized shape is a literal in the graph
    def __init__(self, d=64):
        super().__init__()
        self.inp, self.norm, self.out = nn.Linear(16, d), nn.LayerNorm(d, elementwise_affine=False), nn.Linear(d, 16)
        self.mod = nn.Linear(16, 2 * d)

    def forward(self, x, c):
        if x.shape[1] > 1:
            x = x * 1.0
        shift, scale = self.mod(c).chunk(2, dim=-1)
        h = self.norm(self.inp(x)) * (1 + scale[:, None]) + shift[:, None]
        return self.out(torch.relu(h))


def test_layernorm_without_affine_on_export():
    m, x = AdaLN().eval(), (torch.randn(1, 8, 16), torch.randn(1, 16))
    a = analyze(m, x)
    assert a.traced.mode == "export"
    assert group_of(a, "inp.weight", 0).prunable
    before = {k: v.clone() for k, v in m.state_dict().items()}
    small = check_shrink(m, x)
    assert small.norm.normalized_shape == (small.inp.out_features,) and small.inp.out_features < 64
    assert m.norm.normalized_shape == (64,)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


class Made(nn.Module):
    """Tensors made in forward that follow a width: new_zeros sized by an attribute, zeros_like,
    and a constant fill (ones_like), which is not exact."""

    def __init__(self, export, fill):
        super().__init__()
        self.export, self.fill, self.width = export, fill, 64
        self.inp, self.mid, self.out = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        if self.export:
            x = _branch(x)
        h = torch.relu(self.inp(x))
        h = h + h.new_zeros(x.size(0), self.width) + torch.zeros_like(h)
        if self.fill:
            h = h * torch.full_like(h, 0.5) + torch.ones_like(h)
        return self.out(torch.relu(self.mid(h)))


@pytest.mark.parametrize("export", [False, True])
def test_creation_ops_follow_the_width(export):
    m, x = Made(export, fill=False).eval(), torch.randn(4, 16)
    a = analyze(m, x)
    assert a.traced.mode == ("export" if export else "fx")
    assert group_of(a, "inp.weight", 0).prunable
    check_zero_invariance(m, x, expect=["inp.weight"])
    small = check_shrink(m, x)
    assert small.width == small.inp.out_features < 64


def test_constant_fill_is_not_exact():
    m, x = Made(True, fill=True).eval(), torch.randn(4, 16)
    g = group_of(analyze(m, x), "inp.weight", 0)
    assert g.prunable and not g.exact and "fills a constant" in g.inexact_reason


class Literal(nn.Module):
    """``torch.zeros(b, 64)`` written by hand: the number never follows pruning."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(16, 64), nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(self.inp(_branch(x)))
        return self.out(h + torch.zeros(x.shape[0], 64))


def test_hand_written_creation_size_stays_frozen():
    a = analyze(Literal().eval(), torch.randn(4, 16))
    assert_frozen(group_of(a, "inp.weight", 0), "writes size 64")


class TokenFlatten(nn.Module):
    """The MoE token flatten ``x.view(-1, hidden)`` before a routed MLP, then back. ``how``:
    the width read from the tensor, from an attribute, or written by hand."""

    def __init__(self, how):
        super().__init__()
        self.how, self.hidden_size = how, 64
        self.inp, self.up, self.down = nn.Linear(16, 64), nn.Linear(64, 128), nn.Linear(128, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        h = self.inp(_branch(x))
        b, t, _ = h.shape
        width = {"shape": h.shape[-1], "attr": self.hidden_size, "literal": 64}[self.how]
        flat = h.view(-1, width)
        flat = self.down(torch.relu(self.up(flat)))
        return self.out(h + flat.view(b, t, width))


@pytest.mark.parametrize("how", ["shape", "attr"])
def test_token_flatten_follows_the_width(how):
    m, x = TokenFlatten(how).eval(), torch.randn(2, 8, 16)
    a = analyze(m, x)
    assert a.traced.mode == "export"
    g = assert_tied(a, ("inp.weight", 0), ("down.weight", 0), ("out.weight", 1))
    assert g.prunable, g.reason
    check_zero_invariance(m, x, expect=["inp.weight"])
    small = check_shrink(m, x)
    assert small.inp.out_features < 64
    if how == "attr":
        assert small.hidden_size == small.inp.out_features


def test_token_flatten_with_a_fixed_literal_stays_frozen():
    a = analyze(TokenFlatten("literal").eval(), torch.randn(2, 8, 16))
    assert_frozen(group_of(a, "inp.weight", 0), "hard-codes width 64")


class Gathered(nn.Module):
    """``table[idx]``: positions index the rows; the columns follow the residual width."""

    def __init__(self, export):
        super().__init__()
        self.export = export
        self.inp, self.out = nn.Linear(16, 32), nn.Linear(32, 10)
        self.table = nn.Parameter(torch.randn(12, 32))
        self.register_buffer("idx", torch.tensor([3, 1, 4, 1, 5, 9, 2, 6]))

    def forward(self, x):
        if self.export:
            x = _branch(x)
        h = self.inp(x) + self.table[self.idx]
        h = h + torch.index_select(self.table, 0, self.idx)
        return self.out(torch.relu(h))


@pytest.mark.parametrize("export", [False, True])
def test_advanced_index_passes_the_other_dims(export):
    m, x = Gathered(export).eval(), torch.randn(2, 8, 16)
    a = analyze(m, x)
    # torch_geometric, once imported (by the gnn tests), replaces torch.index_select with a Python
    # function fx cannot trace: the capture then falls back to torch.export, which must work as well
    replaced = not isinstance(torch.index_select, type(torch.relu))
    assert a.traced.mode == ("export" if export or replaced else "fx")
    g = assert_tied(a, ("inp.weight", 0), ("table", 1), ("out.weight", 1))
    assert g.prunable, g.reason
    assert_frozen(group_of(a, "table", 0), "positions of the full width")
    check_zero_invariance(m, x, expect=["table"])
    check_shrink(m, x)


class Interleaved(nn.Module):
    def __init__(self, export):
        super().__init__()
        self.export = export
        self.inp, self.out = nn.Linear(16, 32), nn.Linear(64, 10)

    def forward(self, x):
        if self.export:
            x = _branch(x)
        return self.out(torch.relu(self.inp(x)).repeat_interleave(2, dim=-1))


@pytest.mark.parametrize("export", [False, True])
def test_repeat_interleave_on_both_paths(export):
    m, x = Interleaved(export).eval(), torch.randn(4, 16)
    a = analyze(m, x)
    g = assert_tied(a, ("inp.weight", 0), ("out.weight", 1))
    assert g.prunable, g.reason
    check_zero_invariance(m, x, expect=["inp.weight"])
    check_shrink(m, x)


def test_unknown_tensor_attribute_is_frozen_with_its_name():
    class Imag(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = torch.view_as_complex(self.inp(x).view(-1, 4, 2))
            return self.out(torch.cat([h.imag, h.imag], -1))

    a = analyze(Imag().eval(), torch.randn(3, 4))
    assert not group_of(a, "inp.weight", 0).prunable


def test_hf_convnext_depthwise_is_prunable():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], num_labels=10,
                                      image_size=32)
    torch.manual_seed(0)
    m = transformers.ConvNextForImageClassification(cfg).eval()
    a = surgeon.analyze(m, torch.randn(1, 3, 32, 32), uniform=False)
    assert a.traced.mode == "export"
    dw = "convnext.encoder.stages.0.layers.0.dwconv.weight"
    assert group_of(a, dw, 0).prunable
