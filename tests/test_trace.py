"""Capture: per-node FLOPs and the formula path (ops whose FLOPs are known from shapes run outside
the counter, and a capture made only of them is "plain") agree with FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import surgeon
from surgeon.graph.trace import count_known, trace
from surgeon.verify import count_flops


class Mixed(nn.Module):
    """Linear on 3-D and on 1-D input (the latter runs mv, which flop_counter does not count),
    convs of every rank, depthwise and strided, norms, pooling and reshapes."""

    def __init__(self, vector: bool = True):
        super().__init__()
        self.vector = vector
        self.c1 = nn.Conv1d(3, 8, 3)
        self.c2 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, groups=16, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c3 = nn.Conv3d(2, 4, 2)
        self.fc = nn.Linear(16, 10)
        self.vec = nn.Linear(10, 6)
        self.ln = nn.LayerNorm(10)

    def forward(self, x1, x2, x3):
        a = torch.relu(self.c1(x1)).mean()
        b = self.bn(self.dw(self.c2(x2)))
        b = nn.functional.adaptive_avg_pool2d(b, 1).flatten(1)  # (N, 16)
        seq = self.ln(self.fc(b.unsqueeze(1).expand(-1, 5, -1)))  # Linear on a 3-D input
        c = self.c3(x3).sum()
        if self.vector:  # a Linear on a 1-D input: its count is left to the counter
            c = c + self.vec(seq[0, 0]).sum()
        return seq.sum(-1) + a + c


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.matmul(self.fc(x), x.t())  # a matmul outside any module: not plain


def _inputs():
    torch.manual_seed(0)
    return (torch.randn(2, 3, 12), torch.randn(2, 3, 16, 16), torch.randn(1, 2, 4, 4, 4))


def test_node_flops_add_up_to_flop_counter():
    model, x = Mixed().eval(), _inputs()
    t = trace(model, x)
    assert t.plain
    assert t.total_flops() == count_flops(model, x) > 0


def test_count_known_matches_flop_counter_before_and_after_surgery():
    model, x = Mixed(vector=False).eval(), _inputs()
    flops, out = count_known(model, x)
    assert flops == count_flops(model, x)
    assert torch.equal(out, model(*x))
    small = surgeon.shrink(model, x, target=0.6, round_to=None)
    assert count_known(small, x)[0] == count_flops(small, x) < flops


def test_count_known_declines_a_call_its_formulas_do_not_fit():
    model, x = Mixed(vector=True).eval(), _inputs()
    assert count_known(model, x) is None  # shrink then counts with the dispatch-mode tally
    small = surgeon.shrink(model, x, target=0.6, round_to=None)
    assert small(*x).shape == model(*x).shape
    assert count_flops(small, x) < count_flops(model, x)


def test_a_matmul_outside_modules_is_counted_and_not_plain():
    model, x = Unknown().eval(), torch.randn(4, 8)
    t = trace(model, x)
    assert not t.plain
    assert t.total_flops() == count_flops(model, x) == 2 * 4 * 8 * 8 + 2 * 4 * 8 * 4


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_small", "resnet18"])
def test_zoo_capture_is_plain_and_exact(name):
    from tests.zoo import build

    model, x = build(name)
    t = trace(model, x)
    assert t.plain  # efficientnet's stochastic depth is known to be FLOP-free
    assert t.total_flops() == count_flops(model, x)


def test_training_flags_restored():
    model, x = Mixed().train(), _inputs()
    model.bn.eval()
    trace(model, x)
    assert model.training and model.c1.training and not model.bn.training


def test_capture_leaves_no_constant_on_the_users_model():
    """fx stores tensors made in forward on the root as ``_tensor_constant0``: not on the user's model."""
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x) * torch.linspace(0.5, 1.5, 8).view(1, -1, 1, 1)

    model = Scaled().eval()
    before = dict(vars(model))
    t = trace(model, torch.randn(1, 3, 8, 8))
    assert t.mode == "fx" and any(n.op == "get_attr" and n.target.startswith("_tensor_constant")
                                  for n in t.graph.nodes)
    assert vars(model).keys() == before.keys()
