"""Check a shrink yourself with surgeon's oracles: independent FLOPs count and zero-invariance.

    python examples/check_oracles.py
"""

import torch
import torchvision

import surgeon
from surgeon.verify import count_flops, zero_invariance


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)

    small = surgeon.shrink(model, x, target=0.5)
    print(f"FLOPs kept by FlopCounterMode: {count_flops(small, x) / count_flops(model, x):.4f}")

    # zero the parameters of some units, then remove exactly those units: outputs must agree
    analysis = surgeon.analyze(model, x)
    group = next(g for g in analysis.groups if g.prunable and g.exact)
    err = zero_invariance(model, x, {group.id: [0, 3, 5]}, analysis=analysis)
    print(f"zero-invariance on {group.describe()[:60]}...: relative error {err:.1e}")
    assert err < 1e-4


if __name__ == "__main__":
    main()
