"""Peak memory of ``surgeon.plan`` and ``surgeon.shrink`` over the size of the model's weights.

Each measurement runs in a fresh process: the model is built (random weights), then the call
runs while a sampler records the process's resident set; the figure is

    (peak RSS during the call - RSS before the model was built) / bytes of the weights,

so the model as built counts (1.08x its weights for the Llama: the allocator keeps some of what
initialisation used) and torch's own import does not; ``added`` is what the call itself added,
(peak - RSS after the build) / weights. Goals (issue 13):
``shrink`` <= 1.5x and ``plan`` <= 1.15x on a >= 600M-parameter Llama.

``shrink`` returns a new model beside the user's, so its floor is the model plus the result
(about 1.0 + 0.52 of the weights at target 0.5, before activations). ``shrink-inplace``
(``inplace=True``, the call for a model that barely fits) reshapes the model itself: its trial cuts
are hollow (see ``surgeon.slicing.hollow``), so no second copy of the weights is ever made.

    python benchmarks/memory.py                 # llama-600m and resnet50, plan and shrink
    python benchmarks/memory.py --models resnet50 --calls plan
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

GOALS = {"shrink": 1.5, "shrink-inplace": 1.5, "plan": 1.15}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _build(name: str):
    import torch

    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224)
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=1536, intermediate_size=4096,
                                   num_hidden_layers=20, num_attention_heads=12, num_key_value_heads=4,
                                   max_position_embeddings=256, use_cache=False)
    with torch.device("cpu"):
        model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 32000, (1, 32))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def measure(name: str, call: str) -> dict:
    """In this process: build, run ``call``, return the figures."""
    import torch

    import surgeon

    torch.set_num_threads(2)
    base = _rss()
    model, x = _build(name)
    weights = sum(t.numel() * t.element_size() for t in {id(t): t for t in
                  list(model.parameters()) + list(model.buffers())}.values())
    built = _rss()
    peak, done = [built], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    if call == "shrink-inplace":  # the model itself takes the pruned shapes: no second copy
        surgeon.shrink(model, x, 0.5, inplace=True)
    else:
        getattr(surgeon, call)(model, x, 0.5)
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    peak[0] = max(peak[0], _rss())
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "call": call, "params": params, "weights_gb": weights / 1e9,
            "model_x": (built - base) / weights, "peak_x": (peak[0] - base) / weights,
            "added_x": (peak[0] - built) / weights, "seconds": seconds}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="llama-600m,resnet50")
    ap.add_argument("--calls", default="plan,shrink")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # the child: MODEL CALL
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one)))
        return
    print(f"{'model':12s} {'call':7s} {'params':>8s} {'weights':>8s} {'peak/weights':>12s} {'added':>6s} "
          f"{'goal':>5s} {'s':>6s}")
    for name in args.models.split(","):
        for call in args.calls.split(","):
            out = subprocess.run([sys.executable, __file__, "--one", name, call], capture_output=True, text=True)
            if out.returncode:
                print(f"{name:12s} {call:7s} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            goal = GOALS[call]
            print(f"{name:12s} {call:7s} {r['params'] / 1e6:7.0f}M {r['weights_gb']:7.2f}G {r['peak_x']:11.2f}x "
                  f"{r['added_x']:5.2f}x {goal:5.2f} {r['seconds']:6.1f}  {'met' if r['peak_x'] <= goal else 'NOT met'}")


if __name__ == "__main__":
    main()
