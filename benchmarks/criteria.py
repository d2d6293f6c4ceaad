"""Criteria on held-out models: accuracy after pruning to 0.7, 0.5 and 0.3 of the FLOPs, before
and after the same short fine-tune.

    PYTHONPATH=. python benchmarks/criteria.py                 # 6 held-out models x 3 seeds
    PYTHONPATH=. python benchmarks/criteria.py --models plaincnn-8-16-32 --seeds 100 --no-peer

Models: ``surgeon.criteria.gnn.zoo.HELDOUT_SPECS`` (configs and two whole families the GNN never
saw in training) with seeds ``HELDOUT_SEEDS`` (never used in training), trained briefly on the
same packaged data. Methods, all at the same FLOPs target:

* surgeon's planner with the criteria random, l2, taylor, activation (surgeon.criteria's),
  taylor-gnnbase (the GNN's own Taylor, the base it corrects), gnn (the shipped checkpoint,
  with calibration data) and gnn-nomp (its ablation: same features and training, no message
  passing);
* Torch-Pruning 1.6 MetaPruner with GroupMagnitudeImportance(p=2) and GroupTaylorImportance,
  local pruning, the classifier ignored, its channel ratio bisected (7 steps) to land as close
  to the FLOPs target as its ratio allows (on 8-channel layers the FLOPs move in coarse steps).

Calibration data (Taylor, activation, gnn, TP-Taylor): 4 batches of 64 training images.
Fine-tune: Adam 1e-3, 60 steps of 64 training images, the same for every method. Accuracy on
the test split. Paired comparisons over every (model, seed) at 0.5: mean difference, wins,
and a two-sided sign-test p-value. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import surgeon  # noqa: E402
from surgeon.criteria.gnn import ABLATION_CHECKPOINT, CHECKPOINT, GNNCriterion, load, zoo  # noqa: E402
from surgeon.criteria.gnn.features import taylor_scores  # noqa: E402
from surgeon.verify import count_flops  # noqa: E402

TARGETS = (0.7, 0.5, 0.3)
FT_STEPS, FT_LR = 60, 1e-3
HAND = ("random", "l2", "taylor", "activation", "taylor-gnnbase")


class _OwnTaylor:
    """The GNN's base criterion with data: per unit |sum of w * dL/dw| over the unit's slices
    (surgeon.criteria.gnn.features.taylor_scores), so the table shows what the correction adds."""

    name = "taylor-gnnbase"

    def __init__(self, data):
        self.data = data

    def score(self, model, groups):
        return taylor_scores(model, groups, self.data)


def _classifier(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _tp_prune(model, x, kind: str, ratio: float, calib):
    import torch_pruning as tp

    net = copy.deepcopy(model)
    imp = tp.importance.GroupMagnitudeImportance(p=2) if kind == "mag" else tp.importance.GroupTaylorImportance()
    heads = {m: m.num_heads for m in net.modules() if isinstance(m, nn.MultiheadAttention)}
    pruner = tp.pruner.MetaPruner(net, x, imp, pruning_ratio=ratio, ignored_layers=[_classifier(net)],
                                  num_heads=heads, global_pruning=False)
    if kind == "taylor":
        net.zero_grad()
        for xb, yb in calib:
            F.cross_entropy(net(xb), yb).backward()
    pruner.step()
    net.zero_grad(set_to_none=True)
    return net


def tp_at(model, x, kind, target, calib, base_flops, steps=7):
    """Bisect Torch-Pruning's ratio for the FLOPs target; returns (model, flops kept) or (None, reason)."""
    lo, hi, best, err = 0.0, 0.95, None, None
    for _ in range(steps):
        r = (lo + hi) / 2
        try:
            net = _tp_prune(model, x, kind, r, calib)
            got = count_flops(net, x) / base_flops
        except Exception as exc:  # noqa: BLE001 - the peer's failure is a result
            err = f"{type(exc).__name__}: {str(exc)[:60]}"
            hi = r
            continue
        if best is None or abs(got - target) < abs(best[1] - target):
            best = (net, got)
        lo, hi = (r, hi) if got > target else (lo, r)
    return best if best else (None, err)


def finetune(model, xtr, ytr, seed):
    return zoo.fit(model, xtr, ytr, epochs=FT_STEPS * 64 / len(ytr), seed=seed, lr=FT_LR)


