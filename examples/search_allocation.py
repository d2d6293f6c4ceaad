"""Search how much of each layer to keep, instead of one global score order.

``surgeon.plan`` thins every group where its own units score low; ``surgeon.search`` tries other
allocations at the same FLOPs (an evolutionary search over one weight per group, each candidate
landed exactly on the target by the planner) and keeps the one whose outputs stay closest to the
dense model on calibration batches. Here a digits MLP is cut to 30% of its FLOPs both ways and
compared on held-out images. Runs in about half a minute on a CPU:

    python examples/search_allocation.py
"""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import surgeon
from surgeon.verify import count_flops

torch.manual_seed(0)
torch.set_num_threads(1)

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
order = torch.randperm(len(y))
train, test = order[:1347], order[1347:]

model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(),
                            torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
opt = torch.optim.Adam(model.parameters(), 2e-3)
for epoch in range(15):
    for i in train[torch.randperm(len(train))].split(64):
        opt.zero_grad()
        F.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
model.eval()


@torch.no_grad()
def accuracy(m):
    return float((m(x[test]).argmax(1) == y[test]).float().mean())


calib = [x[i] for i in train[:256].split(64)]  # inputs only: candidates are scored against the dense outputs
default = surgeon.plan(model, x[:2], target=0.3)
searched = surgeon.search(model, x[:2], target=0.3, data=calib, budget=40, quiet=True)
print(f"dense: test accuracy {accuracy(model):.3f}")
for name, plan in (("default plan", default), ("searched plan", searched)):
    small = surgeon.apply(model, plan)
    widths = [m.out_features for m in small if isinstance(m, torch.nn.Linear)][:-1]
    print(f"{name}: {count_flops(small, x[:2]) / count_flops(model, x[:2]):.3f} of the FLOPs, widths {widths}, "
          f"test accuracy {accuracy(small):.3f}")
