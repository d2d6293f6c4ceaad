"""Draw the pruning groups of a model as an interactive HTML page (and as Graphviz DOT).

    python examples/visualize_groups.py [--model resnet18] [--target 0.5] [--out-dir .]

Open the .html file in a browser: it opens on the model's top-level blocks, folded by module
and coloured by the groups inside them (click a fold to open it; capture machinery is hidden
unless you tick it), with a target slider that shows what the plan at each target from 0.9 to
0.3 removes, the predicted FLOPs and parameters, and which groups stay whole, why and the fix.
Every prunable group has its own colour, grey ops cannot be pruned (hover for why), click a box
for the group's members, cost share, scores and what the plan keeps. The same page (without
the slider) comes from the command line:

    surgeon inspect torchvision:resnet18 --viz groups.html
"""

import argparse
from pathlib import Path

import torch
import torchvision

import surgeon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18", help="a torchvision model name")
    ap.add_argument("--target", type=float, default=0.5, help="fraction of the FLOPs the plan keeps")
    ap.add_argument("--out-dir", default=".", help="where to write the files")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()  # random weights: no download
    x = torch.randn(1, 3, 224, 224)
    out = Path(args.out_dir)

    analysis = surgeon.analyze(model, x)  # trace once, draw twice
    plan = surgeon.plan(model, x, target=args.target, round_to=8, analysis=analysis)
    page = surgeon.visualize(model, x, out / f"{args.model}_groups.html", plan=plan, analysis=analysis)
    dot = surgeon.visualize(model, x, out / f"{args.model}_groups.dot", analysis=analysis)

    prunable = sum(g.prunable for g in analysis.groups)
    print(f"{args.model}: {len(analysis.groups)} groups, {prunable} prunable; "
          f"the plan keeps {plan.ratio:.3f} of the FLOPs")
    print(f"wrote {page} ({page.stat().st_size / 1e3:.0f} kB, open it in a browser)")
    print(f"wrote {dot} (render with: dot -Tsvg {dot.name} -o groups.svg)")


if __name__ == "__main__":
    main()
