"""Does int8 pay off on the edge? Dense fp32, shrunk fp32 and shrunk int8 files on onnxruntime CPU.

For each model (torchvision, random weights, input 1x3x224x224) this writes, with
``surgeon.exporters.onnx.export`` (what ``surgeon export small.pt --onnx s.onnx --int8
--calibration X`` calls, with ``quantize="auto"``):

* ``dense fp32``: the model itself;
* ``shrunk fp32``: ``surgeon.shrink(model, x, target=0.5)``;
* ``shrunk int8``: the same, ``quantize="auto"`` with calibration data: static QDQ, per-channel
  int8 weights, mixed precision by measurement (see ``surgeon.exporters.int8``);
* ``TP fp32`` / ``TP int8``: Torch-Pruning's magnitude pruner (``benchmarks/zoo.py``'s setting) at
  the channel ratio whose FLOPs land nearest 0.5 (``--tp-steps`` bisection steps, each cut off
  after ``--tp-limit`` seconds; the FLOPs column says where it landed), exported with the same int8
  recipe (``quantize="auto"``, the same calibration data); ``--no-peer`` leaves them out.

With ``--cli`` the three files are those the console script writes, each by its own process:
``surgeon export torchvision:NAME --onnx dense.onnx``, ``surgeon shrink torchvision:NAME --target
0.5 --out small.pt``, ``surgeon export small.pt --onnx s.onnx`` and ``surgeon export small.pt --onnx
s8.onnx --int8 --calibration calibration.pt`` (no peer; agreement against the shrunk fp32 file).

Calibration and agreement inputs: i.i.d. standard normal pixels N(0, 1) (what ImageNet-normalised
images look like to first order; the weights are random, so real images would say no more):
``--calib`` samples saved in one ``.pt`` file, which both paths pass as the CLI passes
``--calibration`` (read in batches of 8, the last fifth held out for the report's agreement), and
64 fresh samples of the same distribution, never seen in calibration, for the top-1 agreement of
each int8 file with its PyTorch model.

All files are timed in alternation (dense, shrunk fp32, shrunk int8, ... rotated every round) on
onnxruntime CPU with 1 thread (the thread's CPU time; see ``surgeon.latency.runtime``) and, with
``--all-threads``, on all threads (wall clock). Each figure is the median of the per-round ratios
dense / variant (the speed-up), with the interquartile range of those ratios as the noise. The
``check`` lines say which acceptance points of issue 19 the run met.

With ``--accuracy`` it measures accuracy on real data instead: a small CNN trained on Debian's
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``; ``apt-get install
dataset-fashion-mnist``) and an MLP trained on scikit-learn's digits, each shrunk to 0.5 of its
FLOPs (briefly fine-tuned) and exported fp32 and int8 (``quantize="auto"``, calibration from the
training split); both files are scored in onnxruntime on the held-out test split.

    PYTHONPATH=. python benchmarks/edge.py [--models resnet50,mobilenet_v2] [--rounds 15] [--no-peer] [--cli]
    PYTHONPATH=. python benchmarks/edge.py --accuracy
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import surgeon  # noqa: E402
import surgeon.exporters.onnx  # noqa: E402,F401
from surgeon.latency.runtime import interleaved  # noqa: E402
from surgeon.verify import count_flops  # noqa: E402
from zoo import build, head_of, tp_prune, tp_search  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2", "convnext_tiny", "vit_b_16")
TARGET = 0.5
DENSE_X = {"resnet50": 3.0, "convnext_tiny": 2.5, "mobilenet_v2": 2.2}  # int8 speed-up over dense asked for
AGREE = 0.98  # ConvNeXt-tiny int8 top-1 agreement asked for


def calibration(n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 224, 224, generator=gen) for _ in range(max(1, n // 4))]


def calibration_file(n: int, tmp: str) -> str:
    """``n`` N(0, 1) samples (seed 1) in one tensor, saved as the ``--calibration`` file of the CLI:
    both paths read it alike (batches of 8, the last fifth held out for the report's agreement)."""
    path = os.path.join(tmp, "calibration.pt")
    torch.save(torch.cat(calibration(n, 1)), path)
    return path


def agreement(path: str, model, samples: list[torch.Tensor]) -> float:
    """Top-1 agreement of the file at ``path`` with ``model``: a torch module, or the path of an
    fp32 ONNX file (which matches its PyTorch model to 1e-4)."""
    import onnxruntime as ort

    def top1(file: str):
        sess = ort.InferenceSession(file, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0]).argmax(-1)

    ref_of = top1(model) if isinstance(model, str) else (lambda x: model(x).argmax(-1))
    out_of = top1(path)
    same = total = 0
    with torch.no_grad():
        for x in samples:
            ref, out = ref_of(x), out_of(x)
            same, total = same + int((ref == out).sum()), total + ref.numel()
    return same / total


