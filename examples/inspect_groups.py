"""List the pruning groups surgeon finds in a model, and why some are kept whole.

    python examples/inspect_groups.py [--model densenet121]
"""

import argparse
from collections import Counter

import torch
import torchvision

import surgeon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="densenet121")
    args = ap.parse_args()
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)

    analysis = surgeon.analyze(model, x)
    groups = analysis.groups
    total = analysis.cost("flops").base
    print(f"{args.model}: {len(groups)} groups, {sum(g.prunable for g in groups)} prunable")
    for g in sorted(groups, key=lambda g: -g.flops_per_unit * g.n_units)[:10]:
        share = g.flops_per_unit * g.n_units / total
        print(f"  {g.describe()[:110]}  ({share:.1%} of FLOPs)")
    reasons = Counter(g.reason.split(" (")[0] for g in groups if not g.prunable)
    for reason, n in reasons.most_common():
        print(f"  kept whole x{n}: {reason}")


if __name__ == "__main__":
    main()
