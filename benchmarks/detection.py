"""torchvision detection at half the FLOPs: surgeon (partial capture) beside Torch-Pruning.

Each of the seven torchvision detectors is built with random weights and called in eval mode on a
list of one random 320x320 image (the model's own transform resizes it as it does any image). Per
model and engine: whether it ran, the FLOPs kept (``FlopCounterMode`` on the whole model, the
same count for both), whether the output keeps its structure (the same fields per image; the
boxes' count may differ) and the wall time.

* ours:   ``surgeon.shrink(model, images, target=0.5)``; the parts it captured are printed. Its
  landing counts FLOPs at the dense model's workload (each part on the inputs it had; see
  ``surgeon.graph.partial``), also printed: a detector's heads run once per box it keeps, and
  with random weights a pruned model may keep another number of boxes than the dense one.
* theirs: Torch-Pruning ``MetaPruner`` with ``GroupMagnitudeImportance(p=2)`` at
  ``pruning_ratio=0.5`` (channel ratio: it does not aim at a FLOPs target), the last layer of every
  head in ``ignored_layers`` as its detection examples do.

    python benchmarks/detection.py [--models fasterrcnn_resnet50_fpn,...] [--no-peer]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import surgeon  # noqa: E402
from surgeon.verify import count_flops  # noqa: E402

MODELS = ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssd300_vgg16",
          "ssdlite320_mobilenet_v3_large", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn")


def build(name: str):
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None).eval()
    return model, ([torch.rand(3, 320, 320)],)


def fields(out) -> list:
    return [sorted(d) for d in out]


def ours(model, x) -> dict:
    t0 = time.perf_counter()
    plan = surgeon.plan(model, x, target=0.5, verify=True)
    small = surgeon.apply(model, plan)
    seconds = time.perf_counter() - t0
    return {"model": small, "seconds": seconds, "parts": dict(plan.extra).get("captured_parts", "whole"),
            "workload": plan.ratio}


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


def run(name: str, engine, x_model) -> str:
    model, x = x_model
    base = count_flops(model, x)
    with torch.no_grad():
        want = fields(model(*x))
    try:
        r = engine(model, x)
        with torch.no_grad():
            same = fields(r["model"](*x)) == want
        kept = count_flops(r["model"], x) / base
    except Exception as exc:  # noqa: BLE001 - a failure is a row of the table
        return f"FAILS ({type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''})"
    ok = same and abs(kept - 0.5) <= 0.01
    at = f" (at the dense workload {r['workload']:.4f})" if "workload" in r else ""
    return (f"{'ok' if ok else 'off'} kept {kept:.4f}{at} fields {'same' if same else 'CHANGED'} "
            f"{r['seconds']:.0f} s" + (f" parts: {r['parts']}" if r["parts"] else ""))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-peer", action="store_true", help="skip Torch-Pruning")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    landed = 0
    names = args.models.split(",")
    for name in names:
        built = build(name)
        row = run(name, ours, built)
        landed += row.startswith("ok")
        print(f"{name:32s} surgeon        {row}", flush=True)
        if not args.no_peer:
            print(f"{name:32s} Torch-Pruning  {run(name, theirs, built)}", flush=True)
    print(f"surgeon: {landed}/{len(names)} at 0.50 +/- 0.01 of the FLOPs with the output fields kept")


if __name__ == "__main__":
    main()
