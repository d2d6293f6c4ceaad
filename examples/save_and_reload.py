"""Save a shrunk model without pickle and load it back; shrink in place under a live optimizer.

    python examples/save_and_reload.py

A checkpoint is one safetensors file: the shrunk weights, the plan and the factory that builds
the dense model ("torchvision:resnet18" here; "path/to/file.py:build" for your own classes).
Loading calls the factory, applies the plan and loads the weights strictly, so nothing is ever
unpickled from the file. ``surgeon shrink SPEC --out small.pt`` writes the same file.
"""

import tempfile
from pathlib import Path

import torch
import torchvision

import surgeon
import surgeon.checkpoint


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)

    plan = surgeon.plan(model, x, target=0.5)
    small = surgeon.apply(model, plan)
    path = Path(tempfile.mkdtemp()) / "small.pt"
    surgeon.checkpoint.save(small, plan, "torchvision:resnet18", path, input_shape=(1, 3, 224, 224))
    again, _ = surgeon.checkpoint.load(path)  # resnet18(), apply(plan), load the tensors
    assert torch.equal(again(x), small(x))
    print(f"saved {path.name} ({path.stat().st_size // 1024} KiB) and reloaded it: identical outputs")

    # inplace=True reshapes the model's own parameters: the optimizer built on them sees the new widths
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    conv = model.layer1[0].conv1
    surgeon.shrink(model, x, target=0.5, inplace=True)
    assert any(q is conv.weight for q in opt.param_groups[0]["params"]) and conv.weight.shape[0] == conv.out_channels
    print(f"in place: layer1.0.conv1 now has {conv.out_channels} output channels, and so does the "
          f"optimizer's copy of its weight ({tuple(conv.weight.shape)})")


if __name__ == "__main__":
    main()
