"""Shrink a model that does not fit in memory: plan it on the meta device from its checkpoint
folder, then apply the plan shard by shard into a new folder that ``from_pretrained`` loads.

    python examples/shrink_from_checkpoint.py

Only shapes are ever built here: the scores are read from the safetensors shards one tensor at a
time, and ``surgeon apply`` (or ``surgeon.apply_checkpoint``) streams the shards. A small random
Llama stands in for the big one; the same calls work on a folder written by ``save_pretrained``.
On the command line, the second step is ``surgeon apply plan.json IN_DIR OUT_DIR``.
"""

import tempfile
from pathlib import Path

import torch
import transformers

import surgeon
from surgeon.sharded import meta_model


def main() -> None:
    transformers.logging.set_verbosity_error()
    root = Path(tempfile.mkdtemp())
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128, use_cache=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(root / "dense", max_shard_size="200KB")  # the "big" one

    model = meta_model(root / "dense")  # on the meta device: no weights in memory
    x = torch.randint(0, 128, (1, 16))
    plan = surgeon.plan(model, x, target=0.5, weights=root / "dense")
    plan.save(root / "plan.json")
    written = surgeon.apply_checkpoint(plan, root / "dense", root / "small")
    print(f"planned from {len(list((root / 'dense').glob('*.safetensors')))} shards without loading them; "
          f"wrote {len(written.shards)} shards ({written.total_size // 1024} KiB)")

    small = transformers.LlamaForCausalLM.from_pretrained(root / "small").eval()
    with torch.no_grad():
        logits = small(x).logits
    print(f"reloaded with from_pretrained: hidden {small.config.hidden_size}, MLP {small.config.intermediate_size}, "
          f"{sum(p.numel() for p in small.parameters()):,} parameters, logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