def run_model(spec, seed, data, peer: bool, log):
    xtr, ytr, xte, yte = data
    model = zoo.fit(zoo.build(spec, seed), xtr, ytr, zoo.EPOCHS[spec.data], seed)
    x = xtr[:1]
    calib = zoo.batches(xtr, ytr, 64, 4, seed=3000 + seed)
    base_flops = count_flops(model, x)
    acc0 = zoo.accuracy(model, xte, yte)
    methods = {"random": lambda: "random", "l2": lambda: "l2",
               "taylor": lambda: surgeon.criteria.get_criterion("taylor", data=calib),
               "activation": lambda: surgeon.criteria.get_criterion("activation", data=calib),
               "taylor-gnnbase": lambda: _OwnTaylor(calib),
               "gnn": lambda: GNNCriterion(data=calib, net=NETS["gnn"]),
               "gnn-nomp": lambda: GNNCriterion(data=calib, net=NETS["gnn-nomp"])}
    rows = []
    for target in TARGETS:
        for name, crit in methods.items():
            t0 = time.perf_counter()
            try:
                small = surgeon.shrink(model, x, target, criterion=crit())
                got = count_flops(small, x) / base_flops
            except Exception as exc:  # noqa: BLE001
                rows.append((spec.name, seed, target, name, None, None, None, f"{type(exc).__name__}: {exc}"[:80]))
                continue
            before = zoo.accuracy(small, xte, yte)
            after = zoo.accuracy(finetune(small, xtr, ytr, seed), xte, yte)
            rows.append((spec.name, seed, target, name, got, before, after, f"{time.perf_counter() - t0:.1f}s"))
        if peer:
            for kind in ("mag", "taylor"):
                name = f"tp-{'magnitude' if kind == 'mag' else 'taylor'}"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    net, got = tp_at(model, x, kind, target, calib, base_flops)
                if net is None:
                    rows.append((spec.name, seed, target, name, None, None, None, got))
                    continue
                before = zoo.accuracy(net, xte, yte)
                after = zoo.accuracy(finetune(net, xtr, ytr, seed), xte, yte)
                rows.append((spec.name, seed, target, name, got, before, after, ""))
    for r in rows:
        log(f"{r[0]:20s} s{r[1]} t={r[2]} {r[3]:14s} " +
            (f"flops {r[4]:.3f} acc {r[5]:.3f} -> ft {r[6]:.3f}" if r[4] is not None else f"FAIL {r[7]}"))
    return acc0, rows


def sign_test(d: np.ndarray) -> float:
    """Two-sided sign test p-value (ties dropped)."""
    w, l = int((d > 0).sum()), int((d < 0).sum())
    n = w + l
    if n == 0:
        return 1.0
    k = min(w, l)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def summarize(all_rows, methods, log):
    log("\nmean test accuracy over the models x seeds (before fine-tune / after), FLOPs kept")
    log(f"{'method':15s}" + "".join(f" | {t:>5} before  after  flops" for t in TARGETS) + " | fails")
    for m in methods:
        cells, fails = [], 0
        for t in TARGETS:
            rs = [r for r in all_rows if r[3] == m and r[2] == t]
            ok = [r for r in rs if r[4] is not None]
            fails += len(rs) - len(ok)
            if ok:
                cells.append(f" |       {np.mean([r[5] for r in ok]):.3f}  {np.mean([r[6] for r in ok]):.3f}  "
                             f"{np.mean([r[4] for r in ok]):.3f}")
            else:
                cells.append(" |           -      -      -")
        log(f"{m:15s}" + "".join(cells) + f" | {fails}")


def paired(all_rows, a, b, target, col, log):
    key = lambda r: (r[0], r[1])  # noqa: E731
    va = {key(r): r[col] for r in all_rows if r[3] == a and r[2] == target and r[4] is not None}
    vb = {key(r): r[col] for r in all_rows if r[3] == b and r[2] == target and r[4] is not None}
    common = sorted(set(va) & set(vb))
    if not common:
        log(f"{a} vs {b}: no common runs")
        return
    d = np.array([va[k] - vb[k] for k in common])
    what = "before fine-tune" if col == 5 else "after fine-tune"
    log(f"{a:9s} - {b:11s} at {target} ({what}): mean {d.mean():+.4f}, wins {int((d > 0).sum())}/"
        f"{len(d)}, losses {int((d < 0).sum())}, sign-test p = {sign_test(d):.3f}")


NETS: dict = {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="", help="comma-separated held-out spec names (default: all)")
    ap.add_argument("--seeds", default="")
    ap.add_argument("--validation", action="store_true",
                    help="run the training configs with validation seeds instead (for choices made in training)")
    ap.add_argument("--no-peer", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--checkpoint", default=str(CHECKPOINT))
    ap.add_argument("--ablation", default=str(ABLATION_CHECKPOINT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    NETS["gnn"], NETS["gnn-nomp"] = load(args.checkpoint), load(args.ablation)
    pool = zoo.TRAIN_SPECS if args.validation else zoo.HELDOUT_SPECS
    specs = [s for s in pool if not args.models or s.name in args.models.split(",")]
    default = zoo.VALIDATION_SEEDS if args.validation else zoo.HELDOUT_SEEDS
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(default)
    assert not set(seeds) & set(zoo.TRAIN_SEEDS), "evaluation seeds must differ from the training seeds"
    log = (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    all_rows, cache = [], {}
    for spec in specs:
        if spec.data not in cache:
            cache[spec.data] = zoo.load_dataset(spec.data)
        for seed in seeds:
            acc0, rows = run_model(spec, seed, cache[spec.data], not args.no_peer, log)
            log(f"{spec.name:20s} s{seed} unpruned acc {acc0:.3f}")
            all_rows += rows
    methods = list(HAND) + ["gnn", "gnn-nomp"] + ([] if args.no_peer else ["tp-magnitude", "tp-taylor"])
    summarize(all_rows, methods, log)
    log("\npaired comparisons (per model and seed)")
    for target in TARGETS:
        means = {m: np.mean([r[5] for r in all_rows if r[3] == m and r[2] == target and r[4] is not None] or [0])
                 for m in HAND if m != "random"}
        best = max(means, key=means.get)
        log(f"-- target {target}: best hand-made criterion before fine-tune is {best}")
        paired(all_rows, "gnn", best, target, 5, log)
        paired(all_rows, "gnn", "gnn-nomp", target, 5, log)
        paired(all_rows, "gnn", best, target, 6, log)
        paired(all_rows, "gnn", "gnn-nomp", target, 6, log)
    log(f"\n{len(specs)} models x {len(seeds)} seeds in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