def session_runner(path: str, x: torch.Tensor, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feeds)


def files_for(name: str, model, x, tmp: str, args) -> tuple[dict, dict, dict]:
    """label -> file path, label -> FLOPs ratio, label -> int8 agreement."""
    export = surgeon.exporters.onnx.export
    base = count_flops(model, x)
    nets = {"dense fp32": model, "shrunk fp32": surgeon.shrink(model, x, target=TARGET)}
    if not args.no_peer:
        try:
            ratio, _ = tp_search(model, x, base, [head_of(name, model)], args.tp_steps, args.tp_limit)
            nets["TP fp32"] = tp_prune(model, x, ratio, [head_of(name, model)])[0].eval()
        except Exception as exc:  # noqa: BLE001 - a peer failure is a result, not the end of the model
            print(f"  Torch-Pruning failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    files, flops, agree = {}, {}, {}
    calib, held = calibration_file(args.calib, tmp), calibration(64, 2)
    for label, net in list(nets.items()):
        net.eval()
        flops[label] = count_flops(net, x) / base
        files[label] = os.path.join(tmp, f"{label.replace(' ', '_')}.onnx")
        export(net, x, files[label])
        if label == "dense fp32":
            continue
        q = label.replace("fp32", "int8")
        files[q], flops[q] = os.path.join(tmp, f"{q.replace(' ', '_')}.onnx"), flops[label]
        t0 = time.perf_counter()
        rep = export(net, x, files[q], quantize="auto", calibration=calib)
        agree[q] = agreement(files[q], net, held)
        print(f"  {q:12s} {rep.quantize} int8 in {time.perf_counter() - t0:5.1f} s; top-1 agreement "
              f"{agree[q]:.3f} on {sum(len(h) for h in held)} held-out N(0,1) inputs "
              f"(report: {rep.agreement:.3f} on {rep.agreement_inputs})", flush=True)
        for line in rep.fp32_nodes:
            print(f"    {line}")
    return files, flops, agree


def cli(*argv: str) -> str:
    import subprocess

    done = subprocess.run(["surgeon", *argv, "--quiet"], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"surgeon {' '.join(argv)}: {done.stderr.strip()[-500:]}")
    return done.stdout


def files_cli(name: str, tmp: str, args) -> tuple[dict, dict, dict]:
    """The files the console script writes: ``surgeon export torchvision:NAME``, ``surgeon shrink
    torchvision:NAME --target 0.5 --out small.pt``, ``surgeon export small.pt`` with and without
    ``--int8 --calibration calibration.pt``; agreement against the shrunk fp32 file."""
    files = {k: os.path.join(tmp, f"{k.replace(' ', '_')}.onnx") for k in ("dense fp32", "shrunk fp32", "shrunk int8")}
    small, calib = os.path.join(tmp, "small.pt"), calibration_file(args.calib, tmp)
    cli("export", f"torchvision:{name}", "--onnx", files["dense fp32"])
    said = cli("shrink", f"torchvision:{name}", "--target", str(TARGET), "--out", small).strip().splitlines()[0]
    print(f"  {said}")
    kept = re.search(r"FLOPs \S+ -> \S+ \(([\d.]+)\)", said)
    ratio = float(kept.group(1)) if kept else float("nan")
    cli("export", small, "--onnx", files["shrunk fp32"])
    t0 = time.perf_counter()
    out = cli("export", small, "--onnx", files["shrunk int8"], "--int8", "--calibration", calib)
    agree = {"shrunk int8": agreement(files["shrunk int8"], files["shrunk fp32"], calibration(64, 2))}
    print(f"  shrunk int8  by the CLI in {time.perf_counter() - t0:5.1f} s; top-1 agreement {agree['shrunk int8']:.3f} "
          f"with the shrunk fp32 file on 64 held-out N(0,1) inputs", flush=True)
    for line in out.strip().splitlines()[1:]:
        print(f"    {line.strip()}")
    return files, {"dense fp32": 1.0, "shrunk fp32": ratio, "shrunk int8": ratio}, agree


def timed(files: dict, x, rounds: int, threads: int) -> dict[str, tuple[float, float, float]]:
    """label -> (median ms, median speed-up over dense, IQR of the speed-up), interleaved."""
    labels = list(files)
    runs = [session_runner(files[k], x, threads) for k in labels]
    t = interleaved(runs, "ort-cpu", rounds=rounds, warmup=2, clock="cpu" if threads == 1 else "wall")
    out = {}
    for i, (k, ms) in enumerate(zip(labels, t.ms)):
        r = 1.0 if i == 0 else t.ratios[i - 1]
        out[k] = (ms, 1.0 / r, 0.0 if i == 0 else t.spread[i - 1] / r / r)
    return out


def checks(name: str, col: dict, agree: dict) -> None:
    sp = {k: v[1] for k, v in col.items()}
    ok = sp["shrunk int8"] > sp["shrunk fp32"]
    print(f"  check {name}: int8 {sp['shrunk int8']:.2f}x > shrunk fp32 {sp['shrunk fp32']:.2f}x: "
          f"{'met' if ok else 'NOT met'}")
    if name in DENSE_X:
        need = DENSE_X[name]
        print(f"  check {name}: int8 {sp['shrunk int8']:.2f}x over dense >= {need}x: "
              f"{'met' if sp['shrunk int8'] >= need else 'NOT met'}")
    if name == "convnext_tiny":
        a = agree["shrunk int8"]
        print(f"  check {name}: int8 top-1 agreement {a:.3f} >= {AGREE}: {'met' if a >= AGREE else 'NOT met'}")
    if "TP int8" in sp:
        print(f"  vs Torch-Pruning: surgeon int8 {sp['shrunk int8']:.2f}x, TP int8 {sp['TP int8']:.2f}x; "
              f"fp32 {sp['shrunk fp32']:.2f}x vs {sp['TP fp32']:.2f}x")


FASHION = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist(n_train: int) -> tuple[torch.Tensor, ...]:
    import gzip

    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(FASHION / name) as f:
            return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)

    xtr = torch.from_numpy(read("train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).copy()).float() / 255
    ytr = torch.from_numpy(read("train-labels-idx1-ubyte.gz", 8).astype(np.int64))
    xte = torch.from_numpy(read("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).copy()).float() / 255
    yte = torch.from_numpy(read("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64))
    return xtr[:n_train], ytr[:n_train], xte, yte


def fashion_cnn() -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def file_accuracy(path: str, x: torch.Tensor, y: torch.Tensor) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: b.numpy()})[0].argmax(-1) for b in x.split(500)])
    return float((pred == y.numpy()).mean())


def accuracy(args) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    from export_int8 import digits, train

    export = surgeon.exporters.onnx.export
    cases = []
    if FASHION.is_dir():
        xtr, ytr, xte, yte = fashion_mnist(args.fashion_train)
        cases.append(("Fashion-MNIST CNN", fashion_cnn(), xtr, ytr, xte, yte, 3))
    else:
        print(f"{FASHION} not found (apt-get install dataset-fashion-mnist): Fashion-MNIST skipped")
    xtr, ytr, xte, yte = digits()
    cases.append(("digits MLP", torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                                    torch.nn.Linear(256, 128), torch.nn.ReLU(),
                                                    torch.nn.Linear(128, 10)), xtr, ytr, xte, yte, 15))
    with tempfile.TemporaryDirectory() as tmp:
        for label, net, xtr, ytr, xte, yte, epochs in cases:
            torch.manual_seed(0)
            t0 = time.perf_counter()
            dense = train(net, xtr, ytr, epochs)
            small = train(surgeon.shrink(dense, xtr[:1], target=TARGET), xtr, ytr, 1)
            f32 = export(small, xtr[:1], os.path.join(tmp, "f.onnx"))
            q = export(small, xtr[:1], os.path.join(tmp, "q.onnx"), quantize="auto",
                       calibration=list(xtr[:512].split(32)))
            a32, a8 = file_accuracy(f32.path, xte, yte), file_accuracy(q.path, xte, yte)
            print(f"{label}: shrunk to {TARGET} ({f32.params} parameters), test split of {len(yte)}: fp32 file "
                  f"{100 * a32:.2f}%, {q.quantize} int8 file {100 * a8:.2f}% ({100 * (a8 - a32):+.2f} points; "
                  f"<= 0.5 lost: {'met' if a32 - a8 <= 0.005 else 'NOT met'}); report agreement {q.agreement:.3f} "
                  f"on {q.agreement_inputs}; {time.perf_counter() - t0:.0f} s", flush=True)
            for line in q.fp32_nodes:
                print(f"    {line}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--calib", type=int, default=32, help="calibration samples (default 32)")
    ap.add_argument("--no-peer", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--cli", action="store_true", help="the files the console script writes (no peer)")
    ap.add_argument("--all-threads", action="store_true", help="also time on all threads (wall clock)")
    ap.add_argument("--tp-steps", type=int, default=6, help="bisection steps on the TP channel ratio (default 6)")
    ap.add_argument("--tp-limit", type=float, default=120.0, help="seconds per Torch-Pruning step (default 120)")
    ap.add_argument("--accuracy", action="store_true", help="accuracy on Fashion-MNIST and digits instead")
    ap.add_argument("--fashion-train", type=int, default=20000, help="Fashion-MNIST training images (default 20000)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    if args.accuracy:
        accuracy(args)
        return
    print(f"target {TARGET} of the FLOPs; onnxruntime CPU ({os.cpu_count()} cores), {args.rounds} interleaved "
          f"rounds; speed-up = 1 / median(variant/dense per round) ± IQR; calibration {args.calib} N(0,1) samples")
    for name in args.models.split(","):
        print(f"\n== {name}", flush=True)
        model, x = build(name)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                files, flops, agree = (files_cli(name, tmp, args) if args.cli else
                                       files_for(name, model.eval(), x, tmp, args))
            except Exception as exc:  # noqa: BLE001 - one model's failure is a result, not the end
                print(f"  {name} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                continue
            cols = {"ort 1t cpu": timed(files, x, args.rounds, 1)}
            if args.all_threads:
                n = os.cpu_count() or 1
                cols[f"ort {n}t wall"] = timed(files, x, max(5, args.rounds // 2), n)
        print(f"  {'':14s} {'FLOPs':>6s} " + " ".join(f"{c:>26s}" for c in cols))
        for label in files:
            cells = [f"{c[label][0]:8.2f} ms {c[label][1]:5.2f}x ±{c[label][2]:4.2f}" for c in cols.values()]
            print(f"  {label:14s} {flops[label]:6.3f} " + " ".join(f"{c:>26s}" for c in cells), flush=True)
        checks(name, cols["ort 1t cpu"], agree)


if __name__ == "__main__":
    main()
