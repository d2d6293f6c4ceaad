"""The pipeline flows one way: each pass returns a new value and leaves the earlier ones as they
were, and ``inplace=True`` reshapes the user's own objects."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
from surgeon.analysis import fingerprint
from surgeon.options import Metric, ShrinkConfig


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
                                  nn.Conv2d(48, 32, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.blocks = nn.Sequential(Block(), Block(), Block())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ResNetish().eval(), torch.randn(2, 3, 16, 16)


def test_later_steps_leave_the_analysis_unchanged(net):
    model, x = net
    a = surgeon.analyze(model, x, layers=True)
    before = fingerprint(a)
    surgeon.plan(model, x, 0.5, analysis=a)
    surgeon.plan(model, x, 0.3, analysis=a, metric="params", round_to=8)
    p = surgeon.plan(model, x, 0.5, analysis=a, verify=True)
    surgeon.apply(model, p)
    g = next(g for g in a.groups if g.prunable and not g.layers)
    assert surgeon.verify.zero_invariance(model, x, {g.id: [0]}, analysis=a) < 1e-4
    assert fingerprint(a) == before
    assert fingerprint(surgeon.analyze(model, x, layers=True)) == before  # and it is a function of its input


def test_values_refuse_to_be_changed(net):
    model, x = net
    a = surgeon.analyze(model, x)
    g = next(g for g in a.groups if g.prunable)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.reason = "marked later"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.groups = ()
    with pytest.raises(ValueError):
        g.frozen_units[0] = True
    with pytest.raises(ValueError):
        g.members[0].unit_of[0] = 5
    with pytest.raises(TypeError):
        a.coupling.frozen[("v", "x", 0)] = "frozen later"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.coupling.attr_fixes = ()


def test_derived_coupling_leaves_the_original(net):
    model, x = net
    a = surgeon.analyze(model, x)
    c = a.coupling
    frozen = dict(c.frozen)
    d = c.derive(frozen={})
    assert dict(c.frozen) == frozen and dict(d.frozen) == {} and d.uf is c.uf


def test_layers_and_ignore_derive_new_groups(net):
    model, x = net
    plain = surgeon.analyze(model, x)
    with_layers = surgeon.analyze(model, x, layers=True, ignore=["blocks.1"])
    assert len(with_layers.groups) == len(plain.groups) + 1
    layer = with_layers.groups[-1]
    assert layer.layers == ("blocks.0", "blocks.1", "blocks.2")
    assert layer.frozen_units.tolist() == [False, True, False]
    assert all(g.reason is None or "ignored" not in g.reason for g in plain.groups)


def test_options_are_typed_once():
    cfg = ShrinkConfig.of(target=0.25, metric="params", round_to=None, ignore=["a"])
    assert cfg.metric is Metric.PARAMS and cfg.ignore == ("a",) and cfg.target == 0.25
    with pytest.raises(ValueError, match="did you mean 'flops'"):
        ShrinkConfig.of(metric="flop")
    with pytest.raises(TypeError, match="did you mean 'min_keep'"):
        ShrinkConfig.of(min_kep=3)
    with pytest.raises(ValueError, match="round_to"):
        ShrinkConfig.of(round_to=0)


def test_plan_verify_lands_like_shrink(net):
    model, x = net
    p = surgeon.plan(model, x, 0.5, verify=True)
    small = surgeon.shrink(model, x, 0.5)
    assert surgeon.apply(model, p).state_dict().keys() == small.state_dict().keys()
    assert abs(surgeon.verify.count_flops(small, x) / surgeon.verify.count_flops(model, x) - 0.5) < 0.01
    assert [s.keep for s in p.slices] == [s.keep for s in surgeon.plan(model, x, 0.5, verify=True).slices]


# -- inplace=True ------------------------------------------------------------------------------------
def _widths(model):
    return [p.shape for p in model.parameters()]


def test_inplace_conv_net_reshapes_the_users_objects(net):
    model, x = net
    model = ResNetish().eval()
    model.load_state_dict(net[0].state_dict())
    expected = surgeon.shrink(model, x, 0.5)
    held_conv = model.blocks[0].body[0]
    held_weight = model.blocks[0].body[0].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = [id(p) for p in model.parameters()]
    out = surgeon.shrink(model, x, 0.5, inplace=True)
    assert out is model
    assert [id(p) for p in model.parameters()] == ids  # the same objects...
    assert held_conv is model.blocks[0].body[0] and held_weight is model.blocks[0].body[0].weight
    assert held_weight.shape[0] == held_conv.out_channels == expected.blocks[0].body[0].out_channels < 48  # ...smaller
    assert opt.param_groups[0]["params"][0].shape == model.stem.weight.shape
    assert [p.shape for p in opt.param_groups[0]["params"]] == _widths(expected)
    ref = expected(x)
    assert ref.std() > 1e-3 and torch.allclose(model(x), ref, atol=1e-5)
    loss = model(x).square().mean()  # and it still trains
    loss.backward()
    opt.step()


def test_inplace_llama_reshapes_the_users_objects():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=128, vocab_size=96, max_position_embeddings=32, use_cache=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 96, (2, 8))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    expected = surgeon.shrink(model, inputs, 0.5)
    mlp = model.model.layers[0].mlp
    up = mlp.up_proj.weight
    opt = torch.optim.AdamW(model.parameters())
    surgeon.shrink(model, inputs, 0.5, inplace=True)
    assert mlp is model.model.layers[0].mlp and up is mlp.up_proj.weight
    assert up.shape == expected.model.layers[0].mlp.up_proj.weight.shape and up.shape[0] < 128
    assert mlp.up_proj.out_features == up.shape[0]
    assert [p.shape for p in opt.param_groups[0]["params"]] == _widths(expected)
    assert model.config.intermediate_size == expected.config.intermediate_size
    ref = expected(**inputs).logits
    assert ref.std() > 1e-3 and torch.allclose(model(**inputs).logits, ref, atol=1e-5)
