"""Shrink a Hugging Face causal LM (random weights, built from its config) and reload it.

Heads (whole key/value groups under grouped-query attention), MLP units, the hidden size and,
with layers=True, whole decoder layers are pruned in one plan against one FLOPs target: a layer
goes when its Block Influence (how far it turns each token's hidden state, ShortGPT's
1 - cos(h_in, h_out)) is lower, relative to the other layers, than what the channels would
otherwise give up. Pass data=[batch, ...] to measure it on calibration text; without data it is
measured on the example input. The config is rewritten to match (num_hidden_layers and the
per-layer lists such as layer_types), so the result reloads with from_pretrained and generates
with its KV cache.

    python examples/shrink_llm.py
"""

import tempfile

import torch
import transformers

import surgeon
from surgeon.verify import count_flops

torch.manual_seed(0)
config = transformers.LlamaConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                  num_attention_heads=8, num_key_value_heads=4, vocab_size=256,
                                  use_cache=False)  # a returned cache cannot be captured
model = transformers.LlamaForCausalLM(config).eval()
inputs = {"input_ids": torch.randint(0, 256, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
calibration = [{"input_ids": torch.randint(0, 256, (2, 16))} for _ in range(2)]  # real text in practice

plan = surgeon.plan(model, inputs, target=0.5, layers=True, data=calibration)
print(plan.summary().splitlines()[0])

# what each kind of unit gave up, as the config says it (the reloadable description)
changed = {u.attr: (u.old, u.new) for u in plan.config}
for kind, field in (("layers", "num_hidden_layers"), ("query heads", "num_attention_heads"),
                    ("key/value heads", "num_key_value_heads"), ("MLP units", "intermediate_size"),
                    ("hidden width", "hidden_size")):
    old, new = changed.get(field, (getattr(config, field),) * 2)
    print(f"  {kind:<16} {old:>4} -> {new:<4} (gave up {old - new})")
print("  layers dropped:", list(plan.drops))
kept_whole = {d.kind: d.reason for d in plan.decisions if d.kept == d.units and d.reason}
if "head" in kept_whole:
    print("  heads kept whole:", kept_whole["head"])

small = surgeon.apply(model, plan)
print(f"FLOPs kept: {count_flops(small, inputs) / count_flops(model, inputs):.3f}")

with tempfile.TemporaryDirectory() as folder:
    small.save_pretrained(folder)
    again = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
with torch.no_grad():
    same = torch.equal(small(**inputs).logits, again(**inputs).logits)
print("reloaded with from_pretrained, identical logits:", same)

again.config.use_cache = True
tokens = again.generate(inputs["input_ids"][:1, :4], max_new_tokens=8, do_sample=False, use_cache=True)
print("generated", tokens.shape[1] - 4, "tokens with the KV cache:", tokens[0, 4:].tolist())
