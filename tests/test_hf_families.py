"""Hugging Face families at their default configs (``use_cache=True`` included, nothing set by
hand): ``shrink(target=0.5)`` lands on half the FLOPs counted by ``FlopCounterMode``, the result
reloads with ``from_pretrained`` to identical logits and generates with the KV cache, and the
input model and its config are unchanged. Small configs (hidden 64, 4 heads, 2 layers, random
weights) built by ``benchmarks/hf_families.py``, which runs the same at realistic proportions.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

import surgeon

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import hf_families as H  # noqa: E402

FAST = ["llama", "phi", "gpt2", "gpt_neox", "bert", "distilbert", "vit", "bart"]
SLOW = ["qwen2", "mistral", "gemma2", "roberta", "t5", "convnext", "qwen2_moe", "mixtral"]


def _params():
    out = [pytest.param(f, id=f) for f in FAST]
    out += [pytest.param(f, id=f, marks=pytest.mark.slow) for f in SLOW]
    return out


@pytest.fixture(scope="module", params=_params())
def shrunk(request):
    """(family, model, input, causal, the shrunk model), the input model checked unchanged."""
    warnings.filterwarnings("ignore")
    model, x, causal = H.build(request.param)
    assert model.config.to_dict().get("use_cache", True) is not False  # the default, not set by hand
    snap = H.snapshot(model)
    small = surgeon.shrink(model, x, target=0.5)
    assert H.unchanged(model, snap), "shrink changed the input model or its config"
    return request.param, model, x, causal, small


def test_lands_on_half_the_flops(shrunk):
    _, model, x, _, small = shrunk
    assert abs(H.flops(small, x) / H.flops(model, x) - 0.5) <= 0.01


def test_reloads_with_identical_logits(shrunk):
    _, _, x, _, small = shrunk
    with torch.no_grad():
        assert H.logits(small(**x)).std() > 1e-3  # real spread: a comparison that can fail
    assert H.reload_diff(small, x) < 1e-4


def test_generates_with_the_cache(shrunk):
    _, _, x, causal, small = shrunk
    if not causal:
        pytest.skip("not a causal LM")
    assert small.config.use_cache is True
    assert H.generates(small, x)
    prompt = x["input_ids"][:1]
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8, do_sample=False,
              pad_token_id=0)
    assert torch.equal(small.generate(prompt, use_cache=True, **kw), small.generate(prompt, use_cache=False, **kw))


@pytest.mark.slow
def test_swin_moves_in_the_steps_its_config_can_say():
    """Swin's stage widths are embed_dim x 2^i with head_dim implied by a num_heads list: one
    joint step takes head_dim channels per head of every stage, so at this size the widths
    can only halve; the result lands on that step and its config (a list included) reloads it."""
    model, x, _ = H.build("swin")
    snap = H.snapshot(model)
    small = surgeon.shrink(model, x, target=0.5)
    assert H.unchanged(model, snap)
    assert small.config.embed_dim == 16 and list(small.config.num_heads) == [1, 2]
    assert H.flops(small, x) / H.flops(model, x) < 0.5
    assert H.reload_diff(small, x) < 1e-4


@pytest.mark.slow
def test_per_stage_list_widths_are_planned_and_written_back():
    """ConvNeXt's hidden_sizes list: each stage's width with its 4x MLP is one joint bundle, and
    the result's config holds the new list."""
    model, x, _ = H.build("convnext")
    a = surgeon.analyze(model, x)
    assert sorted(a.bundle_units) == [(1, 4), (1, 4)]
    assert {"hidden_sizes[0]", "hidden_sizes[1]"} <= set(a.config_model.footprint)


@pytest.mark.slow
def test_a_tensor_input_with_the_cache_on():
    model, x, _ = H.build("llama")
    small = surgeon.shrink(model, x["input_ids"], target=0.5)
    assert model.config.use_cache is True and small.config.use_cache is True
    assert abs(H.flops(small, x) / H.flops(model, x) - 0.5) <= 0.01


def test_implied_head_dim_is_a_joint_unit():
    """ViT: head_dim = hidden_size / num_attention_heads, so one head of every layer plus head_dim
    residual channels go together and the ratio stays exact."""
    model, x, _ = H.build("vit")
    a = surgeon.analyze(model, x)
    joint = [(b, u) for b, u in zip(a.bundles, a.bundle_units) if max(u) > 1]
    assert len(joint) == 1
    bundle, units = joint[0]
    heads = [gi for gi in bundle if a.groups[gi].kind.value == "head"]
    assert len(heads) == 2 and sorted(units) == [1, 1, 16]
    assert a.config_model.unit_fields == {"num_attention_heads": heads[0]}
    small = surgeon.shrink(model, x, target=0.3)  # below what the MLPs alone can reach
    cfg = small.config
    assert cfg.hidden_size < 64 and cfg.hidden_size == 16 * cfg.num_attention_heads
    assert all(layer.attention.q_proj.out_features == cfg.hidden_size for layer in small.vit.layers)
    assert H.reload_diff(small, x) < 1e-4
    assert abs(H.flops(small, x) / H.flops(model, x) - 0.3) <= 0.01


@pytest.mark.slow
def test_one_field_sizing_many_places_is_one_bundle():
    """T5's d_ff sizes the encoder's and the decoder's feed-forward layers: one joint bundle, one
    width in the result and its config."""
    model, x, _ = H.build("t5")
    a = surgeon.analyze(model, x)
    ffn = {gi for gi, g in enumerate(a.groups)
           if any(m.name.endswith("DenseReluDense.wi.weight") and m.dim == 0 for m in g.tensors)}
    assert len(ffn) == 4 and any(ffn <= set(b) for b in a.bundles)
    assert all(a.groups[gi].prunable for gi in ffn)
    small = surgeon.shrink(model, x, target=0.8)
    widths = {m.out_features for n, m in small.named_modules() if n.endswith("DenseReluDense.wi")}
    assert widths == {small.config.d_ff} and small.config.d_ff < 256
    assert H.reload_diff(small, x) < 1e-4


@pytest.mark.slow
def test_a_width_that_sets_a_buffer_value_is_kept():
    """Gemma scales embeddings by sqrt(hidden_size), a non-persistent buffer from_pretrained
    recomputes: the hidden size is kept whole with that reason, so the reload matches."""
    model, x, _ = H.build("gemma2")
    a = surgeon.analyze(model, x)
    g = next(g for g in a.groups if any(m.name == "model.embed_tokens.weight" and m.dim == 1 for m in g.tensors))
    assert not g.prunable and "hidden" in g.reason
    assert a.config_model.value_fields.get("hidden_size") == "model.embed_tokens.embed_scale"
