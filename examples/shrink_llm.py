"""Shrink a Hugging Face causal LM (random weights, built from its config) and reload it.

Heads (whole key/value groups under grouped-query attention), MLP units, the hidden size and,
with layers=True, whole decoder layers are pruned; the config is rewritten to match, so the
result reloads with from_pretrained and generates with its KV cache.

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

plan = surgeon.plan(model, inputs, target=0.5, layers=True)
print(plan.summary().splitlines()[0])
print("config changes:", {u.attr: (u.old, u.new) for u in plan.config}, "layers dropped:", list(plan.drops))

small = surgeon.apply(model, plan)
print(f"FLOPs kept: {count_flops(small, inputs) / count_flops(model, inputs):.3f}")

with tempfile.TemporaryDirectory() as folder:
    small.save_pretrained(folder)
    again = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
with torch.no_grad():
    same = torch.equal(small(**inputs).logits, again(**inputs).logits)
print("reloaded with from_pretrained, identical logits:", same)

tokens = again.generate(inputs["input_ids"][:1, :4], max_new_tokens=8, do_sample=False, use_cache=True)
print("generated", tokens.shape[1] - 4, "tokens with the KV cache:", tokens[0, 4:].tolist())
