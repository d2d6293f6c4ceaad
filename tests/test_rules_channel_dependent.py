"""Ops whose result depends on the width of the dim they act on (issue 13, items 4 and 6).

``torch.roll(y, 3, 1)``, literal reshape sizes, index tensors, narrow and literal slices name
positions or widths of the full tensor: after pruning the same literal means something else, so
the group they touch is kept whole, with a reason naming the op, and the rest of the model still
shrinks. ``flip``, ``repeat_interleave``, a stack of a whole ``unbind``, ``unflatten`` with an
inferred factor and friends follow any width: their groups are pruned, exactly.

Each case is checked against an oracle that does not use the planner's groups: the units the
landed plan slices away are zeroed where they are produced (rows of the weights, biases and norm
vectors the plan slices along dim 0) in a copy of the ORIGINAL model, whose output must match the
shrunk model's. FLOPs are measured by ``surgeon.verify.count_flops``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from helpers import assert_frozen, group_of
from surgeon.api import shrink_landing
from surgeon.errors import PlanError
from surgeon.options import ShrinkConfig
from surgeon.verify import count_flops

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
TARGET = 0.5
FLOPS_TOL = 0.01
ZI_TOL = 1e-4
MIN_STD = 1e-3


# -- the independent oracle -------------------------------------------------------------------------
def zeroed_like_plan(model: nn.Module, plan) -> nn.Module:
    """A copy of ``model`` in which every unit ``plan`` removes is zeroed where it is produced:
    the removed indices of each floating-point tensor the plan slices along dim 0 (conv and
    linear rows, biases, norm weights and statistics). Only the plan's slices are read."""
    z = copy.deepcopy(model)
    tensors = dict(z.named_parameters(remove_duplicate=False))
    tensors.update(z.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for s in plan.slices:
            t = tensors[s.tensor]
            if s.dim == 0 and t.is_floating_point():
                removed = sorted(set(range(t.shape[0])) - set(s.keep))
                t[removed] = 0.0
    return z


@torch.no_grad()
def assert_matches_zeroed(model: nn.Module, x, plan, small: nn.Module) -> float:
    """The shrunk model computes what the original computes with the removed units zeroed."""
    ref = zeroed_like_plan(model, plan).eval()(x)
    out = small.eval()(x)
    assert out.shape == ref.shape
    assert float(ref.std()) > MIN_STD, "reference output has no spread: the comparison would be vacuous"
    err = float((ref - out).abs().max() / ref.abs().max())
    assert err < ZI_TOL, f"shrunk model differs from the zeroed original: rel err {err:.3g}"
    moved = float((model.eval()(x) - ref).abs().max() / ref.abs().max())
    assert moved > 10 * ZI_TOL, "zeroing the removed units changes nothing: the check is vacuous"
    return err


def shrink_checked(model: nn.Module, x, target: float = TARGET):
    """Shrink (unrounded) and check the landing with the independent counter; the plan and the
    shrunk model."""
    landing = shrink_landing(model, x, ShrinkConfig.of(target=target, round_to=None))
    ratio = count_flops(landing.model, x) / count_flops(model, x)
    assert abs(ratio - target) <= FLOPS_TOL, f"landed at {ratio:.4f} of the FLOPs, target {target}"
    assert landing.plan.slices, "nothing was removed"
    return landing.model, landing.plan


# -- models with the op under test ----------------------------------------------------------------
def _index_buffers(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    model.register_buffer("perm", torch.randperm(16, generator=gen))
    model.register_buffer("idx_c", torch.randint(0, 16, (1, 16, 8, 8), generator=gen))
    model.register_buffer("idx_hw", torch.randint(0, 8, (1, 16, 8, 8), generator=gen))


class Pair(nn.Module):
    """conv1 (3 -> 16) -> relu -> <op> -> conv2 -> 8: the op's group is the only one that can
    shrink, and every FLOP scales with it, so landing on the target prunes it. The repros' model."""

    def __init__(self, op, cin2: int = 16):
        super().__init__()
        self.op = op
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(cin2, 8, 3, padding=1)
        _index_buffers(self)

    def forward(self, x):
        return self.conv2(self.op(self, torch.relu(self.conv1(x))))


class Sandwich(nn.Module):
    """stem -> conv1 -> <op> -> conv2 -> conv3. The op sits in conv1's output group; the stem's
    and conv2's output groups do not touch it, so they can always shrink."""

    def __init__(self, op, extra: nn.Module | None = None):
        super().__init__()
        self.op = op
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 8, 1)
        self.extra = extra if extra is not None else nn.Identity()
        _index_buffers(self)

    def forward(self, x):
        y = torch.relu(self.conv1(torch.relu(self.stem(x))))
        return self.conv3(torch.relu(self.conv2(self.op(self, y))))


# name -> the op: the group through it keeps its meaning at any width and is pruned exactly
# (flip_int and unbind_stack on Pair are repros flip_int_crash.py and unbind_stack_crash.py)
EXACT = {
    "flip_int": lambda m, y: y.flip(1),
    "flip_varargs": lambda m, y: y.flip(1, 2),
    "flip_list": lambda m, y: torch.flip(y, [1]),
    "fliplr": lambda m, y: torch.fliplr(y),
    "roll_zero": lambda m, y: torch.roll(y, 0, 1),
    "roll_spatial": lambda m, y: torch.roll(y, (1, -2), (2, 3)),
    "unbind_stack": lambda m, y: torch.stack(y.unbind(1), 1),
    "unbind_stack_moved": lambda m, y: torch.stack(y.unbind(1), 3).permute(0, 3, 1, 2),
    "chunk_cat_swapped": lambda m, y: torch.cat(y.chunk(2, 1)[::-1], 1),
    "tensor_split_cat": lambda m, y: torch.cat(torch.tensor_split(y, 2, 1), 1),
    "unflatten_outer_inferred": lambda m, y: y.unflatten(1, (-1, 4)).flatten(1, 2),
    "unflatten_inner_inferred": lambda m, y: y.unflatten(1, (4, -1)).flatten(1, 2),
    "gather_spatial": lambda m, y: torch.gather(y, 2, m.idx_hw),
    "narrow_by_size": lambda m, y: y.narrow(1, 0, y.size(1)),
    "expand_inferred": lambda m, y: y + y[:, :, :1].expand(-1, -1, 8, -1),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_width_following_op_is_pruned_exactly(name):
    model = Pair(EXACT[name])
    g = group_of(surgeon.analyze(model, X), "conv1.weight", 0)
    assert g.prunable and g.exact, g.describe()
    small, plan = shrink_checked(model, X)
    assert small.conv1.out_channels == 8
    assert_matches_zeroed(model, X, plan, small)


def test_roll_by_a_whole_turn_is_not_one_after_pruning():
    """roll(y, 16, 1) is the identity on 16 channels but a shift of 4 on 12: frozen."""
    assert_frozen(group_of(surgeon.analyze(Pair(lambda m, y: torch.roll(y, 16, 1)), X), "conv1.weight", 0),
                  "torch.roll", "rolled by 16")


@pytest.mark.parametrize("op", [
    lambda m, y: y.repeat_interleave(2, 1),  # output j copies input j // 2: blocks {2i, 2i+1}
    lambda m, y: torch.repeat_interleave(y, 2, dim=1),
    lambda m, y: y.repeat(1, 2, 1, 1),  # output j copies input j % width: {i, i + width}
    lambda m, y: torch.tile(y, (2, 1, 1)),
], ids=["repeat_interleave", "torch_repeat_interleave", "repeat", "tile"])
def test_repeats_follow_the_width(op):
    model = Pair(op, cin2=32)
    small, plan = shrink_checked(model, X)
    assert small.conv2.in_channels == 2 * small.conv1.out_channels == 16
    assert_matches_zeroed(model, X, plan, small)


# name -> (the op, what the reason of the frozen group must name)
WIDTH = "depends on the width of dim"
FROZEN = {
    "roll": (lambda m, y: torch.roll(y, 3, 1), ["torch.roll", f"{WIDTH} 1", "rolled by 3"]),
    "roll_method": (lambda m, y: y.roll(-2, 1), ["Tensor.roll", "rolled by -2"]),
    "roll_by_width": (lambda m, y: torch.roll(y, y.shape[1] // 2, 1), ["torch.roll", "rolled by 8"]),
    "roll_flattened": (lambda m, y: torch.roll(y, 5), ["torch.roll", "flattened"]),
    "unflatten_literal": (lambda m, y: y.unflatten(1, (4, 4)).flatten(1, 2),
                          ["Tensor.unflatten", "hard-codes width 4"]),
    "view_literal": (lambda m, y: y.view(1, 16, 64).view(1, 16, 8, 8), ["Tensor.view", "hard-codes width 16"]),
    "expand_literal": (lambda m, y: y + y[:, :, :1].expand(1, 16, 8, 8), ["Tensor.expand", "hard-codes width 16"]),
    "gather_channels": (lambda m, y: torch.gather(y, 1, m.idx_c), ["torch.gather", f"{WIDTH} 1"]),
    "take_along_channels": (lambda m, y: torch.take_along_dim(y, m.idx_c, 1), ["torch.take_along_dim"]),
    # "index_select", not "torch.index_select": importing torch_geometric replaces torch.index_select by
    # a Python function fx cannot trace, and the capture then goes through torch.export (aten.index_select)
    "index_select": (lambda m, y: torch.index_select(y, 1, m.perm), ["index_select", f"{WIDTH} 1"]),
    "index_tensor": (lambda m, y: y[:, m.perm], ["operator.getitem", "indexed by positions"]),
    "index_list": (lambda m, y: y[:, [1, 0] + list(range(2, 16))], ["operator.getitem", "indexed by positions"]),
    "narrow_literal": (lambda m, y: torch.cat([y.narrow(1, 8, 8), y.narrow(1, 0, 8)], 1),
                       ["Tensor.narrow", "narrowed to [8:16]"]),
    "narrow_literal_whole": (lambda m, y: y.narrow(1, 0, 16), ["Tensor.narrow", "narrowed to [0:16]"]),
    "slice_literal": (lambda m, y: torch.cat([y[:, 8:], y[:, :8]], 1), ["operator.getitem", "fixed bounds"]),
    "unbind_pieces": (lambda m, y: torch.stack([y.unbind(1)[i] for i in range(16)], 1),
                      ["Tensor.unbind", "one piece per index"]),
    "layer_norm_literal": (lambda m, y: F.layer_norm(y.permute(0, 2, 3, 1), (16,)).permute(0, 3, 1, 2),
                           ["layer_norm", "normalized_shape (16,)"]),
    "constant_tensor": (lambda m, y: y * torch.linspace(0.5, 1.5, 16).view(1, -1, 1, 1),
                        ["constant tensor made in forward"]),
}


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_width_dependent_op_freezes_its_group(name):
    op, parts = FROZEN[name]
    model = Sandwich(op)
    a = surgeon.analyze(model, X)
    assert_frozen(group_of(a, "conv1.weight", 0), *parts)
    for other in ("stem.weight", "conv2.weight"):
        assert group_of(a, other, 0).prunable, f"{other} is kept whole too"
    small, plan = shrink_checked(model, X)
    assert small.conv1.out_channels == small.conv2.in_channels == 16
    assert small.stem.out_channels < 16 or small.conv2.out_channels < 16
    assert_matches_zeroed(model, X, plan, small)


def test_unflatten_module_freezes_its_group():
    model = Sandwich(lambda m, y: m.extra(y).flatten(1, 2), extra=nn.Unflatten(1, (4, 4)))
    assert_frozen(group_of(surgeon.analyze(model, X), "conv1.weight", 0), "Unflatten", "hard-codes width 4")
    small, plan = shrink_checked(model, X)
    assert small.conv1.out_channels == 16
    assert_matches_zeroed(model, X, plan, small)


# -- widths used as numbers: prunable, but never claimed exact ----------------------------------------
@pytest.mark.parametrize("op, names", [
    (lambda m, y: y - y.sum(1, keepdim=True) / y.shape[1], ["operator.truediv", "used as a number"]),
    (lambda m, y: F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2]).permute(0, 3, 1, 2), ["normalised"]),
], ids=["mean_by_hand", "layer_norm_of_shape"])
def test_width_used_as_a_number_is_inexact(op, names):
    model = Sandwich(op)
    g = group_of(surgeon.analyze(model, X), "conv1.weight", 0)
    assert g.prunable and not g.exact
    assert all(n in g.inexact_reason for n in names), g.inexact_reason
    small, _ = shrink_checked(model, X)
    assert small(X).shape == model(X).shape


# -- the repros of issue 13 (/work/shared/repros), on their own model ---------------------------------
@pytest.mark.parametrize("op, parts", [
    (lambda m, y: torch.roll(y, 3, dims=1), ["torch.roll", "rolled by 3"]),
    (lambda m, y: y.unflatten(1, (4, 4)).flatten(1, 2), ["Tensor.unflatten", "hard-codes width 4"]),
], ids=["roll_silent", "unflatten_surgeryerror"])
def test_repro_single_group_is_refused_with_its_reason(op, parts):
    """Its only hidden group is kept whole, so a target below 1 is refused, not met wrongly
    (the Sandwich cases above show the rest of a model still shrinking)."""
    model = Pair(op)
    assert_frozen(group_of(surgeon.analyze(model, X), "conv1.weight", 0), *parts)
    with pytest.raises(PlanError, match="lowest reachable") as refused:
        surgeon.shrink(model, X, 0.5)
    assert all(part in str(refused.value) for part in parts), "the refusal names what keeps the group whole"
