"""Residual blocks found with dominators and post-dominators (surgeon.graph.blocks)."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from surgeon.graph.blocks import SINK, SOURCE, Block, residual_blocks, to_networkx
from surgeon.graph.trace import trace


class MLPBlock(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class PreNormLayer(nn.Module):
    def __init__(self, d: int, heads: int = 2):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class PreNormTransformer(nn.Module):
    def __init__(self, d: int = 16, depth: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(PreNormLayer(d) for _ in range(depth))
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class SharedBranch(nn.Module):
    """``h = f(x); y = x + h; z = y + h``: the branch's output is also read after the add.
    With ``reuse=False`` it is ``z = y + 1``: a plain residual block."""

    def __init__(self, reuse: bool):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.reuse = reuse

    def forward(self, x):
        h = self.f(x)
        y = x + h
        return y + h if self.reuse else y + 1


class ExportOnly(nn.Module):
    """A residual block that fx cannot trace (a shape test), so it is captured by torch.export:
    weights are get_attr nodes feeding the branch and a dead ``_guards_fn`` reads the input."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 8)

    def forward(self, x):
        if x.shape[-1] > 0:
            x = x + self.b(torch.relu(self.a(x)))
        return x


def test_resnet18_blocks():
    t = trace(torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64))
    every = residual_blocks(t, include_unremovable=True)
    owners = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert [b.owner for b in every] == owners
    # The first block of layer2, layer3 and layer4 has a projection shortcut (downsample: a
    # strided 1x1 conv and a BatchNorm): the skip path is not the identity, and the block changes
    # the shape, so cutting its branch would not leave a working model. 8 - 3 = 5 are removable.
    projection = {"layer2.0", "layer3.0", "layer4.0"}
    removable = residual_blocks(t)
    assert [b.owner for b in removable] == [o for o in owners if o not in projection]
    assert all(b.removable for b in removable)
    assert {b.owner for b in every if not b.removable} == projection
    first = removable[0]
    assert first.entry == "maxpool" and first.exit == "add"
    assert first.modules == tuple(f"layer1.0.{m}" for m in ("bn1", "bn2", "conv1", "conv2", "relu"))
    assert first.body == tuple(sorted(first.body)) and len(first.body) == 5
    down = next(b for b in every if b.owner == "layer2.0")
    assert "layer2.0.downsample.0" in down.modules  # both paths are the body of a candidate


def test_resnet18_blocks_are_disjoint_and_between_entry_and_exit():
    t = trace(torchvision.models.resnet18().eval(), torch.randn(1, 3, 64, 64))
    blocks = residual_blocks(t)
    bodies = [set(b.body) for b in blocks]
    assert sum(map(len, bodies)) == len(set().union(*bodies))
    order = {n.name: i for i, n in enumerate(t.graph.nodes)}
    for b in blocks:
        assert all(order[b.entry] < order[n] < order[b.exit] for n in b.body)


def test_pre_norm_transformer_has_two_blocks_per_layer():
    model = PreNormTransformer(depth=3).eval()
    t = trace(model, torch.randn(2, 5, 16))
    blocks = residual_blocks(t)
    assert [b.owner for b in blocks] == ["layers.0", "layers.0", "layers.1", "layers.1", "layers.2", "layers.2"]
    attn, mlp = blocks[0], blocks[1]
    assert "layers.0.attn" in attn.modules and "layers.0.norm1" in attn.modules
    assert mlp.modules == ("layers.0.mlp.0", "layers.0.mlp.1", "layers.0.mlp.2", "layers.0.norm2")
    assert mlp.entry == attn.exit  # the attention block's output is the MLP block's input
    assert residual_blocks(t, include_unremovable=True) == blocks


class ExportTransformer(PreNormTransformer):
    def forward(self, x):
        if x.shape[0] > 0:  # not fx-traceable: captured by torch.export (MHA as ATen ops)
            x = super().forward(x)
        return x


def test_pre_norm_transformer_under_export():
    t = trace(ExportTransformer(depth=2).eval(), torch.randn(2, 5, 16))
    assert t.mode == "export"
    blocks = residual_blocks(t)
    assert [b.owner for b in blocks] == ["layers.0", "layers.0", "layers.1", "layers.1"]
    assert blocks[0].modules == ("layers.0.attn", "layers.0.norm1")


def test_plain_sequential_mlp_has_no_blocks():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    t = trace(model, torch.randn(4, 8))
    assert residual_blocks(t) == ()
    assert residual_blocks(t, include_unremovable=True) == ()


def test_branch_read_outside_is_not_removable():
    t = trace(SharedBranch(reuse=True), torch.randn(4, 8))
    assert residual_blocks(t) == ()
    every = residual_blocks(t, include_unremovable=True)
    first = next(b for b in every if b.exit == "add")
    # x + f(x) has the right shape and an identity skip, but h is read again by the second add:
    # the add does not post-dominate x, so cutting the branch would leave that read dangling
    assert first.entry == "x" and not first.removable
    assert not any(b.removable for b in every)


def test_same_branch_not_read_outside_is_removable():
    t = trace(SharedBranch(reuse=False), torch.randn(4, 8))
    (block,) = residual_blocks(t)
    assert block == Block("x", "add", ("f_0", "f_1", "f_2"), ("f.0", "f.1", "f.2"), "f", True)


def test_export_capture_weights_do_not_break_dominance():
    t = trace(ExportOnly(), torch.randn(4, 8))
    assert t.mode == "export"
    (block,) = residual_blocks(t)
    assert block.entry == "x" and block.removable
    assert {"a", "b"} <= set(block.modules)
    assert block.owner is None  # the add and the relu run in the root's forward


def test_to_networkx_graph():
    t = trace(SharedBranch(reuse=False), torch.randn(4, 8))
    g = to_networkx(t)
    names = [n.name for n in t.graph.nodes]
    assert set(g) == {SOURCE, SINK, *names}
    assert g.has_edge(SOURCE, "x") and g.has_edge("output", SINK) and g.has_edge("x", "add")
    assert g.nodes["f_0"]["op"] == "call_module" and g.nodes["f_0"]["target"] == "f.0"
    e = trace(ExportOnly(), torch.randn(4, 8))
    full, data = to_networkx(e), to_networkx(e, constants=False)
    assert full.has_edge(SOURCE, "a_weight") and "a_weight" not in data
    assert "_guards_fn" in full and "_guards_fn" not in data  # dead: reaches no output


def test_400_block_residual_mlp():
    model = nn.Sequential(*[MLPBlock(16) for _ in range(400)]).eval()
    t = trace(model, torch.randn(2, 16))
    blocks = residual_blocks(t)
    assert len(blocks) == 400
    assert [b.owner for b in blocks] == [str(i) for i in range(400)]
    assert all(len(b.body) == 4 for b in blocks)
    assert blocks[1].entry == blocks[0].exit
