"""Shrink without fine-tuning, then compensate: re-fit the layers that lost inputs on a few
calibration batches so the output moves least (same FLOPs, same shapes).

    python examples/compensate.py
"""

import time

import torch
import torchvision

import surgeon
from surgeon.compensate import recalibrate_bn
from surgeon.verify import count_flops


def rel_error(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    images = torch.randn(320, 3, 32, 32)
    recalibrate_bn(model, images[:128].split(32))  # settled BatchNorm statistics, as after training
    model.eval()
    x = images[:1]
    calib = images[:128].split(32)  # calibration batches: tensors, (x, y) tuples or dicts
    held_out = images[128:]
    with torch.no_grad():
        ref = model(held_out)

    plain = surgeon.shrink(model, x, target=0.5)
    t0 = time.perf_counter()
    fixed = surgeon.shrink(model, x, target=0.5, data=calib, compensate=True)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        e_plain, e_fixed = rel_error(ref, plain(held_out)), rel_error(ref, fixed(held_out))
    base = count_flops(model, x)
    print(f"FLOPs kept: {count_flops(plain, x) / base:.3f} plain, {count_flops(fixed, x) / base:.3f} compensated")
    print(f"output error on held-out inputs: {e_plain:.3f} without compensation, "
          f"{e_fixed:.3f} with (shrink + compensate took {seconds:.1f} s)")
    assert count_flops(fixed, x) == count_flops(plain, x) and e_fixed < e_plain


if __name__ == "__main__":
    main()
