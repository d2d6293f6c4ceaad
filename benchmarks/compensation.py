"""Compensation without training, measured: a small residual CNN on Fashion-MNIST at 0.5 FLOPs.

Issue #6 part 4. Per seed: train the CNN below for two epochs on CPU, then cut it to half its
FLOPs and report test accuracy *before any fine-tuning*:

* dense: the trained model;
* ours l2 / ours random: ``surgeon.shrink(..., criterion=...)`` as it was;
* + compensate: the same plan, then ``surgeon.compensate.compensate`` with the calibration
  batches (least-squares refit of the layers that read removed channels; here every BatchNorm
  follows a refitted conv or an unchanged input, so none needs its own fit); then the same refit
  followed by re-estimating *every* BatchNorm's statistics (the EagleEye recipe on top), BatchNorm
  re-estimation alone, and the data-free closed form (UDFC);
* TP l2 / random / taylor: Torch-Pruning 1.6 ``MetaPruner`` with ``MagnitudeImportance(p=2)``,
  ``RandomImportance`` or ``TaylorImportance`` (gradients of the loss on the calibration
  batches), local pruning, the classifier ignored, its channel ratio bisected to land at 0.5.

Data: ``apt-get install -y dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
Training uses a random subset of ``--train`` images (20,000 by default, so one seed trains in
about a minute on one thread), SGD momentum 0.9, lr 0.05, batch 128, two epochs. The calibration
set is ``--calib`` other training images (512 by default, batches of 128), the test set all
10,000 test images. Run from the repository root::

    PYTHONPATH=. python benchmarks/compensation.py            # 3 seeds, ~5-8 min on 1 thread
    PYTHONPATH=. python benchmarks/compensation.py --seeds 0 --train 10000
"""

from __future__ import annotations

import argparse
import copy
import gzip
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.compensate import compensate, recalibrate_bn
from surgeon.verify import count_flops

DATA = Path("/usr/share/datasets/fashion-mnist")
TARGET = 0.5


# -- data and model ---------------------------------------------------------------------------------
def load(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: apt-get install -y dataset-fashion-mnist")
    with gzip.open(DATA / f"{kind}-labels-idx1-ubyte.gz", "rb") as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    with gzip.open(DATA / f"{kind}-images-idx3-ubyte.gz", "rb") as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(len(y), 1, 28, 28)
    x = (torch.from_numpy(x.astype(np.float32)) / 255.0 - 0.286) / 0.353
    return x, torch.from_numpy(y.astype(np.int64))


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.short is None else self.short(x)))


class ResCNN(nn.Module):
    """Stem to 16 channels at 14x14, then stages of 16, 32, 64 channels (one block each)."""

    def __init__(self, widths=(16, 32, 64), classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


def train(seed: int, x: torch.Tensor, y: torch.Tensor, epochs: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    model = ResCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    hits = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(1000), y.split(1000)))
    return hits / len(y)


# -- Torch-Pruning -----------------------------------------------------------------------------------
def tp_prune(model: nn.Module, x1: torch.Tensor, ratio: float, how: str, calib) -> nn.Module:
    import torch_pruning as tp

    net = copy.deepcopy(model)
    imp = {"l2": lambda: tp.importance.MagnitudeImportance(p=2),
           "random": tp.importance.RandomImportance,
           "taylor": tp.importance.TaylorImportance}[how]()
    pruner = tp.pruner.MetaPruner(net, x1, imp, pruning_ratio=ratio, ignored_layers=[net.fc],
                                  global_pruning=False)
    if how == "taylor":
        net.zero_grad()
        for xb, yb in calib:
            F.cross_entropy(net(xb), yb).backward()
    pruner.step()
    return net.eval()


def tp_at_target(model: nn.Module, x1: torch.Tensor, base: int, how: str, calib, steps: int = 12):
    """Bisect Torch-Pruning's channel ratio so that the FLOPs land closest to TARGET."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        torch.manual_seed(0)  # RandomImportance draws from torch's generator
        net = tp_prune(model, x1, mid, how, calib)
        got = count_flops(net, x1) / base
        if best is None or abs(got - TARGET) < abs(best[1] - TARGET):
            best = (net, got)
        lo, hi = (mid, hi) if got > TARGET else (lo, mid)
    return best


# -- one seed ------------------------------------------------------------------------------------------
def run_seed(seed: int, args, data) -> dict[str, tuple[float, float]]:
    (xtr, ytr), (xte, yte) = data
    rng = np.random.default_rng(seed)
    perm = torch.from_numpy(rng.permutation(len(xtr)))
    tr, cal = perm[:args.train], perm[args.train:args.train + args.calib]
    t0 = time.perf_counter()
    model = train(seed, xtr[tr], ytr[tr])
    print(f"seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    calib = list(zip(xtr[cal].split(128), ytr[cal].split(128)))
    x1 = xtr[:1]
    base = count_flops(model, x1)
    res = {"dense": (accuracy(model, xte, yte), 1.0)}

    def put(name, net):
        res[name] = (accuracy(net, xte, yte), count_flops(net, x1) / base)

    a = surgeon.analyze(model, x1)
    inputs = [xb for xb, _ in calib]
    for crit in ("l2", "random"):
        p = surgeon.plan(model, x1, TARGET, criterion=crit, analysis=a)
        put(f"ours {crit}", surgeon.apply(model, p))
        put(f"ours {crit} + compensate", compensate(model, surgeon.apply(model, p), p, a, calib))
        small = compensate(model, surgeon.apply(model, p), p, a, calib, norms="keep")
        recalibrate_bn(small, inputs)
        put(f"  {crit}: refit + every BN re-estimated", small)
        small = surgeon.apply(model, p)
        recalibrate_bn(small, inputs)
        put(f"  {crit}: BN re-estimation only", small)
        put(f"  {crit}: compensate data-free", compensate(model, surgeon.apply(model, p), p, a))
    # the one-call form must agree with the plan-then-compensate form above
    one = surgeon.shrink(model, x1, TARGET, data=calib, compensate=True)
    put("ours l2 + compensate (shrink)", one)
    for how in ("l2", "random", "taylor"):
        net, _ = tp_at_target(model, x1, base, how, calib)
        put(f"TP {how}", net)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train", type=int, default=20000, help="training images used (random subset)")
    ap.add_argument("--calib", type=int, default=512, help="calibration images for compensation")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load("train"), load("t10k")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [run_seed(s, args, data) for s in seeds]
    print(f"\nFashion-MNIST, ResCNN ({count_flops(ResCNN(), data[0][0][:1]):,} FLOPs), {args.train} training "
          f"images x 2 epochs, {args.calib} calibration images, target {TARGET} FLOPs, no fine-tuning")
    head = f"{'method':<38} {'FLOPs':>6} " + " ".join(f"{'seed ' + str(s):>7}" for s in seeds) + f" {'mean':>6}"
    print(head)
    print("-" * len(head))
    for name in runs[0]:
        accs = [r[name][0] for r in runs]
        print(f"{name:<38} {runs[0][name][1]:>6.3f} " + " ".join(f"{a:>7.3f}" for a in accs)
              + f" {statistics.mean(accs):>6.3f}")


if __name__ == "__main__":
    main()
