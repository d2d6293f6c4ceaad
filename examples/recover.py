"""Shrink a trained classifier hard, then win the accuracy back by distillation from the dense one.

A 64-256-256-10 MLP learns scikit-learn's 8x8 digits; ``surgeon.shrink`` cuts it to 15% of its
FLOPs, which costs a lot of accuracy; ``surgeon.recover`` then trains the small model towards the
dense one (KL on the logits at temperature 2, mixed with the labels' cross-entropy) with a
checkpoint file it could resume from. Runs in a few seconds on a CPU:

    python examples/recover.py
"""

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import surgeon

torch.manual_seed(0)
torch.set_num_threads(1)  # tiny layers run fastest on one thread

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
order = torch.randperm(len(y))
train, test = order[:1347], order[1347:]
batches = [(x[i], y[i]) for i in train.split(64)]


def accuracy(model):
    model.eval()
    with torch.no_grad():
        return float((model(x[test]).argmax(1) == y[test]).float().mean())


dense = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                            torch.nn.Linear(256, 10))
opt = torch.optim.Adam(dense.parameters(), 1e-3)
for epoch in range(30):
    for xb, yb in batches:
        opt.zero_grad()
        F.cross_entropy(dense(xb), yb).backward()
        opt.step()
print(f"dense: test accuracy {accuracy(dense):.3f}")

small = surgeon.shrink(dense, x[:8], target=0.15)
flops = surgeon.verify.count_flops(small, x[:8]) / surgeon.verify.count_flops(dense, x[:8])
print(f"shrunk to {flops:.3f} of the FLOPs (widths {small[0].out_features}, {small[2].out_features}): "
      f"test accuracy {accuracy(small):.3f}")

with tempfile.TemporaryDirectory() as d:
    ckpt = Path(d) / "recover.pt"  # rerunning with the same file resumes where it stopped
    small = surgeon.recover(small, dense, batches, checkpoint=ckpt, quiet=True,
                            eval_fn=accuracy, eval_every=110)
print(f"recovered: test accuracy {accuracy(small):.3f}")
