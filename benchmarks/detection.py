"""torchvision detection at half the FLOPs: surgeon (partial capture) beside Torch-Pruning.

Each of the seven torchvision detectors is built with random weights and called in eval mode on a
list of one random 320x320 image (the model's own transform resizes it as it does any image). Per
model and engine: whether it ran, the FLOPs kept on the pruned model's own forward
(``torch.utils.flop_counter.FlopCounterMode`` on the whole model, the same count for both), the
boxes returned (dense -> pruned), whether the output keeps its structure (the same fields per
image; the boxes' count may differ), whether an ``OffTargetWarning`` fired, the wall time and the
peak memory of the process. Every (model, engine) runs in a process of its own, stopped (a row
that says so) when it holds more than ``--cap-gb`` of memory.

The configuration (``--config``):

* ``fixed`` (the default): every detector is built with its score threshold at 0.0, by its own
  constructor argument (``box_score_thresh`` for the R-CNN family, ``score_thresh`` for the
  others). A two-stage detector runs its per-box heads (the mask and keypoint heads) once per box
  it returns, and how many boxes pass the default threshold (0.05 for the R-CNNs) is an accident of random
  weights (Keypoint R-CNN: 11 dense, 100 after pruning), so a FLOPs ratio on the model's own
  forward would measure that accident. At 0.0 every image returns the model's
  ``box_detections_per_img`` / ``detections_per_img`` boxes, dense and pruned alike: the full
  workload the model is built for. The one-stage detectors run their heads on every anchor
  whatever the scores (their FLOPs do not depend on the threshold); at 0.0 they return boxes too,
  rather than none.
* ``default``: every constructor's defaults, to show the accident.

* ours:   ``surgeon.plan(model, images, target=0.5, verify=True)`` and ``surgeon.apply``; the
  parts it captured are printed, and the FLOPs its landing counts, at the dense model's workload
  (each captured part on the inputs it had; :mod:`surgeon.graph.partial`).
* theirs: Torch-Pruning ``MetaPruner`` with ``GroupMagnitudeImportance(p=2)`` at
  ``pruning_ratio=0.5`` (channel ratio: it does not aim at a FLOPs target), the last layer of every
  head in ``ignored_layers`` as its detection examples do.

    python benchmarks/detection.py [--models fasterrcnn_resnet50_fpn,...] [--no-peer] [--config default]
                                   [--cap-gb 4.5]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import surgeon  # noqa: E402

MODELS = ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssd300_vgg16",
          "ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn")
RCNN = ("fasterrcnn", "maskrcnn", "keypointrcnn")  # the two-stage family: ``box_score_thresh``
ENGINES = ("surgeon", "Torch-Pruning")


def settings(name: str, config: str) -> dict:
    """The constructor arguments of ``config`` beyond the weights (see the module docstring)."""
    if config != "fixed":
        return {}
    return {"box_score_thresh" if name.startswith(RCNN) else "score_thresh": 0.0}


def build(name: str, config: str = "fixed"):
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None,
                                                        **settings(name, config)).eval()
    return model, ([torch.rand(3, 320, 320)],)


def counted(model, x) -> tuple[int, list]:
    """FLOPs of the model's own forward on ``x`` (FlopCounterMode) and its output, in one run."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(*x)
    return int(counter.get_total_flops()), out


def ours(model, x) -> dict:
    t0 = time.perf_counter()
    a = surgeon.analyze(model, x)
    plan = surgeon.plan(model, x, target=0.5, verify=True, analysis=a)
    small = surgeon.apply(model, plan)
    seconds = time.perf_counter() - t0
    extra = dict(plan.extra)
    workload = a.traced.gm.flops(small) / a.traced.total_flops() if a.traced.parts else None
    return {"model": small, "seconds": seconds, "parts": extra.get("captured_parts", "whole"),
            "workload": workload}


def _heads(model) -> list:
    """The last layer of every head: what Torch-Pruning's detection examples keep whole."""
    from torch import nn

    out = []
    for name, m in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) and (
                last in ("cls_logits", "bbox_pred", "bbox_reg", "cls_score", "kps_score_lowres", "mask_fcn_logits",
                         "conv5_mask") or "head" in name and name.endswith(("cls_logits", "bbox_reg", "bbox_ctrness"))):
            out.append(m)
    for name in ("head.classification_head.module_list", "head.regression_head.module_list"):
        try:
            out.extend(model.get_submodule(name).modules())
        except AttributeError:
            pass
    return out


def theirs(model, x) -> dict:
    import torch_pruning as tp

    net = copy.deepcopy(model)
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(net, x, tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                                  ignored_layers=_heads(net), global_pruning=False)
    pruner.step()
    return {"model": net, "seconds": time.perf_counter() - t0, "parts": ""}


