"""Shrink a CNN for onnxruntime CPU (1 thread): to half its measured latency, and to half its
FLOPs planned with the runtime's timings.

    python examples/latency_target.py

surgeon times every conv and linear layer on the runtime over a grid of widths (cached under
~/.cache/surgeon/latency, so a second run measures nothing). With metric="latency" it plans
against those tables, times the result interleaved with the dense model and re-aims if it
missed by more than 3%. With a FLOPs target and runtime= it also plans removing first what runs
slowest there for its FLOPs, times that plan against the score-only one and keeps the faster.
"""

import time

import torch
from torch import nn

import surgeon
from surgeon.latency import measured_ratio
from surgeon.verify import count_flops


def make_cnn() -> nn.Module:
    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, 1, 1, groups=cout, bias=False), nn.BatchNorm2d(cout),
                             nn.Conv2d(cout, cout, 1), nn.ReLU())
    return nn.Sequential(block(3, 64, 2), block(64, 128, 2), block(128, 256, 2), block(256, 256, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)).eval()


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, x = make_cnn(), torch.randn(1, 3, 96, 96)

    t0 = time.perf_counter()
    small = surgeon.shrink(model, x, target=0.5, metric="latency", runtime="ort-cpu")
    print(f"shrink(metric='latency', runtime='ort-cpu') took {time.perf_counter() - t0:.1f} s")

    flops = count_flops(small, x) / count_flops(model, x)
    ratio = measured_ratio(model, small, x, "ort-cpu")  # median over interleaved dense/shrunk pairs
    print(f"latency kept on onnxruntime CPU: {ratio:.2f} of dense (target 0.50); FLOPs kept: {flops:.2f}")
    widths = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    print(f"conv widths after shrinking (multiples of the runtime's block where possible): {widths}")

    # half the FLOPs either way. On this small CNN the two plans time alike; on ConvNeXt-T, ResNet-50
    # and MobileNet-V2 the runtime-aware one ran ~2.0x faster than dense against 1.8-1.9x
    # (benchmarks/latency.py, figures in benchmarks/README.md)
    for label, kw in (("score only", {}), ("runtime='ort-cpu'", {"runtime": "ort-cpu"})):
        half = surgeon.shrink(model, x, target=0.5, **kw)
        speedup = 1 / measured_ratio(model, half, x, "ort-cpu")
        print(f"target=0.5 FLOPs, {label:18s}: FLOPs kept {count_flops(half, x) / count_flops(model, x):.3f}, "
              f"{speedup:.2f}x faster than dense")


if __name__ == "__main__":
    main()
