"""Forward-time habits of issue 15, item 4: widths passed as a list attribute, channel dims
reshaped into radix groups (split attention), weights standardised in forward, per-channel scales
reshaped in forward (layer scale) and fused q/k/v split by indexing or ``unbind``.

Each habit is a tiny pure-torch copy (or timm's own module), captured by fx and, wrapped in
:class:`ExportOnly`, by torch.export. The checks are those of :func:`check_habit`: the user's
model unchanged, ``shrink(target=0.5)`` on half the FLOPs by the independent counter and equal to
the original with the removed units zeroed; where a habit cannot be followed, a refusal at
planning with the reason, never a failure after surgery.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_forward_habits import check_habit
from torch import nn

import surgeon
from surgeon.api import shrink_landing
from surgeon.options import ShrinkConfig
from surgeon.verify import count_flops


class ExportOnly(nn.Module):
    """A shape test fx cannot trace (a Proxy in ``if``): the capture is torch.export's."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        if x.shape[-1] > 0:
            return self.net(x)
        return x


def _both(build):
    return [pytest.param(build, id="fx"), pytest.param(lambda: ExportOnly(build()), id="export")]


def _inner(net: nn.Module) -> nn.Module:
    return net.net if isinstance(net, ExportOnly) else net


def _reasons(net: nn.Module, x) -> list[str]:
    return [g.reason for g in surgeon.analyze(net, x).groups if g.reason]


# -- 1. piece sizes in a list attribute ------------------------------------------------------------------
class Mixed(nn.Module):
    """MixConv-style: ``torch.split(x, self.splits, 1)``, one conv per piece."""

    def __init__(self, cin: int, splits, literal: bool = False):
        super().__init__()
        self.splits, self.literal = list(splits), literal
        self.conv = nn.Conv2d(cin, sum(splits), 3, padding=1)
        self.branches = nn.ModuleList(nn.Conv2d(s, s, 3, padding=1) for s in splits)

    def forward(self, x):
        parts = torch.split(self.conv(x), [16, 48] if self.literal else self.splits, dim=1)
        return torch.cat([b(torch.relu(parts[i])) for i, b in enumerate(self.branches)], 1)


def _mixed(literal: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), Mixed(32, [16, 48], literal), nn.ReLU(),
                         nn.Conv2d(64, 8, 1)).eval()


@pytest.mark.parametrize("build", _both(_mixed))
def test_split_sizes_in_a_list_attribute_follow_their_pieces(build):
    net, x = build(), torch.randn(1, 3, 16, 16)
    landing = check_habit(net, x)
    small = _inner(landing.model)[2]
    assert type(small.splits) is list and small.splits == [b.in_channels for b in small.branches]
    assert sum(small.splits) == small.conv.out_channels < 64
    assert _inner(net)[2].splits == [16, 48]


@pytest.mark.parametrize("build", _both(lambda: _mixed(literal=True)))
def test_split_sizes_written_in_the_code_keep_the_pieces_whole(build):
    net, x = build(), torch.randn(1, 3, 16, 16)
    assert any("split sizes are written in the code" in r for r in _reasons(net, x))
    check_habit(net, x, target=0.8)  # the rest prunes; the split's group is kept whole


