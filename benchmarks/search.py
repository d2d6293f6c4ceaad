"""Searched allocation (``surgeon.search``) against the default plan at the same FLOPs, before recovery.

Models: small networks of ``surgeon.criteria.gnn.zoo`` on packaged data (Fashion-MNIST from
Debian's ``dataset-fashion-mnist``, scikit-learn's digits), each trained briefly as the zoo trains
them, over seeds 100, 101, 102. Per model and seed:

* ``default``: ``surgeon.plan(model, x, target, criterion="l2")``;
* ``search``: ``surgeon.search(model, x, target, data=calib, budget=B)`` with the same criterion,
  scored on ``calib`` (4 batches of 64 training images: never the test set);

both applied with ``surgeon.apply`` and measured on the held-out test images: top-1 accuracy and
the KL divergence from the dense model's predictions (``kl``), and FLOPs by the independent
counter (``surgeon.verify.count_flops``). The paired test is over every (model, seed): Wilcoxon's
signed-rank test (scipy) and an exact sign test, one-sided (search better), on test accuracy and
on test KL.

    PYTHONPATH=. python benchmarks/search.py                       # 6 models x 3 seeds, ~5 min on 2 cores
    PYTHONPATH=. python benchmarks/search.py --budget 32 --target 0.3 --models mlp-64-32-digits
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import surgeon  # noqa: E402
from surgeon.criteria.gnn import zoo  # noqa: E402
from surgeon.search import search_run  # noqa: E402
from surgeon.verify import count_flops  # noqa: E402

MODELS = ("plaincnn-8-16-32", "rescnn-w8-2blocks", "inception-3b", "resmlp-d48-digits", "tfm-d24-digits",
          "mlp-64-32-digits")
SEEDS = (100, 101, 102)


def _spec(name: str) -> zoo.Spec:
    for s in (*zoo.HELDOUT_SPECS, *zoo.TRAIN_SPECS):
        if s.name == name:
            return s
    raise SystemExit(f"unknown model {name!r}; known: {[s.name for s in (*zoo.HELDOUT_SPECS, *zoo.TRAIN_SPECS)]}")


@torch.no_grad()
def _measure(model, dense, x, y) -> tuple[float, float]:
    model.eval()
    p, q = model(x), dense(x)
    acc = float((p.argmax(1) == y).float().mean())
    kl = float(F.kl_div(F.log_softmax(p, -1), F.log_softmax(q, -1), log_target=True, reduction="batchmean"))
    return acc, kl


def run_one(spec: zoo.Spec, seed: int, args, data) -> dict:
    xtr, ytr, xte, yte = data
    model = zoo.fit(zoo.build(spec, seed), xtr, ytr, zoo.EPOCHS[spec.data], seed)
    x1 = xtr[:2]
    calib = [b[0] for b in zoo.batches(xtr, ytr, 64, 4, seed)]
    base = count_flops(model, x1)
    t = time.perf_counter()
    default = surgeon.plan(model, x1, target=args.target, criterion="l2")
    t_default = time.perf_counter() - t
    found = search_run(model, x1, args.target, data=calib, budget=args.budget, criterion="l2", seed=seed,
                       quiet=True)
    row = {"model": spec.name, "seed": seed, "evals": found.evaluations, "search_s": found.seconds,
           "plan_s": t_default, "calib_kl_default": found.default_score, "calib_kl_search": found.score,
           "dense_acc": _measure(model, model, xte, yte)[0]}
    for name, plan in (("default", default), ("search", found.plan)):
        small = surgeon.apply(model, plan)
        row[f"flops_{name}"] = count_flops(small, x1) / base
        row[f"acc_{name}"], row[f"kl_{name}"] = _measure(small, model, xte, yte)
    return row


def sign_test(diffs: list[float]) -> float:
    """One-sided exact sign test: P(at least this many positive differences | p = 1/2), ties dropped."""
    pos, n = sum(d > 0 for d in diffs), sum(d != 0 for d in diffs)
    return sum(math.comb(n, k) for k in range(pos, n + 1)) / 2 ** n if n else 1.0


def wilcoxon(diffs: list[float]) -> float | None:
    try:
        from scipy.stats import wilcoxon as w
    except ImportError:
        return None
    if not any(diffs):
        return 1.0
    return float(w(diffs, alternative="greater", zero_method="wilcox").pvalue)


def summarize(what: str, diffs: list[float]) -> None:
    n = len(diffs)
    p_w = wilcoxon(diffs)
    print(f"{n} pairs: {what} mean {sum(diffs) / n:+.4f} (better in {sum(d > 0 for d in diffs)}, worse in "
          f"{sum(d < 0 for d in diffs)}); one-sided Wilcoxon p = {'n/a' if p_w is None else f'{p_w:.4g}'}, "
          f"sign test p = {sign_test(diffs):.4g}")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--budget", type=int, default=48, help="evaluations per search (default 48)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache: dict = {}
    rows = []
    head = (f"{'model':<20} {'seed':>4} {'flops d/s':>11} {'acc dense':>9} {'acc def':>8} {'acc srch':>8} "
            f"{'kl def':>7} {'kl srch':>7} {'evals':>5} {'search_s':>8}")
    print(f"target {args.target} FLOPs, criterion l2, budget {args.budget} evaluations per search")
    print(head, flush=True)
    for name in args.models.split(","):
        spec = _spec(name)
        if spec.data not in cache:
            cache[spec.data] = zoo.load_dataset(spec.data)
        for seed in (int(s) for s in args.seeds.split(",")):
            r = run_one(spec, seed, args, cache[spec.data])
            rows.append(r)
            print(f"{r['model']:<20} {seed:>4} {r['flops_default']:.3f}/{r['flops_search']:.3f} {r['dense_acc']:>9.4f} "
                  f"{r['acc_default']:>8.4f} {r['acc_search']:>8.4f} {r['kl_default']:>7.4f} {r['kl_search']:>7.4f} "
                  f"{r['evals']:>5} {r['search_s']:>8.1f}", flush=True)
    summarize("accuracy search - default", [r["acc_search"] - r["acc_default"] for r in rows])
    summarize("test KL default - search", [r["kl_default"] - r["kl_search"] for r in rows])
    n = len(rows)
    print(f"search time: mean {sum(r['search_s'] for r in rows) / n:.1f} s per model ({args.budget} evaluations), "
          f"default plan {sum(r['plan_s'] for r in rows) / n:.2f} s; largest FLOPs gap between the two plans "
          f"{max(abs(r['flops_default'] - r['flops_search']) for r in rows):.4f}")
    return rows


if __name__ == "__main__":
    main()
