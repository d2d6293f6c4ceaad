"""Prune with the learned GNN criterion and compare it with L2 magnitude and Taylor.

A small residual MLP is trained for a few seconds on scikit-learn's 8x8 digits, then shrunk
to half its FLOPs five ways (the last with ``layers=True``: whole residual blocks are units
too, scored by their Block Influence and corrected by the network), and each result is
fine-tuned for 60 steps. The GNN criterion reads the model's group graph (and, given
calibration batches, Taylor and activation features) and corrects the base criterion's scores.
Needs torch-geometric and scikit-learn: pip install "surgeon[gnn]". How the GNN fares on
held-out models: benchmarks/gnn_table.md (it is not a default criterion).
"""

import time

import torch

import surgeon
from surgeon.criteria.gnn import GNNCriterion, zoo
from surgeon.criteria.gnn.features import taylor_scores
from surgeon.verify import count_flops

torch.set_num_threads(1)


class Taylor:  # first-order Taylor with the same calibration batches
    name = "taylor"

    def __init__(self, data):
        self.data = data

    def score(self, model, groups):
        return taylor_scores(model, groups, self.data)


xtr, ytr, xte, yte = zoo.load_dataset("digits")
spec = zoo.Spec("resmlp-d64-digits", "resmlp", "digits", {"d": 64, "hidden": 128, "depth": 2})
model = zoo.fit(zoo.build(spec, seed=7), xtr, ytr, epochs=15, seed=7)
x = xtr[:1]
calib = zoo.batches(xtr, ytr, 64, 4, seed=7)  # (images, labels) batches from the training split
print(f"trained a {spec.arch} on digits: test accuracy {zoo.accuracy(model, xte, yte):.3f}, "
      f"{count_flops(model, x)} FLOPs")
for name, crit, layers in [("l2", "l2", False), ("taylor", Taylor(calib), False), ("gnn (no data)", "gnn", False),
                           ("gnn (with data)", GNNCriterion(data=calib), False),
                           ("gnn, whole layers", GNNCriterion(data=calib), True)]:
    t0 = time.perf_counter()
    small = surgeon.shrink(model, x, target=0.5, criterion=crit, layers=layers)
    kept = count_flops(small, x) / count_flops(model, x)
    before = zoo.accuracy(small, xte, yte)
    after = zoo.accuracy(zoo.fit(small, xtr, ytr, epochs=60 * 64 / len(ytr), seed=7, lr=1e-3), xte, yte)
    print(f"  {name:16s} keeps {kept:.3f} of the FLOPs, accuracy {before:.3f} before fine-tuning, "
          f"{after:.3f} after ({time.perf_counter() - t0:.1f}s)")
