"""Surgery on a copy: what the copy shares with the original (nothing) and with itself (ties)."""

from __future__ import annotations

import copy

import torch
from torch import nn

import surgeon


class Scale(nn.Module):
    """A module with its own ``__deepcopy__``: the clone copies it through ``copy.deepcopy``."""

    def __init__(self, n: int):
        super().__init__()
        self.s = nn.Parameter(torch.rand(n) + 0.5)

    def __deepcopy__(self, memo):
        new = Scale.__new__(Scale)
        memo[id(self)] = new
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return new

    def forward(self, x):
        return x * self.s


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.scale = Scale(64)
        self.fc2 = nn.Linear(64, 16)
        self.register_buffer("offset", torch.randn(16))
        self.shared = nn.Linear(16, 16)
        self.blocks = nn.ModuleList([self.shared, nn.ReLU(), self.shared])
        self.out = nn.Linear(16, 8)
        self.out2 = nn.Linear(16, 8)
        self.out2.weight = self.out.weight  # tied

    def forward(self, x):
        h = self.fc2(self.scale(torch.relu(self.fc1(x)))) + self.offset
        for b in self.blocks:
            h = b(h)
        return self.out(h) + self.out2(h)


def _tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(m.named_parameters(remove_duplicate=False)), **dict(m.named_buffers(remove_duplicate=False))}


def test_copy_keeps_ties_and_shares_nothing_with_the_original():
    torch.manual_seed(0)
    model, x = Tied().eval(), torch.randn(4, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.fc1.register_forward_hook(lambda *a: calls.append("original"))

    small = surgeon.shrink(model, x, target=0.5)

    assert small.fc1.out_features < 64 and small.fc1.weight.shape[0] == small.fc1.out_features
    assert small.scale.s.shape == (small.fc1.out_features,) and small.fc2.in_features == small.fc1.out_features
    assert type(small.scale) is Scale and small.scale is not model.scale
    assert small.out2.weight is small.out.weight  # one tied parameter, not two copies
    assert small.blocks[0] is small.blocks[2] is small.shared  # one shared module
    assert small(x).shape == model(x).shape
    # the original is untouched, and no tensor memory is shared with it
    assert model.fc1.out_features == 64 and model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    theirs = {t.data_ptr() for t in _tensors(model).values()}
    assert not theirs & {t.data_ptr() for t in _tensors(small).values()}
    # hooks are copied, and the copy's hook registry is its own
    calls.clear()
    small.fc1.register_forward_hook(lambda *a: calls.append("copy"))
    model(x)
    assert calls == ["original"]
    calls.clear()
    small(x)
    assert calls == ["original", "copy"]


def test_inplace_apply_keeps_ties():
    torch.manual_seed(0)
    model, x = Tied().eval(), torch.randn(4, 16)
    p = surgeon.plan(model, x, target=0.5)
    out = surgeon.apply(model, p, inplace=True)
    assert out is model and model.fc1.out_features < 64
    assert model.out2.weight is model.out.weight and model.blocks[0] is model.shared
    assert model.scale.s.shape == (model.fc1.out_features,)
    assert model(x).shape == (4, 8)


class _Attention(nn.Module):
    """Eval-mode, batch-first attention layers: the ones torch.nn runs through a fused fast path."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.encoder(self.attn(x, x, x, need_weights=False)[0])


def test_measure_counts_what_count_flops_counts_and_runs_the_model():
    from surgeon.verify import count_flops, measure, output_shapes

    torch.manual_seed(0)
    for model, x in [(_Attention().eval(), torch.randn(2, 6, 32)), (Tied().eval(), torch.randn(4, 16))]:
        flops, shapes = measure(model, x)
        assert flops == count_flops(model, x) > 0
        assert shapes == output_shapes(model, x)
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    broken = Tied().eval()
    broken.fc2.weight.data = broken.fc2.weight.data[:, :32]  # the run itself must fail
    try:
        measure(broken, torch.randn(4, 16))
    except RuntimeError:
        pass
    else:
        raise AssertionError("measure did not run the model")
    assert torch.backends.mha.get_fastpath_enabled()


class _CachedBias(nn.Module):
    """timm's LeViT / EfficientFormer habit: in eval mode forward keeps a tensor computed from a
    parameter (with autograd on: not a graph leaf) in a dict attribute, which torch refuses to
    deep-copy."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 1)
        self.bias = nn.Parameter(torch.randn(8, 1, 1))
        self.cache: dict[str, torch.Tensor] = {}

    def forward(self, x):
        if self.training:
            bias = self.bias * 2
        else:
            if "cpu" not in self.cache:
                self.cache["cpu"] = self.bias * 2
            bias = self.cache["cpu"]
        return self.conv2(torch.relu(self.conv1(x))) + bias


def test_shrink_copies_a_model_whose_forward_cached_a_non_leaf_tensor():
    torch.manual_seed(0)
    model, x = _CachedBias().eval(), torch.randn(2, 3, 8, 8)
    ref = model(x)  # the user evaluated it once: the cache holds a tensor autograd made
    assert model.cache["cpu"].grad_fn is not None
    small = surgeon.shrink(model, x, 0.5)
    assert small.conv1.out_channels < 16 and small.cache["cpu"].grad_fn is None
    assert small.cache["cpu"] is not model.cache["cpu"]  # a copy, as deepcopy makes
    assert torch.equal(model(x), ref) and model.conv1.out_channels == 16  # the original is untouched
