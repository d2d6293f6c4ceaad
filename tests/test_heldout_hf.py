"""Hugging Face families outside the supported list, at small configs (random weights): what a
sweep of held-out families found. Each test states the behaviour with the oracles of DESIGN.md.

* GPT-J's ``n_inner=None`` ("4 x n_embd") survives ``zero_invariance`` (the check copied the
  model through a no-op plan, which wrote the implied width out, and then refused its own plan).
* OLMo's parameter-free norm keeps ``self.normalized_shape = (hidden,)``, which an exported graph
  writes as a number: the width probe finds the tuple and the residual width follows pruning.
* OPT's single width probe failed because ``head_dim``, one attribute, is read by two groups the
  trial cut to different widths; the probe retries without them and the residual width passes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import surgeon
from surgeon.verify import count_flops, zero_invariance

from helpers import pick_units

T = pytest.importorskip("transformers")
V = 256


def _text():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (2, 8), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _build(cls, cfg):
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    return cls(cfg).eval(), _text()


def _residual(a):
    """The group of the embedding's width (the residual stream)."""
    for g in a.groups:
        if any(m.name.endswith("embed_tokens.weight") and m.dim == 1 for m in g.tensors):
            return g
    raise AssertionError("no group holds the embedding's width")


def test_zero_invariance_keeps_an_implied_config_width():
    model, x = _build(T.GPTJForCausalLM, T.GPTJConfig(vocab_size=V, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                                     n_positions=32, bos_token_id=0, eos_token_id=0))
    assert model.config.n_inner is None
    a = surgeon.analyze(model, x)
    groups = [g for g in a.groups if g.prunable and g.exact]
    assert groups
    rng = np.random.default_rng(0)
    units = {g.id: pick_units(g, rng, 0.3) for g in groups}
    assert zero_invariance(model, x, units, analysis=a) < 1e-4
    assert model.config.n_inner is None  # the user's config is untouched


def test_parameter_free_norm_tuple_follows_the_residual_width():
    cfg = T.OlmoConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=32)
    model, x = _build(T.OlmoForCausalLM, cfg)
    a = surgeon.analyze(model, x, uniform=False)
    g = _residual(a)
    assert g.prunable, g.describe()
    fixed = {(f.module, f.attr) for f in a.coupling.attr_fixes}
    assert ("model.layers.0.input_layernorm", "normalized_shape") in fixed
    assert not g.exact  # normalised over: pruned, but not zero-invariant (DESIGN.md's inexact groups)
    _lands_with_a_narrower_residual(model, x)
    assert model.model.layers[0].input_layernorm.normalized_shape == (64,)  # the input model is untouched


def _lands_with_a_narrower_residual(model, x):
    base = count_flops(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgeon.shrink(model, x, 0.5, uniform=False)
    assert abs(count_flops(small, x) / base - 0.5) <= 0.01
    assert small.get_input_embeddings().weight.shape[1] < 64  # the residual width was pruned, and it runs
    assert surgeon.verify.output_shapes(small, x) == surgeon.verify.output_shapes(model, x)


def test_probe_retries_without_groups_that_share_an_attribute():
    cfg = T.OPTConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                      word_embed_proj_dim=64, max_position_embeddings=32)
    model, x = _build(T.OPTForCausalLM, cfg)
    a = surgeon.analyze(model, x, uniform=False)
    g = _residual(a)
    assert g.prunable, g.describe()
    heads = [g for g in a.groups if any("q_proj.weight" in m.name and m.dim == 0 for m in g.tensors)]
    assert heads and not any(h.prunable for h in heads)  # q/k and v/o read one head_dim: still kept
    _lands_with_a_narrower_residual(model, x)


def test_implied_head_dim_with_a_kv_head_count_lands_at_its_default_config():
    """OLMo derives head_dim = hidden / heads and sizes k/v by num_key_value_heads: a joint cut (a
    head of every layer with head_dim residual channels) must set both head counts. The k/v width
    is kv_heads * hidden / heads, a width the head count divides, solved with the joint's count."""
    from surgeon.analysis.hf import check_config

    cfg = T.OlmoConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=32)
    model, x = _build(T.OlmoForCausalLM, cfg)
    base = count_flops(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = surgeon.shrink(model, x, 0.5)
    assert abs(count_flops(small, x) / base - 0.5) <= 0.01
    assert small.config.num_attention_heads < 4 and small.config.hidden_size < 64
    assert small.config.num_key_value_heads == small.config.num_attention_heads  # still multi-head
    assert check_config(small) is None  # from_pretrained builds exactly these shapes
    assert model.config.hidden_size == 64 and model.config.num_key_value_heads == 4
