"""Shrink a small trained CNN with data-aware criteria and compare them with magnitude.

A CNN learns to tell four kinds of synthetic 16x16 images apart (horizontal bar, vertical bar,
diagonal, blob; noisy), then is shrunk to half its FLOPs with each criterion, scored on a few
calibration batches, with no fine-tuning afterwards. Prints the kept FLOPs ratio (measured by the
independent counter) and the test accuracy of each shrunk model.

    python examples/data_aware_criteria.py
"""

from __future__ import annotations

import time

import torch
from torch import nn

import surgeon
from surgeon.verify import count_flops

torch.set_num_threads(1)
torch.manual_seed(0)


def images(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes of 16x16 pictures at random positions, with noise."""
    y = torch.randint(0, 4, (n,), generator=gen)
    x = 0.5 * torch.randn(n, 1, 16, 16, generator=gen)
    pos = torch.randint(3, 13, (n, 2), generator=gen)
    ii, jj = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    for k in range(n):
        r, c = pos[k].tolist()
        if y[k] == 0:
            mask = (ii - r).abs() <= 0
        elif y[k] == 1:
            mask = (jj - c).abs() <= 0
        elif y[k] == 2:
            mask = (ii - jj - (r - c)).abs() <= 0
        else:
            mask = ((ii - r) ** 2 + (jj - c) ** 2) <= 5
        x[k, 0][mask] += 2.0
    return x, y


def make_cnn() -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = images(2048, gen)
    x_test, y_test = images(1024, gen)
    model = make_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(200):
        idx = torch.randint(0, len(x_train), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad()  # so the check below sees what the scoring leaves, not the training
    model.eval()
    print(f"trained a {sum(p.numel() for p in model.parameters()):,}-parameter CNN in "
          f"{time.perf_counter() - t0:.1f} s; test accuracy {accuracy(model, x_test, y_test):.3f}")

    # calibration data: a few (x, y) batches; the default loss is cross-entropy on the output
    calib = [(x_train[i:i + 64], y_train[i:i + 64]) for i in range(0, 512, 64)]
    example = x_test[:1]
    base = count_flops(model, example)
    print(f"\nshrink to 0.5 of the FLOPs, no fine-tuning ({len(calib)} calibration batches of 64):")
    print(f"{'criterion':<12}{'kept FLOPs':>11}{'test acc':>10}{'seconds':>9}")
    for criterion in ("random", "l2", "lamp", "taylor", "fisher", "activation"):
        t = time.perf_counter()
        # criteria that need no data (random, l2, lamp) ignore data=
        small = surgeon.shrink(model, example, target=0.5, criterion=criterion, data=calib)
        took = time.perf_counter() - t
        ratio = count_flops(small, example) / base
        print(f"{criterion:<12}{ratio:>11.3f}{accuracy(small, x_test, y_test):>10.3f}{took:>9.2f}")
    assert all(p.grad is None for p in model.parameters()), "scoring must not leave gradients"
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
