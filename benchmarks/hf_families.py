"""Shrink Hugging Face families at their default configs (no ``use_cache`` or other hand setting).

Each family is built from its config with random weights (seed 0), at small proportions (hidden
64, 4 heads of 16, 2 layers: what tests/test_hf_families.py runs) or realistic ones (hidden 512
and up, heads of 64; BART and T5 with their own FFN ratio of 4, as bart-base and t5-base), and
``surgeon.shrink(model, inputs, target=0.5)`` is checked:

* FLOPs kept, counted by ``torch.utils.flop_counter.FlopCounterMode`` on the same input;
* ``save_pretrained`` then the family's ``from_pretrained``: the max abs logit difference;
* causal LMs: ``generate(max_new_tokens=8, use_cache=True)`` gives 8 new tokens;
* the input model's config (``to_dict()``) and every tensor unchanged.

    PYTHONPATH=. python benchmarks/hf_families.py [--scale small|real] [--families llama,t5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

VOCAB, SEQ, BATCH = 96, 8, 2


@dataclass(frozen=True)
class Scale:
    hidden: int
    heads: int
    layers: int
    ffn: int
    kv_heads: int
    image: int = 32
    patch: int = 8


SMALL = Scale(hidden=64, heads=4, layers=2, ffn=256, kv_heads=2)
REAL = Scale(hidden=512, heads=8, layers=4, ffn=1536, kv_heads=4, image=64, patch=16)
CAUSAL = ("llama", "mistral", "qwen2", "gemma2", "phi", "gpt2", "gpt_neox", "qwen2_moe", "mixtral")


def _text(seq2seq: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=gen)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if seq2seq:
        x["decoder_input_ids"] = ids[:, : SEQ // 2]
    return x


def _configs(s: Scale) -> dict[str, tuple[str, Any, str]]:
    """family -> (model class name, config, input kind)."""
    import transformers as T

    h, n, L, f = s.hidden, s.heads, s.layers, s.ffn
    f4 = 4 * h  # BART's and T5's own FFN ratio (bart-base, t5-base: 3072 for 768)
    llama = dict(hidden_size=h, num_attention_heads=n, num_key_value_heads=s.kv_heads, num_hidden_layers=L,
                 intermediate_size=f, vocab_size=VOCAB, max_position_embeddings=64)
    enc = dict(hidden_size=h, num_attention_heads=n, num_hidden_layers=L, intermediate_size=f, vocab_size=VOCAB,
               max_position_embeddings=64)
    vit = dict(hidden_size=h, num_attention_heads=n, num_hidden_layers=L, intermediate_size=f,
               image_size=s.image, patch_size=s.patch, num_labels=10)
    return {
        "llama": ("LlamaForCausalLM", T.LlamaConfig(**llama), "text"),
        "mistral": ("MistralForCausalLM", T.MistralConfig(**llama), "text"),
        "qwen2": ("Qwen2ForCausalLM", T.Qwen2Config(**llama), "text"),
        "gemma2": ("Gemma2ForCausalLM", T.Gemma2Config(**llama, head_dim=h // n), "text"),
        "phi": ("PhiForCausalLM", T.PhiConfig(**enc), "text"),
        "gpt2": ("GPT2LMHeadModel", T.GPT2Config(vocab_size=VOCAB, n_embd=h, n_layer=L, n_head=n, n_inner=f,
                                                n_positions=64), "text"),
        "gpt_neox": ("GPTNeoXForCausalLM", T.GPTNeoXConfig(**enc), "text"),
        "bert": ("BertForSequenceClassification", T.BertConfig(**enc), "text"),
        "distilbert": ("DistilBertForSequenceClassification", T.DistilBertConfig(
            vocab_size=VOCAB, dim=h, n_layers=L, n_heads=n, hidden_dim=f, max_position_embeddings=64), "text"),
        "roberta": ("RobertaForSequenceClassification", T.RobertaConfig(**dict(enc, max_position_embeddings=72)),
                    "text"),
        "bart": ("BartForConditionalGeneration", T.BartConfig(
            vocab_size=VOCAB, d_model=h, encoder_layers=L, decoder_layers=L, encoder_attention_heads=n,
            decoder_attention_heads=n, encoder_ffn_dim=f4, decoder_ffn_dim=f4, max_position_embeddings=64),
            "seq2seq"),
        "t5": ("T5ForConditionalGeneration", T.T5Config(
            vocab_size=VOCAB, d_model=h, d_kv=h // n, d_ff=f4, num_layers=L, num_heads=n,
            decoder_start_token_id=0), "seq2seq"),
        "vit": ("ViTForImageClassification", T.ViTConfig(**vit), "image"),
        "swin": ("SwinForImageClassification", T.SwinConfig(
            image_size=s.image, patch_size=4, embed_dim=h // 2, depths=[1, 1], num_heads=[n // 2, n],
            window_size=4, num_labels=10), "image"),
        "convnext": ("ConvNextForImageClassification", T.ConvNextConfig(
            num_stages=2, hidden_sizes=[h // 2, h], depths=[1, 1], image_size=s.image, num_labels=10), "image"),
        "qwen2_moe": ("Qwen2MoeForCausalLM", T.Qwen2MoeConfig(
            **dict(llama, moe_intermediate_size=f // 4, shared_expert_intermediate_size=f // 2, num_experts=4,
                   num_experts_per_tok=2)), "text"),
        "mixtral": ("MixtralForCausalLM", T.MixtralConfig(**llama, num_local_experts=4, num_experts_per_tok=2),
                    "text"),
    }


def build(family: str, scale: Scale = SMALL) -> tuple[torch.nn.Module, dict, bool]:
    """The family's model (random weights, seed 0, its default config otherwise), its input and
    whether it is a causal LM."""
    import transformers as T

    cls, config, kind = _configs(scale)[family]
    torch.manual_seed(0)
    model = getattr(T, cls)(config).eval()
    if kind == "image":
        x = {"pixel_values": torch.randn(BATCH, 3, scale.image, scale.image,
                                         generator=torch.Generator().manual_seed(0))}
    else:
        x = _text(kind == "seq2seq")
    return model, x, family in CAUSAL


def families() -> list[str]:
    return list(_configs(SMALL))


def flops(model: torch.nn.Module, x: dict) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**x)
    return counter.get_total_flops()


def logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def reload_diff(small: torch.nn.Module, x: dict) -> float:
    """Max abs logit difference between ``small`` and its save_pretrained / from_pretrained copy."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as d:
        small.save_pretrained(d)
        again = type(small).from_pretrained(d).eval()
    with torch.no_grad():
        return (logits(again(**x)) - logits(small(**x))).abs().max().item()


