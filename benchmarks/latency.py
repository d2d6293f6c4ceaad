"""Is the shrunk model faster? Dense vs surgeon vs Torch-Pruning at half the FLOPs, per runtime.

For each model (random weights, input 1x3x224x224) this builds, in one process:

* ``dense``: the model itself;
* ``surgeon``: ``surgeon.shrink(model, x, target=0.5)`` (the default: no runtime named);
* ``surgeon ort``: ``shrink(..., target=0.5, runtime="ort-cpu")``: the same FLOPs target planned
  for onnxruntime CPU: widths rounded to its block (``round_to="auto"``: multiples of 16 on
  AVX-512), and the faster (timed) of two plans, units ranked by score alone or by the measured
  milliseconds they save per FLOP;
* ``surgeon lat``: ``shrink(..., target=0.5, metric="latency", runtime="ort-cpu")``: half of the
  dense latency on onnxruntime CPU, 1 thread (planned against measured layer tables);
* ``TP``, ``TP r8`` and ``TP r16``: Torch-Pruning's magnitude pruner (``benchmarks/zoo.py``'s
  setting: local GroupMagnitudeImportance(p=2), classifier ignored) without rounding and with
  ``round_to=8`` and ``16``, at the channel ratio whose FLOPs land nearest 0.5 (bisection,
  ``zoo.tp_search``). Uniform rounding cannot land every model on 0.5 (ResNet-50 with
  ``round_to=16`` jumps from 0.45 to above 0.5, MobileNet-V2 lands 0.48);
* ``surgeon @TP r16`` and ``surgeon ort @TP r16`` (and so on): ``shrink(target=f)`` and
  ``shrink(target=f, runtime="ort-cpu")`` at the FLOPs ``f`` that a Torch-Pruning setting landed
  on, for each setting further than ``SAME_FLOPS`` from the target, so that every peer setting
  is compared with ours at its own FLOPs.

and times them all in alternation (dense, a, b, ..., rotated every round) on:

* onnxruntime CPU, 1 thread: the calling thread's CPU time (the runtime the planner measures;
  see ``surgeon.latency.runtime``), and the wall clock as a second pass;
* onnxruntime CPU, all threads: wall clock;
* PyTorch fp16 eager on CUDA at batch 1, 64 and 256 (channels_last, cudnn.benchmark, CUDA
  events), when a GPU is visible; otherwise those rows are skipped and the script says so.

Each figure is the median of the per-round ratios variant/dense (speedup = 1 / that), with the
interquartile range of those ratios as the noise. Nothing is asserted; the ``check`` lines at
the end say which of the issue's acceptance points the run met.

    PYTHONPATH=. python benchmarks/latency.py [--models resnet50,mobilenet_v2] [--rounds 30]
        [--no-peer] [--no-latency-metric]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import surgeon  # noqa: E402
from surgeon.latency.runtime import interleaved, runner  # noqa: E402
from surgeon.verify import count_flops  # noqa: E402
from zoo import build, head_of, tp_prune, tp_search  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2", "convnext_tiny", "vit_b_16")
ACCEPT = ("resnet50", "mobilenet_v2", "convnext_tiny")
TARGET = 0.5
SAME_FLOPS = 0.01  # a peer setting within this of TARGET is compared with ours at TARGET (shrink's own landing)


def variants(name: str, model, x, args) -> dict[str, torch.nn.Module]:
    out = {"dense": model}
    for label, kw in (("surgeon", {}), ("surgeon ort", {"runtime": "ort-cpu"}),
                      ("surgeon lat", {"metric": "latency", "runtime": "ort-cpu"})):
        if label == "surgeon lat" and args.no_latency_metric:
            continue
        t0 = time.perf_counter()
        out[label] = surgeon.shrink(model, x, target=TARGET, **kw)
        print(f"  {label:12s} shrink {time.perf_counter() - t0:6.1f} s", flush=True)
    if torch.cuda.is_available():
        out["surgeon cuda"] = surgeon.shrink(model, x, target=TARGET, runtime="torch-cuda")
    if not args.no_peer:
        base = count_flops(model, x)
        for label, kw in (("TP", {}), ("TP r8", {"round_to": 8}), ("TP r16", {"round_to": 16})):
            t0 = time.perf_counter()
            try:
                ratio, _ = tp_search(model, x, base, [head_of(name, model)], args.tp_steps, 300.0, **kw)
                out[label] = tp_prune(model, x, ratio, [head_of(name, model)], **kw)[0].eval()
                print(f"  {label:12s} ratio search {time.perf_counter() - t0:6.1f} s (r={ratio:.4f})", flush=True)
            except Exception as exc:  # noqa: BLE001 - a peer failure is a result
                print(f"  {label:12s} failed: {type(exc).__name__}: {str(exc)[:100]}", flush=True)
                continue
            f = count_flops(out[label], x) / base
            if abs(f - TARGET) > SAME_FLOPS:  # ours at the peer's FLOPs, for a like-for-like comparison
                out[f"surgeon @{label}"] = surgeon.shrink(model, x, target=f)
                out[f"surgeon ort @{label}"] = surgeon.shrink(model, x, target=f, runtime="ort-cpu")
    return out


def time_all(models: dict, x, runtime: str, rounds: int, threads: int = 1,
             clock: str = "wall") -> dict[str, tuple[float, float, float]]:
    """label -> (median ms, median ratio to dense, IQR of that ratio), all timed interleaved."""
    labels = list(models)
    runs = [runner(models[k], x, runtime, threads) for k in labels]
    t = interleaved(runs, runtime, rounds=rounds, warmup=2, clock=clock)
    return {k: (ms, 1.0 if i == 0 else t.ratios[i - 1], 0.0 if i == 0 else t.spread[i - 1])
            for i, (k, ms) in enumerate(zip(labels, t.ms))}


def timed_rows(models: dict, x, args) -> dict[str, dict]:
    """column name -> label -> (ms, ratio, iqr)."""
    n = os.cpu_count() or 1
    cols = {"ort 1t cpu": time_all(models, x, "ort-cpu", args.rounds, 1, "cpu"),
            "ort 1t wall": time_all(models, x, "ort-cpu", max(10, args.rounds // 2), 1),
            f"ort {n}t wall": time_all(models, x, "ort-cpu", max(10, args.rounds // 2), n)}
    if torch.cuda.is_available():
        for b in (1, 64, 256):
            xb = x.expand(b, *x.shape[1:]).contiguous()
            cols[f"cuda b{b}"] = time_all(models, xb, "torch-cuda", args.rounds)
    return cols


def report(name: str, flops: dict, cols: dict) -> None:
    head = f"{'':20s} {'FLOPs':>6s} " + " ".join(f"{c:>24s}" for c in cols)
    print(head)
    for label in flops:
        cells = []
        for c in cols.values():
            ms, r, s = c[label]
            cells.append(f"{ms:8.2f} ms {1 / r:5.2f}x ±{s / r / r if r else 0:4.2f}")
        print(f"{label:20s} {flops[label]:6.3f} " + " ".join(f"{c:>24s}" for c in cells))


def checks(results: dict) -> None:
    print("\nchecks (ort 1t cpu = onnxruntime CPU, 1 thread, thread CPU time, interleaved):")
    for name, (flops, cols) in results.items():
        col = cols["ort 1t cpu"]
        speed = {k: 1 / v[1] for k, v in col.items()}
        for label in ("surgeon", "surgeon ort"):
            if name not in ACCEPT or label not in col:
                continue
            ok, vs = speed[label] >= 1.6, []
            for k in (k for k in col if k.startswith("TP")):  # each peer setting at its own FLOPs
                ours = label if abs(flops[k] - TARGET) <= SAME_FLOPS else f"{label} @{k}"
                if ours not in col:
                    continue
                ok &= speed[ours] >= speed[k]
                at = "" if ours == label else f" at {flops[k]:.3f} FLOPs: ours {speed[ours]:.2f}x"
                vs.append(f"{k} {speed[k]:.2f}x{at}")
            print(f"  {name:14s} {label:12s} {speed[label]:5.2f}x vs dense (>= 1.6x) and >= "
                  f"{'; '.join(vs) or 'no peer'}: {'met' if ok else 'NOT met'}")
        slower = [(label, c) for c, col_ in cols.items() for label, (_, r, _) in col_.items()
                  if label != "dense" and not label.startswith("TP") and r > 1.0]
        print(f"  {name:14s} shrunk slower than dense on some runtime: "
              f"{', '.join(f'{lb} on {c}' for lb, c in slower) or 'none'}")
        if "surgeon lat" in col:
            r = col["surgeon lat"][1]
            print(f"  {name:14s} metric='latency' target 0.5 measured {r:.3f} of dense on ort 1t: "
                  f"{'within' if abs(r / TARGET - 1) <= 0.1 else 'NOT within'} 10%")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds per runtime (default 30)")
    ap.add_argument("--no-peer", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--no-latency-metric", action="store_true", help="skip the metric='latency' variant")
    ap.add_argument("--tp-steps", type=int, default=10)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"target {TARGET} of the FLOPs; onnxruntime CPU ({os.cpu_count()} cores), "
          f"{args.rounds} interleaved rounds; speedup = 1 / median(variant/dense per round) ± IQR")
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: the torch-cuda rows (fp16 eager, batch 1/64/256) are skipped")
    results = {}
    for name in args.models.split(","):
        print(f"\n== {name}", flush=True)
        model, x = build(name)
        try:
            models = variants(name, model, x, args)
            base = count_flops(model, x)
            flops = {k: count_flops(m, x) / base for k, m in models.items()}
            cols = timed_rows(models, x, args)
        except Exception as exc:  # noqa: BLE001 - one model's failure is a result, not the end
            print(f"  {name} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            continue
        report(name, flops, cols)
        results[name] = (flops, cols)
    checks(results)


if __name__ == "__main__":
    main()
