"""Transformers: Hugging Face models (captured through torch.export), torchvision and timm
vision transformers, nn.MultiheadAttention and nn.TransformerEncoder.

Each model shrinks to half its FLOPs with its output shapes kept; zero-invariance holds for the
heads, MLP units and hidden size (checked with ``uniform=False`` so that every group the
graph allows is exercised, not only what a Hugging Face config can express). With the default
settings a Hugging Face model reloads with ``from_pretrained`` and gives identical logits, and
the causal LMs generate with their KV cache after pruning.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
import surgeon.analysis.hf
from helpers import check_shrink, check_zero_invariance, run
from hf_zoo import hf_models, torch_models

pytest.importorskip("transformers")
warnings.filterwarnings("ignore", message=".*bos_token_id.*")

HF = hf_models()
TORCH = torch_models()
CAUSAL = ["gpt2", "llama", "mistral", "qwen2"]


def _kinds(a) -> set[str]:
    return {g.kind.value for g in a.groups if g.prunable}


@pytest.mark.parametrize("name", sorted(HF) + sorted(TORCH))
def test_shrinks_to_half(name):
    model, x = {**HF, **TORCH}[name]()
    small = check_shrink(model, x, 0.5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


# nn.MultiheadAttention needs embed_dim == num_heads x head_dim, so its units are one position
# of every head: head_dim shrinks and with it the attention scale (reported inexact, below)
EXACT = sorted(HF) + sorted(set(TORCH) - {"mha", "transformer_encoder"})


@pytest.mark.parametrize("name", EXACT)
def test_zero_invariance(name):
    model, x = {**HF, **TORCH}[name]()
    worst = check_zero_invariance(model, x, rounds=1, uniform=False)
    assert worst and max(worst.values()) < 1e-4


@pytest.mark.parametrize("name", ["mha", "transformer_encoder"])
def test_multihead_attention_units_are_inexact_with_a_reason(name):
    """Captured by fx (its own rule) or by torch.export (decomposed into functional ops), an
    nn.MultiheadAttention prunes one position of every head, tied to the residual stream."""
    model, x = TORCH[name]()
    a = surgeon.analyze(model, x)
    attn = [g for g in a.groups if any("in_proj_weight" in m.name for m in g.tensors)]
    assert attn and all(g.prunable and not g.exact and g.n_units == 16 for g in attn)
    assert all(any(m.name.endswith("out_proj.weight") and m.dim == 1 for m in g.tensors) for g in attn)


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "vit"])
def test_heads_are_units(name):
    model, x = {**HF, **TORCH}[name]()
    a = surgeon.analyze(model, x, uniform=False)
    heads = [g for g in a.groups if g.kind.value == "head" and g.prunable]
    assert heads, [g.describe() for g in a.groups]
    cfg = getattr(model, "config", None)
    if cfg is not None:  # one unit per head, or per key/value group with GQA
        want = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        assert {g.n_units for g in heads} == {want}


def test_llama_gqa_units_are_whole_kv_groups():
    model, x = HF["llama"]()
    small = surgeon.shrink(model, x, 0.5)
    cfg = small.config
    for layer in small.model.layers:
        att = layer.self_attn
        q_heads = att.q_proj.out_features // cfg.head_dim
        kv_heads = att.k_proj.out_features // cfg.head_dim
        assert att.v_proj.out_features == att.k_proj.out_features
        assert q_heads == kv_heads * att.num_key_value_groups  # every kv head keeps its query heads
        assert (q_heads, kv_heads) == (cfg.num_attention_heads, cfg.num_key_value_heads)


@pytest.mark.parametrize("name", sorted(HF))
def test_reloads_with_from_pretrained(name, tmp_path):
    model, x = HF[name]()
    small = surgeon.shrink(model, x, 0.5)
    assert surgeon.analysis.hf.check_config(small) is None
    small.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    assert torch.equal(run(small, x), run(back, x))
    assert run(small, x).std() > 1e-3
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in small.parameters())


@pytest.mark.parametrize("name", CAUSAL)
def test_generates_with_kv_cache(name):
    model, x = HF[name]()
    small = surgeon.shrink(model, x, 0.5)
    prompt = x["input_ids"][:1]
    out = small.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
    assert out.shape == (1, prompt.shape[1] + 8)
    no_cache = small.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(out, no_cache)  # the cache sees the pruned widths


def test_uniform_widths_are_the_default_for_hf():
    model, x = HF["llama"]()
    small = surgeon.shrink(model, x, 0.5)
    widths = {layer.mlp.gate_proj.out_features for layer in small.model.layers}
    assert len(widths) == 1 and widths == {small.config.intermediate_size}


def test_config_that_cannot_say_it_alone_joins_heads_and_hidden():
    model, x = HF["bert"]()  # BERT's head size is hidden_size / num_attention_heads
    a = surgeon.analyze(model, x)
    heads = [gi for gi, g in enumerate(a.groups) if g.kind.value == "head"]
    assert heads and all(a.groups[gi].prunable for gi in heads)  # only with head_dim residual channels:
    ((bundle, units),) = [(b, u) for b, u in zip(a.bundles, a.bundle_units) if set(heads) <= set(b)]
    assert sorted(units)[-1] == 16 and units.count(1) == len(heads)  # one head per layer, 16 channels
    free = surgeon.analyze(model, x, uniform=False)
    assert all(g.prunable for g in free.groups if g.kind.value == "head")


def test_uniform_false_warns_that_the_config_is_stale():
    model, x = HF["llama"]()
    with pytest.warns(UserWarning, match="from_pretrained"):
        surgeon.shrink(model, x, 0.5, uniform=False)


def test_unknown_attention_is_left_whole():
    class HandMade(nn.Module):  # heads split with a hard-coded count: never guessed
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(16, 64)
            self.qkv = nn.Linear(64, 192)
            self.proj = nn.Linear(64, 64)
            self.out = nn.Linear(64, 10)

        def forward(self, x):
            h = self.inp(x)
            q, k, v = self.qkv(h).view(2, 8, 3, 4, 16).permute(2, 0, 3, 1, 4)
            att = (q @ k.transpose(-1, -2)).softmax(-1) @ v
            return self.out(h + self.proj(att.transpose(1, 2).reshape(2, 8, 64)))

    model, x = HandMade().eval(), torch.randn(2, 8, 16)
    a = surgeon.analyze(model, x)
    g = next(g for g in a.groups if any(m.name == "qkv.weight" and m.dim == 0 for m in g.tensors))
    assert not g.prunable and "hard-codes" in g.reason
    small = surgeon.shrink(model, x, 0.7)  # the rest still shrinks
    assert small.qkv.out_features == 192


def test_target_below_one_head_per_group_is_refused():
    model, x = HF["llama"]()
    with pytest.raises(surgeon.errors.PlanError, match="lowest reachable"):
        surgeon.shrink(model, x, 0.01)


def test_export_capture_probe_keeps_hard_coded_widths_frozen():
    """A width written as a number in the model's own code stays frozen under torch.export too:
    the probe re-captures a cut copy and sees the number did not follow."""
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 32)
            self.b = nn.Linear(32, 10)

        def forward(self, x):
            steps = range(x.shape[0] // 4)  # range over a size: symbolic_trace fails, export captures
            h = sum(self.a(x) for _ in steps)
            return self.b(h.reshape(4, 32))

    model, x = Fixed().eval(), torch.randn(4, 16)
    a = surgeon.analyze(model, x)
    assert a.traced.mode == "export"
    g = next(g for g in a.groups if any(m.name == "a.weight" and m.dim == 0 for m in g.tensors))
    assert not g.prunable, g.describe()


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_shrunk_exports_to_onnx(name, tmp_path):
    pytest.importorskip("onnxruntime")
    model, x = HF[name]()
    small = surgeon.shrink(model, x, 0.5)
    report = surgeon.exporters.onnx.export(small, x, tmp_path / "small.onnx")
    assert report.max_rel_error < 1e-4  # onnxruntime agrees with PyTorch (export raises otherwise)
    assert report.params == sum(p.numel() for p in small.parameters())
    assert report.params < sum(p.numel() for p in model.parameters())


class _LayersLast:
    """Scores whole layers far below every channel, so the plan drops layers first."""

    name = "layers_last"

    def score(self, model, groups):
        out = []
        for g in groups:
            s = np.ones(g.n_units)
            if g.layers:
                s = np.linspace(1e-6, 2e-6, g.n_units)[::-1].copy()  # the last layer goes first
            out.append(s)
        return out


def _deep_llama():
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=256, vocab_size=96, max_position_embeddings=32, use_cache=False)
    model = T.LlamaForCausalLM(cfg).eval()
    return model, {"input_ids": torch.randint(0, 96, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}


def test_whole_layers_are_units_planned_with_channels(tmp_path):
    model, x = _deep_llama()
    a = surgeon.analyze(model, x, layers=True)
    (g,) = [g for g in a.groups if g.kind.value == "layer"]
    assert g.prunable and g.layers == tuple(f"model.layers.{i}" for i in range(4))
    # scores are normalised within each group, so units of different groups compete on cost: a
    # low target that channels alone cannot reach makes the plan drop layers, the last first
    kw = dict(min_keep=0.75, criterion=_LayersLast())  # channels alone reach 0.60 of the FLOPs
    with pytest.raises(surgeon.errors.PlanError):
        surgeon.plan(model, x, 0.5, **kw)
    p = surgeon.plan(model, x, 0.5, layers=True, **kw)
    assert p.drops and "model.layers.3" in p.drops and "model.layers.0" not in p.drops
    small = check_shrink(model, x, 0.5, layers=True, **kw)
    assert len(small.model.layers) == small.config.num_hidden_layers < 4
    assert [layer.self_attn.layer_idx for layer in small.model.layers] == list(range(len(small.model.layers)))
    small.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    assert torch.equal(run(small, x), run(back, x))
    out = small.generate(x["input_ids"][:1], max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
    assert out.shape == (1, 16)


def test_layer_zero_invariance():
    model, x = _deep_llama()
    worst = check_zero_invariance(model, x, rounds=1, layers=True, uniform=False)
    a = surgeon.analyze(model, x, layers=True, uniform=False)
    assert any(g.layers for g in a.groups if g.id in worst)


def test_post_norm_layers_are_not_removable():
    model, x = HF["bert"]()  # LayerNorm(x + f(x)): erasing f still normalises, so not exact
    a = surgeon.analyze(model, x, layers=True)
    assert not any(g.layers for g in a.groups)


def test_residual_cnn_blocks_are_layers():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(16, 32, 3, padding=1)
            self.b = nn.Conv2d(32, 16, 1)

        def forward(self, x):
            return x + self.b(torch.relu(self.a(torch.relu(x))))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), *[Block() for _ in range(4)],
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()
    x = torch.randn(1, 3, 16, 16)
    a = surgeon.analyze(model, x, layers=True)
    (g,) = [g for g in a.groups if g.layers]
    assert g.layers == ("1", "2", "3", "4")  # the stem conv and the head change shapes
    check_zero_invariance(model, x, rounds=1, layers=True)
    small = check_shrink(model, x, 0.3, layers=True, min_keep=0.5, criterion=_LayersLast())
    assert len(small) < len(model)
    # a layer that holds an ignored module is never dropped
    kept = surgeon.analyze(model, x, ignore=["4.a"], layers=True)
    (g,) = [g for g in kept.groups if g.layers]
    assert g.frozen_units.tolist() == [False, False, False, True]
    p = surgeon.plan(model, x, 0.45, ignore=["4.a"], layers=True, min_keep=0.5, criterion=_LayersLast())
    assert p.drops and "4" not in p.drops