# -- 2. channels reshaped into radix groups (ResNeSt split attention) -----------------------------------
class SplitAttn(nn.Module):
    """timm's SplitAttn with radix 2 and cardinality 1, its conv grouped by radix (as timm's) or not."""

    def __init__(self, cin: int, c: int, radix: int = 2, attn: int = 16, grouped: bool = True):
        super().__init__()
        self.radix = radix
        self.conv = nn.Conv2d(cin, c * radix, 3, padding=1, groups=radix if grouped else 1)
        self.bn0 = nn.BatchNorm2d(c * radix)
        self.fc1, self.fc2 = nn.Conv2d(c, attn, 1), nn.Conv2d(attn, c * radix, 1)

    def forward(self, x):
        x = torch.relu(self.bn0(self.conv(x)))
        B, RC, H, W = x.shape
        x = x.reshape((B, self.radix, RC // self.radix, H, W))
        gap = x.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.fc2(torch.relu(self.fc1(gap)))
        attn = F.softmax(attn.view(B, 1, self.radix, -1).transpose(1, 2), dim=1).reshape(B, -1)
        attn = attn.view(B, -1, 1, 1)
        return (x * attn.reshape((B, self.radix, RC // self.radix, 1, 1))).sum(dim=1)


def _split_attn(grouped: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), SplitAttn(32, 32, grouped=grouped), nn.ReLU(),
                         nn.Conv2d(32, 8, 1)).eval()


@pytest.mark.parametrize("build", _both(_split_attn) + [pytest.param(lambda: _split_attn(False), id="ungrouped")])
def test_split_attention_prunes_one_channel_of_every_radix_group(build):
    net, x = build(), torch.randn(1, 3, 16, 16)
    a = surgeon.analyze(net, x)
    conv = "net.2.conv.weight" if isinstance(net, ExportOnly) else "2.conv.weight"
    (g,) = [g for g in a.groups if any(m.key == ("p", conv, 0) for m in g.members)]
    (m,) = [m for m in g.members if m.key == ("p", conv, 0)]
    assert g.prunable and list(m.unit_of[:32]) == list(m.unit_of[32:])  # channel c of each radix slice
    landing = check_habit(net, x)
    small = _inner(landing.model)[2]
    assert small.conv.out_channels == 2 * small.fc1.in_channels
    assert small.conv.groups == _inner(net)[2].conv.groups  # a position of every group, not a group


def test_grouped_conv_without_the_split_keeps_whole_groups():
    """The same grouped conv not reshaped by its groups: its unit is still a whole group."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, groups=2),
                        nn.ReLU(), nn.Conv2d(64, 8, 1)).eval()
    a = surgeon.analyze(net, torch.randn(1, 3, 16, 16))
    (g,) = [g for g in a.groups if any(m.key == ("p", "2.weight", 0) for m in g.members)]
    assert g.n_units == 2


# -- 3. weights standardised in forward (timm's StdConv2d, ScaledStdConv2d) -----------------------------
def _std_net(cls) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(cls(3, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 8, 1)).eval()


def _std_classes():
    layers = pytest.importorskip("timm.layers")
    return layers.StdConv2d, layers.ScaledStdConv2d


@pytest.mark.parametrize("which", [0, 1], ids=["StdConv2d", "ScaledStdConv2d"])
@pytest.mark.parametrize("export", [False, True], ids=["fx", "export"])
def test_standardised_weight_rows_prune(which, export):
    net = _std_net(_std_classes()[which])
    net = ExportOnly(net) if export else net
    landing = check_habit(net, torch.randn(1, 3, 16, 16))
    conv = _inner(landing.model)[0]
    assert conv.out_channels == conv.weight.shape[0] < 48


def test_standardised_input_channels_are_inexact_and_still_land():
    """Its input channels are normalised over (the statistics of each row): removing one is not
    zeroing it, so the group says so, and the cut model still runs on target."""
    std = _std_classes()[0]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), std(32, 48, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(48, 8, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    a = surgeon.analyze(net, x)
    (g,) = [g for g in a.groups if any(m.key == ("p", "0.weight", 0) for m in g.members)]
    assert g.prunable and not g.exact and "batch statistics" in g.inexact_reason
    landing = shrink_landing(net, x, ShrinkConfig.of(target=0.5))
    assert abs(count_flops(landing.model, x) / count_flops(net, x) - 0.5) <= 0.01


# -- 4. per-channel scales reshaped in forward (layer scale) ---------------------------------------------
FORMS = {
    "view": lambda m, x: x * m.gamma.view(1, -1, 1, 1),
    "reshape_attr": lambda m, x: m.gamma.reshape(m.dim, 1, 1) * x,
    "view_attr": lambda m, x: x * m.gamma.view(1, m.dim, 1, 1),
    "reshape_shape": lambda m, x: m.gamma.reshape(x.shape[1], 1, 1) * x,
    "none_index": lambda m, x: m.gamma[:, None, None] * x,
    "unsqueeze": lambda m, x: m.gamma.unsqueeze(-1).unsqueeze(-1) * x,
    "expand_as": lambda m, x: x * m.gamma.view(1, -1, 1, 1).expand_as(x),
    "mul_": lambda m, x: x.mul_(m.gamma.view(1, -1, 1, 1)),
    # MetaFormer's Scale: the sizes in a tuple attribute; the int ``dim`` beside it, equal to the
    # width but never read, must not be taken for their source (the shrunk model failed to run)
    "view_tuple": lambda m, x: x * m.gamma.view(m.shape),
}


class LayerScale(nn.Module):
    def __init__(self, c: int, form: str):
        super().__init__()
        self.dim, self.shape, self.form = c, (c, 1, 1), form
        self.gamma = nn.Parameter(0.1 * torch.randn(c))

    def forward(self, x):
        return FORMS[self.form](self, x)


class Scaled(nn.Module):
    def __init__(self, c: int, form: str):
        super().__init__()
        self.conv, self.ls = nn.Conv2d(c, c, 3, padding=1), LayerScale(c, form)

    def forward(self, x):
        return x + self.ls(torch.relu(self.conv(x)))


def _scaled(form: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), Scaled(32, form), Scaled(32, form),
                         nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 8, 1)).eval()


@pytest.mark.parametrize("form", sorted(FORMS))
def test_layer_scale_reshaped_in_forward(form):
    net, x = _scaled(form), torch.randn(1, 3, 16, 16)
    landing = check_habit(net, x)
    ls = landing.model[1].ls
    assert ls.gamma.shape[0] == landing.model[0].out_channels < 32
    # rewritten where a size written into the graph is that number (view_tuple: beside the tuple)
    assert ls.dim == (ls.gamma.shape[0] if form.endswith(("_attr", "_tuple")) else 32)
    assert ls.shape == ((ls.gamma.shape[0], 1, 1) if form == "view_tuple" else (32, 1, 1))


@pytest.mark.parametrize("form", ["reshape_attr", "expand_as", "view_tuple"])
def test_layer_scale_on_the_export_path(form):
    net = ExportOnly(_scaled(form))
    landing = check_habit(net, torch.randn(1, 3, 16, 16))
    assert landing.model.net[1].ls.gamma.shape[0] < 32


# -- 5. fused q/k/v split by indexing or unbind (timm ViT style) ------------------------------------------
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, how: str):
        super().__init__()
        self.num_heads, self.head_dim, self.how = heads, dim // heads, how
        self.scale = self.head_dim ** -0.5  # fixed at build time, as timm does
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (qkv[0], qkv[1], qkv[2]) if self.how == "index" else qkv.unbind(0)
        x = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, how: str):
        super().__init__()
        self.attn = Attention(dim, heads, how)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.fc2(torch.relu(self.fc1(x)))


def _vit(how: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), Block(32, 4, how), nn.Linear(32, 4)).eval()


@pytest.mark.parametrize("how", ["index", "unbind"])
def test_fused_qkv_split_by_index_or_unbind(how):
    net, x = _vit(how), torch.randn(2, 8, 16)
    landing = check_habit(net, x)
    attn = landing.model[1].attn
    assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim == 3 * attn.proj.in_features


@pytest.mark.parametrize("how", ["index", "unbind"])
def test_fused_qkv_exported_refuses_the_residual_at_planning(how):
    """Exported, ``reshape(B, N, C)`` writes the residual width as a number into the attention's
    own dims: cutting the residual breaks the model, so its group is kept whole with the reason
    (before this, the plan cut it and the shrunk model failed to run)."""
    net, x = ExportOnly(_vit(how)), torch.randn(2, 8, 16)
    assert any("exported graph whose own dims do not follow it" in r for r in _reasons(net, x))
    check_habit(net, x, target=0.7)


# -- a list attribute read in forward where no node shows it ----------------------------------------------
class ListChecked(nn.Module):
    """``assert x.shape[1] == self.widths[0]``: surgery cannot rewrite a list whose use it does not
    see, so the groups it could size are kept whole at planning (before: a failure after surgery)."""

    def __init__(self):
        super().__init__()
        self.widths = [32, 48]
        self.conv = nn.Conv2d(32, 48, 3, padding=1)

    def forward(self, x):
        assert x.shape[1] == self.widths[0]
        return self.conv(x)


def test_list_attribute_checked_in_forward_keeps_its_groups_whole():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), ListChecked(), nn.ReLU(),
                        nn.Conv2d(48, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 8, 1)).eval()
    x = torch.randn(1, 3, 16, 16)
    frozen = [r for r in _reasons(net, x) if "reads its attribute 'widths'" in r]
    assert frozen, _reasons(net, x)
    check_habit(net, x, target=0.7)
