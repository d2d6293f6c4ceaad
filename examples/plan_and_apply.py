"""Plan first, look at the plan, save it as JSON, and apply it later.

    python examples/plan_and_apply.py
"""

import tempfile
from pathlib import Path

import torch
import torchvision

import surgeon


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)

    plan = surgeon.plan(model, x, target=0.6, round_to=8)  # pure: the model is not touched
    print(plan.summary().splitlines()[0])

    path = Path(tempfile.mkdtemp()) / "plan.json"
    plan.save(path)
    print(f"plan saved to {path} ({path.stat().st_size // 1024} KiB)")

    small = surgeon.apply(model, surgeon.Plan.load(path))  # no tracing needed to apply
    widths = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths if w > 8), "round_to=8 keeps widths multiples of 8"
    print(f"applied: {len(widths)} convs, widths {widths[:6]} ...")


if __name__ == "__main__":
    main()
