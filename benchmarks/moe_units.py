"""What each kind of unit gives up when a mixture-of-experts model shrinks to half its FLOPs.

Mixtral and Qwen2-MoE (transformers 5, stacked experts run by ``torch._grouped_mm``), built
from configs with random weights at modest but realistic proportions (head_dim 64), shrunk with
``target=0.5`` by L2 magnitude and by the router criterion (router-weighted activation norms on
a few random calibration batches). For every kind of unit (whole experts, expert intermediate
width, shared expert, attention heads, MLP units, layers) the table gives its units before and
after, and the share of the dense FLOPs and parameters that cutting that kind alone removes (by
the cost model; kinds interact through products, so the shares need not add up). The last
columns are the FLOPs kept as ``FlopCounterMode`` counts them with the experts, under the
``grouped_mm`` and the ``batched_mm`` implementations, and whether the result reloads with
identical logits.

    python benchmarks/moe_units.py            # both families, both criteria (a few minutes)
    python benchmarks/moe_units.py --small    # the test-sized configs (seconds)
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch

import surgeon
from surgeon.analysis.moe import MOE_KINDS, unit_kinds
from surgeon.api import shrink_landing
from surgeon.options import ShrinkConfig
from surgeon.verify import count_flops

warnings.filterwarnings("ignore")


def configs(small: bool):
    import transformers as T

    h, layers, vocab = (64, 2, 128) if small else (512, 4, 2000)
    heads = max(2, h // 64) if not small else 4
    qwen = T.Qwen2MoeConfig(vocab_size=vocab, hidden_size=h, intermediate_size=2 * h, num_hidden_layers=layers,
                            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), num_experts=8,
                            num_experts_per_tok=2, moe_intermediate_size=h // 2 if not small else 64,
                            shared_expert_intermediate_size=2 * h)
    mixtral = T.MixtralConfig(vocab_size=vocab, hidden_size=h, intermediate_size=2 * h, num_hidden_layers=layers,
                              num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                              num_local_experts=8, num_experts_per_tok=2)
    return {"Qwen2-MoE": (T.Qwen2MoeForCausalLM, qwen), "Mixtral": (T.MixtralForCausalLM, mixtral)}, vocab


def _inputs(vocab: int, seed: int, seq: int) -> dict:
    ids = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def given_up(a, kept: dict[int, int]) -> dict[str, tuple[int, int, float, float]]:
    """Per kind: (units before, units after, FLOPs share removed alone, params share removed alone)."""
    kinds = unit_kinds(a)
    flops, params = a.cost("flops"), a.cost("params")
    out = {}
    for kind in MOE_KINDS:
        gis = [gi for gi, k in enumerate(kinds) if k == kind and a.groups[gi].prunable]
        if not gis:
            continue
        keep = a.full_keep()
        for gi in gis:  # counts decide the cost of these groups (their units are alike)
            keep[gi][kept.get(a.groups[gi].id, a.groups[gi].n_units):] = False
        before = sum(a.groups[gi].n_units for gi in gis)
        after = sum(int(keep[gi].sum()) for gi in gis)
        out[kind] = (before, after, 1 - flops.total(keep) / flops.base, 1 - params.total(keep) / params.base)
    return out


def run_one(name: str, cls, cfg, vocab: int, criterion: str, seq: int) -> None:
    torch.manual_seed(0)
    m = cls(cfg).eval()
    x = _inputs(vocab, 0, seq)
    t0 = time.perf_counter()
    a = surgeon.analyze(m, x)
    data = [_inputs(vocab, s, seq) for s in range(1, 5)] if criterion == "router" else None
    landing = shrink_landing(m, x, ShrinkConfig.of(target=0.5, criterion=criterion, data=data), a)
    small, plan = landing.model, landing.plan
    secs = time.perf_counter() - t0
    kept = {d.group: d.kept for d in plan.decisions}
    rows = given_up(a, kept)
    counted = {}
    for impl in ("grouped_mm", "batched_mm"):
        m.set_experts_implementation(impl)
        small.set_experts_implementation(impl)
        counted[impl] = count_flops(small, x) / count_flops(m, x)
    m.set_experts_implementation("grouped_mm")
    small.set_experts_implementation("grouped_mm")
    with tempfile.TemporaryDirectory() as d:
        small.save_pretrained(d)
        again = cls.from_pretrained(d).eval()
    with torch.no_grad():
        diff = float((small(**x).logits - again(**x).logits).abs().max())
    print(f"\n{name}, criterion={criterion}: shrink {secs:.1f} s; FLOPs kept (FlopCounterMode, with the experts): "
          f"grouped_mm {counted['grouped_mm']:.4f}, batched_mm {counted['batched_mm']:.4f}; "
          f"reload max |diff| {diff:.1e}")
    print(f"  {'unit kind':<15}{'units before':>13}{'after':>8}{'removed':>9}{'FLOPs given up':>16}"
          f"{'params given up':>17}")
    for kind, (b, k, f, p) in rows.items():
        print(f"  {kind:<15}{b:>13}{k:>8}{1 - k / b:>9.0%}{f:>16.1%}{p:>17.1%}")
    e = small.model.layers[0].mlp.experts
    fields = ("num_experts", "num_local_experts", "moe_intermediate_size", "intermediate_size",
              "shared_expert_intermediate_size")
    config = {k: v for k, v in small.config.to_dict().items() if k in fields}
    print(f"  layer 0 experts: gate_up_proj {tuple(e.gate_up_proj.shape)}, config {config}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="test-sized configs")
    ap.add_argument("--criteria", default="l2,router")
    args = ap.parse_args()
    families, vocab = configs(args.small)
    seq = 16 if args.small else 64
    for name, (cls, cfg) in families.items():
        for crit in args.criteria.split(","):
            run_one(name, cls, cfg, vocab, crit, seq)


if __name__ == "__main__":
    main()
