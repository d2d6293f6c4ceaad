"""Audit the ops that Hugging Face families produce on the capture path the engine takes, and
what freezes their widths.

    python benchmarks/export_op_audit.py            # every family
    python benchmarks/export_op_audit.py llama t5   # some

Each family is built from a small config with random weights and ``use_cache=False``, captured
as ``surgeon.analyze`` does (torch.fx first, torch.export as the fallback; all of these take the
fallback) and coupled without the config constraints (``uniform=False``), so what is printed is
what the coupling rules say. Per family: the capture mode, every op with no coupling rule (with
how often it occurs), and every frozen group with its reason (width and count). A last line
sums the ops without rules, the frozen groups whose reason is a missing rule (no rule, a dim a
rule does not state, a literal size) and the prunable groups.
"""

from __future__ import annotations

import collections
import re
import sys
import time

import torch

SEQ, BATCH, VOCAB = 8, 2, 96


def _text():
    gen = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen),
            "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long)}


def _pixels(size: int = 32):
    return {"pixel_values": torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))}


def families() -> dict:
    """name -> (model class, config, inputs maker)."""
    import transformers as T

    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                 vocab_size=VOCAB, max_position_embeddings=64)
    gqa = dict(small, num_key_value_heads=2)
    return {
        "llama": (T.LlamaForCausalLM, T.LlamaConfig(**gqa), _text),
        "mistral": (T.MistralForCausalLM, T.MistralConfig(**gqa), _text),
        "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config(**gqa), _text),
        "qwen2_moe": (T.Qwen2MoeForCausalLM, T.Qwen2MoeConfig(
            **gqa, moe_intermediate_size=64, shared_expert_intermediate_size=128, num_experts=4,
            num_experts_per_tok=2), _text),
        "mixtral": (T.MixtralForCausalLM, T.MixtralConfig(**gqa, num_local_experts=4,
                                                          num_experts_per_tok=2), _text),
        "gemma2": (T.Gemma2ForCausalLM, T.Gemma2Config(**gqa, head_dim=16), _text),
        "phi": (T.PhiForCausalLM, T.PhiConfig(**small), _text),
        "gpt2": (T.GPT2LMHeadModel, T.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                 n_positions=64), _text),
        "gpt_neox": (T.GPTNeoXForCausalLM, T.GPTNeoXConfig(**small), _text),
        "bert": (T.BertForSequenceClassification, T.BertConfig(**small), _text),
        "distilbert": (T.DistilBertForSequenceClassification, T.DistilBertConfig(
            vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=256,
            max_position_embeddings=64), _text),
        "roberta": (T.RobertaForSequenceClassification, T.RobertaConfig(**small), _text),
        "bart": (T.BartForConditionalGeneration, T.BartConfig(
            vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
            max_position_embeddings=64), _text),
        "t5": (T.T5ForConditionalGeneration, T.T5Config(
            vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4,
            decoder_start_token_id=0), _t5_inputs),
        "vit": (T.ViTForImageClassification, T.ViTConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            image_size=32, patch_size=8, num_labels=10), _pixels),
        "swin": (T.SwinForImageClassification, T.SwinConfig(
            image_size=32, patch_size=4, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4,
            num_labels=10), _pixels),
        "convnext": (T.ConvNextForImageClassification, T.ConvNextConfig(
            num_stages=2, hidden_sizes=[32, 64], depths=[1, 1], num_labels=10, image_size=32), _pixels),
    }


def _t5_inputs():
    d = _text()
    d["decoder_input_ids"] = d["input_ids"][:, :6]  # a length that is no other width (n_heads)
    return d


_MISSING = re.compile(r"no coupling rule|does not say how|tied to no parameter|hard-codes width"
                      r"|literal groups|written in the code|sizes are written|writes size")


def audit(name: str, cls, config, inputs) -> dict:
    import surgeon
    from surgeon.graph.rules import lookup

    torch.manual_seed(0)
    config.use_cache = False
    model = cls(config).eval()
    x = inputs()
    t0 = time.perf_counter()
    a = surgeon.analyze(model, x, uniform=False)
    no_rule = collections.Counter()
    for node in a.traced.graph.nodes:
        if node.op in ("call_function", "call_method", "call_module") \
                and a.traced.info.get(node.name) is not None and a.traced.info[node.name].shape is not None:
            rule, what = lookup(node, a.traced)
            if rule is None:
                no_rule[what] += 1
    frozen = collections.Counter()
    missing = 0
    for g in a.groups:
        if g.reason is None or g.n_units <= 1:
            continue
        reason = re.sub(r"node '[^']*'", "node", g.reason)
        reason = re.sub(r"layers\.\d+|layer\.\d+|h\.\d+|block\.\d+|stages\.\d+|layers\.\d+", "*", reason)
        frozen[(g.n_units, reason[:150])] += 1
        missing += bool(_MISSING.search(g.reason))
    prunable = sum(1 for g in a.groups if g.reason is None and g.n_units > 1)
    return dict(mode=a.traced.mode, no_rule=no_rule, frozen=frozen, missing=missing, prunable=prunable,
                seconds=time.perf_counter() - t0)


def main(argv: list[str]) -> None:
    torch.set_num_threads(2)
    fams = families()
    names = argv or list(fams)
    totals = collections.Counter()
    for name in names:
        cls, config, inputs = fams[name]
        try:
            r = audit(name, cls, config, inputs)
        except Exception as exc:  # noqa: BLE001 - a failed capture is part of the audit
            print(f"== {name}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
            totals["failed"] += 1
            continue
        print(f"== {name}: {r['mode']} capture, {r['prunable']} prunable groups, "
              f"{sum(r['no_rule'].values())} nodes without a rule, {r['missing']} groups frozen "
              f"by a missing rule ({r['seconds']:.1f} s)")
        for what, n in sorted(r["no_rule"].items()):
            print(f"   no rule: {what} x{n}")
        for (width, reason), n in sorted(r["frozen"].items(), key=lambda kv: -kv[0][0]):
            print(f"   frozen  {width:5d} x{n}: {reason}")
        totals["op kinds without a rule"] += len(r["no_rule"])
        totals["nodes without a rule"] += sum(r["no_rule"].values())
        totals["groups frozen by a missing rule"] += r["missing"]
        totals["prunable groups"] += r["prunable"]
    print("TOTAL " + ", ".join(f"{k}: {v}" for k, v in totals.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