def one(name: str, engine: str, config: str) -> dict:
    """One (model, engine) measured: the row as a dict (run in a process of its own)."""
    model, x = build(name, config)
    base, dense = counted(model, x)
    row = {"model": name, "engine": engine, "config": config, "boxes_dense": [len(d["boxes"]) for d in dense]}
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            r = (ours if engine == "surgeon" else theirs)(model, x)
        flops, out = counted(r["model"], x)
    except Exception as exc:  # noqa: BLE001 - a failure is a row of the table
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"
        return row
    row.update(kept=flops / base, workload=r.get("workload"), seconds=r["seconds"], parts=r["parts"],
               same=[sorted(d) for d in out] == [sorted(d) for d in dense],
               boxes=[len(d["boxes"]) for d in out],
               warned=[str(w.message)[:160] for w in seen if isinstance(w.message, surgeon.OffTargetWarning)])
    return row


def _line(r: dict) -> str:
    head = f"{r['model']:32s} {r['engine']:14s}"
    if "error" in r:
        return f"{head} FAILS ({r['error']})"
    ok = r["same"] and abs(r["kept"] - 0.5) <= 0.01
    at = f" (at the dense workload {r['workload']:.4f})" if r["workload"] is not None else ""
    return (f"{head} {'ok' if ok else 'off'} kept {r['kept']:.4f}{at} boxes {r['boxes_dense']} -> {r['boxes']} "
            f"fields {'same' if r['same'] else 'CHANGED'} {r['seconds']:.0f} s, peak {r['peak_mb']:.0f} MB"
            + (" OffTargetWarning" if r["warned"] else "") + (f" parts: {r['parts']}" if r["parts"] else ""))


def _table(rows: list[dict]) -> str:
    """The markdown table of benchmarks/README.md."""
    def cell(r):
        if r is None:
            return "not run"
        if "error" in r:
            return f"fails (`{r['error'][:60]}`)"
        tail = "" if r["same"] else ", fields CHANGED"
        return f"{r['kept']:.4f} ({r['boxes_dense'][0]}->{r['boxes'][0]} boxes{tail})"

    by = {(r["model"], r["engine"]): r for r in rows}
    out = ["| model | surgeon, own forward | surgeon, at dense workload | Torch-Pruning, own forward |",
           "|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        s = by.get((name, "surgeon"))
        w = f"{s['workload']:.4f}" if s and s.get("workload") is not None else "-"
        out.append(f"| {name} | {cell(s)} | {w} | {cell(by.get((name, 'Torch-Pruning')))} |")
    return "\n".join(out)


def _rss_gb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return kb / 2**20


def _child(name: str, engine: str, config: str, cap_gb: float) -> dict:
    """One row from a process of its own, stopped when its resident memory passes ``cap_gb`` (the
    box is shared; Torch-Pruning on Mask R-CNN grew past 16 GB here and was killed by the kernel)."""
    cmd = [sys.executable, __file__, "--one", name, engine, "--config", config]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peak = 0.0
        while child.poll() is None:
            peak = max(peak, _rss_gb(child.pid))
            if peak > cap_gb:
                child.kill()
                child.wait()
                return {"model": name, "engine": engine,
                        "error": f"stopped: it held more than {cap_gb:g} GB of memory"}
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        last = out.read().strip().splitlines()[-1:] if child.returncode == 0 else []
        if last:
            return json.loads(last[0])
        return {"model": name, "engine": engine,
                "error": f"the process died (exit {child.returncode}): {err.read().strip()[-200:]}"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-peer", action="store_true", help="skip Torch-Pruning")
    ap.add_argument("--config", choices=("fixed", "default"), default="fixed")
    ap.add_argument("--cap-gb", type=float, default=4.5,
                    help="stop a row whose process holds more memory (resident) than this")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.one:  # a child: one row, as JSON on the last line
        row = one(*args.one, args.config)
        row["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(row))
        return
    names = args.models.split(",")
    engines = ENGINES[:1] if args.no_peer else ENGINES
    print(f"config {args.config}: " + "; ".join(f"{n} {settings(n, args.config)}" for n in names
                                                if settings(n, args.config)), flush=True)
    rows = []
    for name in names:
        for engine in engines:
            rows.append(_child(name, engine, args.config, args.cap_gb))
            print(_line(rows[-1]) if "peak_mb" in rows[-1] or "error" in rows[-1] else rows[-1], flush=True)
    landed = sum("error" not in r and r["engine"] == "surgeon" and r["same"] and abs(r["kept"] - 0.5) <= 0.01
                 for r in rows)
    print(f"surgeon: {landed}/{len(names)} at 0.50 +/- 0.01 of the FLOPs on its own forward, output fields kept")
    print(_table(rows))


if __name__ == "__main__":
    main()