def generates(small: torch.nn.Module, x: dict) -> bool:
    prompt = x["input_ids"][:1]
    out = small.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8,
                         do_sample=False, use_cache=True, pad_token_id=0)
    return out.shape[1] == prompt.shape[1] + 8


def snapshot(model: torch.nn.Module) -> tuple[dict, dict]:
    return model.config.to_dict(), {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model: torch.nn.Module, snap: tuple[dict, dict]) -> bool:
    config, tensors = snap
    now = model.state_dict()
    return model.config.to_dict() == config and now.keys() == tensors.keys() and \
        all(torch.equal(now[k], v) for k, v in tensors.items())


@dataclass
class Row:
    family: str
    kept: float | None = None
    diff: float | None = None
    generate: bool | None = None
    unchanged: bool | None = None
    seconds: float = 0.0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return (self.kept is not None and abs(self.kept - 0.5) <= 0.01 and self.diff is not None
                and self.diff < 1e-4 and self.generate is not False and bool(self.unchanged))


def run(family: str, scale: Scale, shrink: Callable | None = None) -> Row:
    import surgeon

    row = Row(family)
    model, x, causal = build(family, scale)
    snap = snapshot(model)
    t0 = time.perf_counter()
    try:
        small = (shrink or surgeon.shrink)(model, x, target=0.5)
    except Exception as exc:  # noqa: BLE001 - a refusal is a row of the table
        row.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        row.unchanged = unchanged(model, snap)
        return row
    row.seconds = time.perf_counter() - t0
    row.unchanged = unchanged(model, snap)
    row.kept = flops(small, x) / flops(model, x)
    try:
        row.diff = reload_diff(small, x)
        row.generate = generates(small, x) if causal else None
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=("small", "real"), default="real")
    ap.add_argument("--families", default="", help="comma-separated subset (default: all)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    scale = SMALL if args.scale == "small" else REAL
    names = [f for f in args.families.split(",") if f] or families()
    print(f"scale {args.scale}: {scale}")
    print(f"{'family':<11} {'FLOPs kept':>10} {'reload diff':>11} {'generate':>8} {'unchanged':>9} {'s':>6}  reason")
    rows = []
    for name in names:
        r = run(name, scale)
        rows.append(r)
        fmt = (lambda v, spec: "-" if v is None else format(v, spec))
        print(f"{name:<11} {fmt(r.kept, '10.4f')} {fmt(r.diff, '11.2e')} {fmt(r.generate, '>8')} "
              f"{fmt(r.unchanged, '>9')} {r.seconds:6.1f}  {r.reason}", flush=True)
    print(f"passed {sum(r.ok for r in rows)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
