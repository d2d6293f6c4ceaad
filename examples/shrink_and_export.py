"""Shrink ResNet-50 to half its FLOPs, check it, and export a dense ONNX file.

    python examples/shrink_and_export.py [--model resnet50] [--target 0.5] [--out small.onnx]
"""

import argparse

import torch
import torchvision

import surgeon
import surgeon.exporters.onnx  # `import surgeon` alone does not load the exporters
from surgeon.verify import count_flops, count_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50", help="a torchvision model name")
    ap.add_argument("--target", type=float, default=0.5, help="fraction of the FLOPs to keep")
    ap.add_argument("--out", default="small.onnx")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()  # random weights: no download
    x = torch.randn(1, 3, 224, 224)

    small = surgeon.shrink(model, x, target=args.target)
    f0, f1 = count_flops(model, x), count_flops(small, x)
    p0, p1 = count_params(model), count_params(small)
    print(f"{args.model}: FLOPs {f0 / 1e9:.2f}G -> {f1 / 1e9:.2f}G ({f1 / f0:.3f}), "
          f"params {p0 / 1e6:.1f}M -> {p1 / 1e6:.1f}M ({p1 / p0:.3f})")

    report = surgeon.exporters.onnx.export(small, x, args.out)
    print(f"wrote {report.path}: {report.file_bytes / 1e6:.1f} MB, {report.weights / 1e6:.2f}M weights, "
          f"onnxruntime max relative error {report.max_rel_error:.1e}, {report.latency_ms:.1f} ms/image")


if __name__ == "__main__":
    main()
