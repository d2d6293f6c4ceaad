"""How the time to halve a model's FLOPs grows with depth: surgeon vs Torch-Pruning (DepGraph).

The model is a residual MLP, ``depth`` blocks of ``x + Linear(4d, d)(ReLU(Linear(d, 4d)(LayerNorm(d)(x))))``
with d=64 and an input of shape (8, 64). Per depth, with one thread, engines interleaved,
``--repeats`` runs each (fresh copies), median time; ours/theirs is the median of the per-pair
ratios (each pair runs back to back, so load on a shared machine drifts less within a pair; the heap
is collected, untimed, before every run, so neither engine pays for collecting the other's garbage):

* ours:   ``surgeon.shrink(model, x, target=0.5)`` (includes its own FLOPs check of the result);
* theirs: Torch-Pruning ``MetaPruner`` (DependencyGraph build) + ``pruner.step()`` at pruning
  ratio 0.5 with ``GroupMagnitudeImportance(p=2)`` and the last Linear in ``ignored_layers`` (which
  keeps the residual stream, and so the output shape, whole). The ratio is not searched: only the
  hidden widths are pruned, so it lands near 0.5 of the FLOPs (here exactly, 256 -> 128 per
  block); the measured fraction is printed for both engines.

    PYTHONPATH=. python benchmarks/scaling.py [--depths 25,100,400] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import io
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import surgeon  # noqa: E402
from surgeon.verify import count_flops  # noqa: E402

WIDTH, BATCH, TARGET = 64, 8, 0.5


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


def build(depth: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(*[Block(WIDTH) for _ in range(depth)]).eval()
    return model, torch.randn(BATCH, WIDTH)


def time_ours(model: nn.Module, x: torch.Tensor) -> tuple[float, nn.Module]:
    t0 = time.perf_counter()
    small = surgeon.shrink(model, x, target=TARGET)
    return time.perf_counter() - t0, small


def time_theirs(model: nn.Module, x: torch.Tensor) -> tuple[float, nn.Module]:
    import torch_pruning as tp

    net = copy.deepcopy(model)  # Torch-Pruning prunes in place; the copy is not timed
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(net, x, tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=TARGET, ignored_layers=[net[-1].fc2],
                                  global_pruning=False)
    pruner.step()
    return time.perf_counter() - t0, net


def measure(depth: int, repeats: int, peer: bool) -> dict:
    """Median seconds per engine at one depth, and the FLOPs fraction each result keeps."""
    model, x = build(depth)
    base = count_flops(model, x)
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    kept: dict[str, float] = {}
    engines = {"ours": time_ours, "theirs": time_theirs} if peer else {"ours": time_ours}
    for r in range(repeats):
        order = list(engines) if r % 2 == 0 else list(engines)[::-1]
        for name in order:
            small = None  # the previous result goes first: neither engine times collecting the other's garbage
            gc.collect()
            seconds, small = engines[name](model, x)
            times[name].append(seconds)
            kept[name] = count_flops(small, x) / base
    pairs = {"pair_ratio": statistics.median(a / b for a, b in zip(times["ours"], times["theirs"]))} if peer else {}
    return {"depth": depth, **{k: statistics.median(v) for k, v in times.items() if v},
            **{f"kept_{k}": v for k, v in kept.items()}, **pairs}


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    print(f"{'depth':>6s} {'ours (s)':>9s} {'theirs (s)':>10s} {'ours/theirs':>11s} "
          f"{'FLOPs kept ours':>15s} {'FLOPs kept theirs':>17s}")
    for r in rows:
        ratio = r.get("pair_ratio")  # the median of the per-pair ratios (each pair run back to back)
        print(f"{r['depth']:>6d} {fmt(r['ours']):>9s} {fmt(r.get('theirs')):>10s} "
              f"{fmt(ratio):>11s} {fmt(r.get('kept_ours'), '.4f'):>15s} "
              f"{fmt(r.get('kept_theirs'), '.4f'):>17s}")
    first, last = rows[0], rows[-1]
    span = f"depth{last['depth']}/depth{first['depth']}"
    for engine in ("ours", "theirs"):
        if engine in first:
            print(f"growth {span} {engine:6s}: {last[engine] / first[engine]:.1f}x "
                  f"(depth grew {last['depth'] / first['depth']:.0f}x)")


def verdict(rows: list[dict]) -> None:
    """The goal from the issue: at most linear growth (depth 400 within 20x of depth 25, i.e.
    1.25 x the depth ratio) and under a tenth of theirs at the deepest model."""
    first, last = rows[0], rows[-1]
    growth = last["ours"] / first["ours"]
    bound = 1.25 * last["depth"] / first["depth"]
    print(f"goal: ours growth <= {bound:g}x (1.25 x the depth ratio): "
          f"{'met' if growth <= bound else 'NOT met'} ({growth:.1f}x)")
    if "theirs" in last:
        share = last["pair_ratio"]
        print(f"goal: ours < 0.1 x theirs at depth {last['depth']}: "
              f"{'met' if share < 0.1 else 'NOT met'} ({share:.3f})")


def profile(depth: int, top: int) -> None:
    model, x = build(depth)
    prof = cProfile.Profile()
    prof.enable()
    surgeon.shrink(model, x, target=TARGET)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    print(f"\ncProfile of surgeon.shrink at depth {depth} (top {top} by cumulative time):")
    print(out.getvalue())


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default="25,100,400", help="comma-separated depths (default 25,100,400)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per engine and depth (median)")
    ap.add_argument("--no-peer", action="store_true", help="time surgeon only")
    ap.add_argument("--profile", action="store_true",
                    help="also print a cProfile of surgeon.shrink at the largest depth")
    ap.add_argument("--top", type=int, default=30, help="rows of the profile to print")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    depths = [int(d) for d in args.depths.split(",")]
    measure(2, 1, not args.no_peer)  # warm-up: one-off import and dispatch costs
    print(f"residual MLP d={WIDTH}, input ({BATCH}, {WIDTH}), target {TARGET} of FLOPs, "
          f"1 thread, engines interleaved, median of {args.repeats}; theirs = DependencyGraph "
          f"build + pruner.step at ratio {TARGET}, not searched (FLOPs kept are printed)\n")
    rows = []
    for depth in depths:
        rows.append(measure(depth, args.repeats, not args.no_peer))
        print(f"  depth {depth} done", file=sys.stderr, flush=True)
    print_table(rows)
    verdict(rows)
    if args.profile:
        profile(depths[-1], args.top)


if __name__ == "__main__":
    main()
