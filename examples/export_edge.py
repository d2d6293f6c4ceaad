"""Shrink a small model and export it for edge runtimes: fp16 (+ .ort), int8 dynamic, int8 static.

    python examples/export_edge.py [--model mobilenet_v3_small] [--target 0.5] [--out-dir edge]

Every file is checked in onnxruntime before it is written: fp16 against PyTorch on the example
input and on a second batch size, int8 by top-1 agreement with PyTorch on random inputs (random
weights here, so agreement is the figure to read, not accuracy). The plain fp32 export is
examples/shrink_and_export.py.
"""

import argparse
from pathlib import Path

import torch
import torchvision

import surgeon
import surgeon.exporters.onnx  # `import surgeon` alone does not load the exporters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v3_small", help="a torchvision model name")
    ap.add_argument("--target", type=float, default=0.5, help="fraction of the FLOPs to keep")
    ap.add_argument("--out-dir", default="edge", help="folder for the files (created if missing)")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()  # random weights: no download
    x = torch.randn(1, 3, 224, 224)
    small = surgeon.shrink(model, x, target=args.target)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    export = surgeon.exporters.onnx.export
    calibration = [torch.randn(8, 3, 224, 224) for _ in range(4)]  # use real samples for a real model
    reports = {
        "fp16 + .ort": export(small, x, out / f"{args.model}_fp16.onnx", dtype="fp16", ort_format=True),
        "int8 dynamic": export(small, x, out / f"{args.model}_int8_dynamic.onnx", quantize="dynamic"),
        "int8 static": export(small, x, out / f"{args.model}_int8_static.onnx", quantize="static",
                              calibration=calibration),
    }
    fp16 = reports["fp16 + .ort"]
    print(f"{args.model} shrunk to {args.target} of its FLOPs: {fp16.params / 1e6:.2f}M parameters, "
          f"{fp16.bn_folded} BatchNorms folded ({fp16.folded} parameters), {fp16.weights / 1e6:.2f}M weights "
          f"in the file (fp32 would take {4 * fp16.weights / 1e6:.1f} MB)")
    print(f"{'file':<14}{'MB':>7}{'rel. error':>12}{'top-1 agree':>13}{'ms (ORT CPU)':>14}")
    for name, r in reports.items():
        agree = "-" if r.agreement is None else f"{r.agreement:.3f}"
        print(f"{name:<14}{r.file_bytes / 1e6:>7.2f}{r.max_rel_error:>12.1e}{agree:>13}{r.latency_ms:>14.2f}")
    print(f"wrote {len(reports)} ONNX files and {fp16.ort_path} (loads in onnxruntime, top-1 agreement "
          f"{fp16.ort_agreement:.3f}) in {out}/")


if __name__ == "__main__":
    main()
