"""Models that do not fit (issue 18): plan, apply and layer-wise calibration of a >= 3B-parameter
Llama checkpoint on disk, with peak RSS over the checkpoint's size.

The checkpoint (random bf16 weights, one safetensors shard per decoder layer) is written shard
by shard: each layer's tensors are made, saved and freed, so the model is never held. Then each
phase runs in a fresh process and reports its own peak resident set (``VmHWM`` of
``/proc/self/status``); the baseline is a process that imports torch, transformers and surgeon
and builds the model on the meta device. Figures:

    peak / checkpoint bytes        (goal <= 0.25 for plan and apply)
    (peak - baseline) / checkpoint bytes

* ``plan``: ``surgeon.plan(meta_model, x, 0.5, weights=dir)`` (l2, read one tensor at a time);
* ``apply``: ``surgeon.apply_checkpoint(plan, dir, out)`` (shard by shard);
* ``calibrate``: ``surgeon.plan(..., criterion="activation", data=...)``, one layer at a time.

The checkpoint and the output are deleted at the end. About 5-10 minutes and 13 GB of disk on
2 CPU cores:

    python benchmarks/big_checkpoint.py                 # 3.0B parameters, 6.0 GB
    python benchmarks/big_checkpoint.py --tiny          # a 2-layer model: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIG = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
           num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048)
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256)
SEQ, CALIB_BATCHES = 64, 2


def _peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def build(folder: Path, dims: dict) -> tuple[int, int]:
    """Write a random-weight bf16 Llama checkpoint into ``folder``, one layer per shard; returns
    (parameters, bytes)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    cfg = transformers.LlamaConfig(**dims, tie_word_embeddings=False, use_cache=False)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.dtype = torch.bfloat16
    cfg.save_pretrained(folder)
    h, i, v = dims["hidden_size"], dims["intermediate_size"], dims["vocab_size"]
    kv = h // dims["num_attention_heads"] * dims["num_key_value_heads"]
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.empty(shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=gen)

    def layer(n: int) -> dict:
        p = f"model.layers.{n}."
        return {p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
                p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
                p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h),
                p + "mlp.down_proj.weight": rand(h, i),
                p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)}

    makers = [lambda: {"model.embed_tokens.weight": rand(v, h)}]
    makers += [lambda n=n: layer(n) for n in range(dims["num_hidden_layers"])]
    makers += [lambda: {"model.norm.weight": torch.ones(h, dtype=torch.bfloat16), "lm_head.weight": rand(v, h)}]
    weight_map, total, params = {}, 0, 0
    for k, make in enumerate(makers):
        name = f"model-{k + 1:05d}-of-{len(makers):05d}.safetensors"
        tensors = make()
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        for key, t in tensors.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
            params += t.numel()
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return params, total


def _inputs(vocab: int, n: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (1, SEQ), generator=gen)} for _ in range(n)]


def phase(name: str, folder: Path, work: Path) -> dict:
    """One phase, in this (fresh) process; returns its figures."""
    import torch
    import surgeon
    from surgeon.sharded import meta_model

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model = meta_model(folder)
    vocab = model.config.vocab_size
    x = _inputs(vocab, 1, 0)[0]
    if name == "plan":
        surgeon.plan(model, x, 0.5, weights=folder).save(work / "plan.json")
    elif name == "apply":
        w = surgeon.apply_checkpoint(surgeon.Plan.load(work / "plan.json"), folder, work / "out")
        out_bytes = w.total_size
    elif name == "calibrate":
        p = surgeon.plan(model, x, 0.5, weights=folder, criterion="activation", data=_inputs(vocab, CALIB_BATCHES, 1))
        p.save(work / "plan_activation.json")
    res = {"phase": name, "peak": _peak_bytes(), "seconds": time.perf_counter() - t0}
    if name == "apply":
        res["out_bytes"] = out_bytes
    return res


def _run(name: str, folder: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--folder", str(folder), "--work", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model: check that the script runs")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temporary folder)")
    ap.add_argument("--phase", choices=("baseline", "plan", "apply", "calibrate"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, Path(args.folder), Path(args.work))))
        return
    root = Path(tempfile.mkdtemp(prefix="surgeon_big_", dir=args.dir))
    try:
        folder, work = root / "ckpt", root / "work"
        folder.mkdir()
        work.mkdir()
        t0 = time.perf_counter()
        params, size = build(folder, TINY if args.tiny else BIG)
        print(f"checkpoint: {params / 1e9:.2f}B parameters, {size / 2**30:.2f} GiB bf16 in "
              f"{len(list(folder.glob('*.safetensors')))} shards, written in {time.perf_counter() - t0:.0f}s "
              f"(build peak RSS {_peak_bytes() / 2**30:.2f} GiB)")
        base = _run("baseline", folder, work)
        print(f"baseline (python + torch + transformers + surgeon, model on meta): peak RSS "
              f"{base['peak'] / 2**30:.2f} GiB = {base['peak'] / size:.3f}x the checkpoint")
        for name in ("plan", "apply", "calibrate"):
            r = _run(name, folder, work)
            extra = f", output {r['out_bytes'] / 2**30:.2f} GiB" if "out_bytes" in r else ""
            print(f"{name:>9}: peak RSS {r['peak'] / 2**30:.2f} GiB = {r['peak'] / size:.3f}x the checkpoint "
                  f"({(r['peak'] - base['peak']) / size:.3f}x above the baseline), {r['seconds']:.0f}s{extra}")
        same = (work / "plan.json").read_text() == (work / "plan_activation.json").read_text()
        print(f"activation plan {'equals' if same else 'differs from'} the l2 plan")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
