"""How fast the groups page opens on a graph of 5,000+ ops, in headless Chromium (issue 20).

    python benchmarks/viz_scale.py [--layers 80] [--runs 3] [--out /tmp/viz_scale.html]

Builds a Llama from transformers with random weights and enough decoder layers for 5,000 ops
(torch.export capture), writes its page with the target slider, then opens it ``--runs`` times
in a fresh tab and reads the time the page itself writes when drawn (``drawnAt`` in
``#surgeon-status``: milliseconds from navigation start, JSON parse, layout and drawing
included). Then, on the open page, it times one slider move, opening the largest fold, and
"expand all" (every op drawn).
Prints the median of each; the goal is under 2,000 ms to drawn. ``--page`` times a page
written before (by ``--out``), without building the model again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cdp import Browser, find_chromium  # noqa: E402

import surgeon  # noqa: E402


def _llama(layers: int):
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   use_cache=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval(), {"input_ids": torch.randint(0, 256, (1, 16))}


_INTERACT = """(() => {
  const t0 = performance.now(), s = document.getElementById('target');
  s.value = 0; s.dispatchEvent(new Event('input'));
  const t1 = performance.now(), F = window.__surgeon.data.folds;
  const big = [...document.querySelectorAll('#view .node.fold')].map(g => +g.getAttribute('data-fold'))
    .reduce((a, b) => F[b].count > F[a].count ? b : a);
  window.__surgeon.expand(big);
  const t2 = performance.now();
  document.getElementById('expand-all').click();
  return [t1 - t0, t2 - t1, performance.now() - t2];
})()"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=80, help="decoder layers (80: about 5,100 ops)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None, help="where to write the page (default: a temporary folder)")
    ap.add_argument("--page", default=None, help="time this page, written before, instead of making one")
    args = ap.parse_args()
    binary = find_chromium()
    if binary is None:
        sys.exit("no Chromium (Debian: apt-get install -y chromium)")
    tmp = Path(tempfile.mkdtemp())
    out = Path(args.page or args.out or tmp / "viz_scale.html")
    made = 0.0
    if not args.page:
        model, x = _llama(args.layers)
        t0 = time.perf_counter()
        surgeon.visualize(model, x, out)
        made = time.perf_counter() - t0
    data = json.loads(out.read_text().split('id="surgeon-data">', 1)[1].split("</script>", 1)[0])
    drawn, slide, opened, everything = [], [], [], []
    with Browser(binary, tmp / "profile") as b:
        for i in range(args.runs):
            b.events.clear()
            b.open(out.resolve().as_uri() + f"?run={i}")  # a new document each run
            st = json.loads(b.eval("document.getElementById('surgeon-status').textContent"))
            assert st["errors"] == [] and st["drawnAt"], st
            drawn.append(st["drawnAt"])
            s, o, e = b.eval(_INTERACT)
            slide.append(s)
            opened.append(o)
            everything.append(e)
    print(f"{len(data['nodes'])} ops ({data['totals']['hidden']} capture machinery, hidden), "
          f"{len(data['groups'])} groups, {len(data['targets'])} targets; page {out.stat().st_size / 1e6:.1f} MB "
          f"written in {made:.1f}s")
    print(f"first view: {st['visibleNodes']} boxes")
    print(f"drawn after (ms, median of {args.runs}): {statistics.median(drawn):.0f}  runs: "
          + ", ".join(f"{d:.0f}" for d in drawn))
    print(f"slider move (ms): {statistics.median(slide):.1f}; open the largest fold (ms): "
          f"{statistics.median(opened):.1f}; expand all, every op drawn (ms): {statistics.median(everything):.0f}")
    print("goal: drawn under 2000 ms:", "met" if statistics.median(drawn) < 2000 else "NOT met")


if __name__ == "__main__":
    main()
