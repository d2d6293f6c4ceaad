"""Models that do not fit (issue 18): plan a meta-device model from its checkpoint folder, apply a
plan shard by shard (``surgeon apply``), calibrate ``activation`` one layer at a time.

Oracles: the plan from meta + files is the in-memory plan (identical JSON, same fingerprint); the
folder ``surgeon apply`` writes reloads with plain ``from_pretrained`` and gives the logits of the
in-memory ``surgeon.apply`` (within 1e-5, on outputs with real spread)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import surgeon
from surgeon.cli import main
from surgeon.criteria import MetaDeviceError
from surgeon.errors import PlanError
from surgeon.sharded import CheckpointError, meta_model

from hf_zoo import hf_models

T = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", message=".*bos_token_id.*")


def _qwen_moe():
    cfg = T.Qwen2MoeConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
                           moe_intermediate_size=64, shared_expert_intermediate_size=64, use_cache=False)
    torch.manual_seed(0)
    model = T.Qwen2MoeForCausalLM(cfg).eval()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


MAKERS = {"llama": hf_models()["llama"], "bert": hf_models()["bert"], "qwen2_moe": _qwen_moe}


@pytest.fixture(scope="module", params=sorted(MAKERS))
def saved(request, tmp_path_factory):
    """(name, model, input, checkpoint folder in several shards, the in-memory l2 plan)."""
    model, x = MAKERS[request.param]()
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder, max_shard_size="100KB")
    assert len(list(folder.glob("*.safetensors"))) > 1 and (folder / "model.safetensors.index.json").is_file()
    return request.param, model, x, folder, surgeon.plan(model, x, 0.5)


def _out(y):
    return y.logits if hasattr(y, "logits") else y.last_hidden_state


def test_plan_from_meta_and_files_is_the_in_memory_plan(saved):
    _name, model, x, folder, mem = saved
    meta = meta_model(folder)
    assert all(p.is_meta for p in meta.parameters())
    got = surgeon.plan(meta, x, 0.5, weights=folder)
    assert got.to_json() == mem.to_json()
    assert got.fingerprint == surgeon.planning.plan.fingerprint_of(model) and got.slices
    assert all(p.is_meta for p in meta.parameters())  # the model is left as it was


def test_surgeon_apply_writes_shards_that_reload(saved, tmp_path, capsys):
    name, model, x, folder, plan = saved
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "small"
    assert main(["apply", str(tmp_path / "plan.json"), str(folder), str(out), "--quiet"]) == 0
    shards = sorted(out.glob("*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) > 1 and set(index["weight_map"].values()) == {s.name for s in shards}
    again = type(model).from_pretrained(out).eval()
    small = surgeon.apply(model, plan)
    with torch.no_grad():
        ref, got = _out(small(**x)), _out(again(**x))
    assert ref.std() > 1e-3
    assert (ref - got).abs().max() <= 1e-5
    n = sum(p.numel() for p in again.parameters())
    assert n == sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    for a in plan.config:
        assert getattr(again.config, a.attr) == a.new


def test_dropped_layers_and_tied_embeddings(tmp_path):
    model, x = hf_models()["llama"]()
    cfg = T.LlamaConfig(**{**model.config.to_dict(), "tie_word_embeddings": True, "num_hidden_layers": 3})
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "in", max_shard_size="100KB")
    plan = surgeon.plan(model, x, 0.5, layers=True)
    assert plan.drops
    written = surgeon.apply_checkpoint(plan, tmp_path / "in", tmp_path / "out")
    again = T.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        ref = surgeon.apply(model, plan)(**x).logits
        assert (ref - again(**x).logits).abs().max() <= 1e-5 and ref.std() > 1e-3
    assert len(written.shards) > 1 and again.config.num_hidden_layers == 3 - len(plan.drops)
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()


def test_layerwise_activation_is_the_in_memory_plan(tmp_path):
    model, x = hf_models()["llama"]()
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    gen = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, 96, (2, 8), generator=gen)} for _ in range(3)]
    a = surgeon.analyze(model, x)  # the in-memory plans share one capture; the meta one makes its own
    mem = surgeon.plan(model, x, 0.5, criterion="activation", data=data, analysis=a)
    assert mem.to_json() != surgeon.plan(model, x, 0.5, analysis=a).to_json()  # the data steers it
    got = surgeon.plan(meta_model(tmp_path), x, 0.5, weights=tmp_path, criterion="activation", data=data)
    assert got.to_json() == mem.to_json()


def test_refusals(tmp_path):
    model, x = hf_models()["llama"]()
    model.save_pretrained(tmp_path / "in", max_shard_size="100KB")
    meta = meta_model(tmp_path / "in")
    with pytest.raises(MetaDeviceError, match="sharded"):  # no weights=: the refusal stays
        surgeon.plan(meta, x, 0.5)
    with pytest.raises(MetaDeviceError, match="taylor"):
        surgeon.plan(meta, x, 0.5, weights=tmp_path / "in", criterion="taylor", data=[x])
    with pytest.raises(MetaDeviceError, match="verify"):
        surgeon.plan(meta, x, 0.5, weights=tmp_path / "in", verify=True)
    with pytest.raises(CheckpointError, match="neither"):
        surgeon.plan(meta, x, 0.5, weights=tmp_path)
    plan = surgeon.Plan(model="LlamaForCausalLM", target=0.5, metric="flops", criterion="l2", round_to=None,
                        cost_before=1.0, cost_after=0.5, fingerprint="0" * 32)  # made for another model
    with pytest.raises(PlanError, match="fingerprint"):  # refused before anything is written
        surgeon.apply_checkpoint(plan, tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(CheckpointError, match="not an empty folder"):
        surgeon.apply_checkpoint(plan, tmp_path / "in", tmp_path / "full")
    assert main(["apply", str(tmp_path / "nope.json"), str(tmp_path / "in"), str(tmp_path / "o2")]) == 2
