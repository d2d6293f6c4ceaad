"""int8 that pays off: shrink a digits classifier, export it int8 with calibration data, compare accuracy.

    python examples/export_int8.py [--out-dir int8]

A small MLP is trained on scikit-learn's 8x8 digits (real data, a few seconds), shrunk to half
its FLOPs, fine-tuned briefly, and exported twice: fp32, and int8 with ``quantize="auto"`` and
calibration samples from the training split (what ``surgeon export small.pt --onnx s.onnx --int8
--calibration train.pt`` does). With calibration data the int8 file is static QDQ with per-channel
weights; the nodes where int8 measured slower, or whose int8 error reaches the output most on the
calibration data (where removing it is worth the time they add, measured), stay fp32 and the
report says why.
Both files are scored on the held-out test split in onnxruntime.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

import surgeon
import surgeon.exporters.onnx  # `import surgeon` alone does not load the exporters


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()
    return model.eval()


def file_accuracy(path: str, x: torch.Tensor, y: torch.Tensor) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float((np.argmax(out, -1) == y.numpy()).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="int8", help="folder for the files (created if missing)")
    args = ap.parse_args()
    torch.manual_seed(0)
    xtr, ytr, xte, yte = digits()
    model = train(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                nn.Linear(128, 10)), xtr, ytr, epochs=15)
    small = train(surgeon.shrink(model, xtr[:1], target=0.5), xtr, ytr, epochs=5)  # a short fine-tune
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    export = surgeon.exporters.onnx.export
    fp32 = export(small, xtr[:1], out / "digits_fp32.onnx")
    q = export(small, xtr[:1], out / "digits_int8.onnx", quantize="auto", calibration=list(xtr[:512].split(32)))
    a32, a8 = file_accuracy(fp32.path, xte, yte), file_accuracy(q.path, xte, yte)
    print(f"digits MLP shrunk to 0.5 of its FLOPs: {fp32.params} parameters")
    print(f"fp32 file: {fp32.file_bytes / 1e3:.1f} kB, test accuracy {a32:.4f}")
    print(f"{q.quantize} int8 file: {q.file_bytes / 1e3:.1f} kB, test accuracy {a8:.4f} "
          f"({100 * (a8 - a32):+.2f} points); top-1 agreement with PyTorch {q.agreement:.3f} on {q.agreement_inputs}")
    for line in q.fp32_nodes or ("every quantizable node is int8",):
        print(f"  {line}")


if __name__ == "__main__":
    main()
