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
from surgeon.planning.plan import Plan

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import hf_families as H  # noqa: E402

FAST = ["llama", "phi", "gpt2", "gpt_neox", "bert", "distilbert", "vit", "bart"]
SLOW = ["qwen2", "mistral", "gemma2", "roberta", "t5", "convnext", "swin", "qwen2_moe", "mixtral"]


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
def test_swin_mlp_ratio_moves_in_its_own_steps():
    """Swin's MLPs are int(mlp_ratio x stage width) wide: the MLPs of every stage are one joint
    bundle (units 1 : 2, as the stage widths), written back as a new float mlp_ratio, apart from
    the joint of heads and widths (embed_dim, per-stage num_heads), so the result lands on 0.5."""
    model, x, _ = H.build("swin")
    a = surgeon.analyze(model, x)
    assert sorted(a.bundle_units) == [(1, 2), (16, 1, 32, 2)]
    assert "mlp_ratio" in a.config_model.footprint
    snap = H.snapshot(model)
    small = surgeon.shrink(model, x, target=0.5)
    assert H.unchanged(model, snap)
    assert abs(H.flops(small, x) / H.flops(model, x) - 0.5) <= 0.01
    cfg = small.config
    assert isinstance(cfg.mlp_ratio, float) and cfg.mlp_ratio < 4.0
    for stage in small.swin.encoder.layers:
        for block in stage.blocks:
            dim = block.layernorm_before.normalized_shape[0]
            assert block.mlp.fc1.out_features == int(cfg.mlp_ratio * dim)
    assert H.reload_diff(small, x) < 1e-4
    plan = surgeon.plan(model, x, target=0.5)  # a float config field survives the plan's JSON
    again = surgeon.apply(model, Plan.from_json(plan.to_json()))
    assert again.config.mlp_ratio == next(u.new for u in plan.config if u.attr == "mlp_ratio")
    assert H.reload_diff(again, x) < 1e-4


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


def test_a_head_dim_field_keeps_its_value_when_heads_go():
    """Llama's config has a head_dim field: a KV head (with its query heads) is a unit of its
    own, the cut is written as fewer heads (head_dim unchanged), and the result reloads."""
    model, x, _ = H.build("llama")
    a = surgeon.analyze(model, x)
    heads = [g for g in a.groups if g.kind.value == "head"]
    assert len(heads) == 2 and all(g.prunable for g in heads)
    small = surgeon.shrink(model, x, target=0.25)
    cfg = small.config
    assert cfg.head_dim == 16 and cfg.num_key_value_heads == 1 and cfg.num_attention_heads == 2
    for layer in small.model.layers:
        assert layer.self_attn.q_proj.out_features == 2 * 16 and layer.self_attn.k_proj.out_features == 16
    assert H.reload_diff(small, x) < 1e-4
    assert abs(H.flops(small, x) / H.flops(model, x) - 0.25) <= 0.01
    assert H.generates(small, x)


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
def test_t5_heads_are_one_joint_unit_with_d_kv_kept():
    """T5's num_heads sizes self-, cross- and decoder attention (d_kv is a field): the three head
    groups are one bundle; the cross-attention's zeros(1, n_heads, ...) position bias follows
    the cut (the decoder is as long as the head count here: that coincidence must not freeze it),
    and model_dim, as wide as the heads by chance, is left alone."""
    model, x, _ = H.build("t5")
    a = surgeon.analyze(model, x)
    heads = {gi for gi, g in enumerate(a.groups) if g.kind.value == "head"}
    assert len(heads) == 3 and all(a.groups[gi].prunable for gi in heads)
    assert any(heads == set(b) for b in a.bundles)
    small = surgeon.shrink(model, x, target=0.3)
    cfg = small.config
    assert cfg.num_heads < 4 and cfg.d_kv == 16 and small.model_dim == 64
    assert H.reload_diff(small, x) < 1e-4


@pytest.mark.slow
def test_nested_sub_config_widths_are_written_back():
    """CLIP's towers are sized by vision_config / text_config: their MLP widths are planned as
    nested fields and the result's sub-configs reload it."""
    import transformers as T

    torch.manual_seed(0)
    tower = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256)
    model = T.CLIPModel(T.CLIPConfig(text_config=dict(tower, vocab_size=96, max_position_embeddings=16),
                                     vision_config=dict(tower, image_size=32, patch_size=8),
                                     projection_dim=32)).eval()
    ids = torch.randint(3, 96, (2, 8), generator=torch.Generator().manual_seed(0))
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
         "pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    a = surgeon.analyze(model, x)
    assert {"text_config.intermediate_size", "vision_config.intermediate_size"} <= set(a.config_model.footprint)
    snap = H.snapshot(model)
    small = surgeon.shrink(model, x, target=0.7)
    assert H.unchanged(model, snap)
    assert small.config.text_config.intermediate_size < 256 and small.config.vision_config.intermediate_size < 256
    assert abs(H.flops(small, x) / H.flops(model, x) - 0.7) <= 0.01
    with torch.no_grad():
        assert small(**x).logits_per_image.std() > 1e-3
    assert H.reload_diff(small, x) < 1e-4  # logits_per_image


@pytest.mark.slow
def test_a_per_stage_list_of_a_backbone_config_is_written_back():
    """UperNet builds its ConvNeXt backbone from backbone_config.hidden_sizes: a stage width is
    planned as the nested list entry and the result's backbone_config holds the new list."""
    import transformers as T

    torch.manual_seed(0)
    backbone = T.ConvNextConfig(num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], out_features=["stage1", "stage2"])
    model = T.UperNetForSemanticSegmentation(T.UperNetConfig(
        backbone_config=backbone, hidden_size=32, auxiliary_channels=16, pool_scales=[1, 2], num_labels=4,
        use_auxiliary_head=False)).eval()
    x = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}
    assert "backbone_config.hidden_sizes[0]" in surgeon.analyze(model, x).config_model.footprint
    small = surgeon.shrink(model, x, target=0.85)
    widths = small.config.backbone_config.hidden_sizes
    assert widths[0] < 32 and small.backbone.encoder.stages[0].layers[0].pwconv2.out_features == widths[0]
    assert model.config.backbone_config.hidden_sizes == [32, 64]
    with torch.no_grad():
        assert small(**x).logits.std() > 1e-3
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
