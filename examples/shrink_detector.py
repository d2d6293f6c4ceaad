"""Shrink a torchvision detector (Faster R-CNN, MobileNetV3-FPN) to half its FLOPs.

A detector's ``forward`` is not one graph: anchors, NMS and the boxes it keeps depend on the data.
surgeon captures the largest submodules that are graphs (the backbone with its FPN, the RPN head,
the box head) and leaves the code between them opaque: widths that cross it keep their size, the
widths inside each part are pruned. The plan's report names the parts.

A Mask or Keypoint R-CNN runs its per-box heads once per box it returns, so its FLOPs depend on
how many boxes pass the score threshold, which with random weights changes with any pruning.
``box_score_thresh=0.0`` (the model's own setting) makes every image return
``box_detections_per_img`` boxes, dense and pruned alike, so the FLOPs on an image compare the
same work. (With the default threshold the landing counts at the dense model's workload and warns
when the pruned model's own forward does other work.)

    python examples/shrink_detector.py
"""

import torch
import torchvision

import surgeon
from surgeon.verify import count_flops

torch.manual_seed(0)
model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
    weights=None, weights_backbone=None, box_score_thresh=0.0).eval()
images = ([torch.rand(3, 320, 320)],)  # the model's own input: a list of images

plan = surgeon.plan(model, images, target=0.5, verify=True)
small = surgeon.apply(model, plan)
print(plan.report())

with torch.no_grad():
    dense, out = model(*images), small(*images)
print(f"FLOPs kept on this image: {count_flops(small, images) / count_flops(model, images):.3f}")
print(f"output fields: {sorted(dense[0])} -> {sorted(out[0])}")
print(f"boxes returned: {len(dense[0]['boxes'])} -> {len(out[0]['boxes'])}")
print(f"parameters: {sum(p.numel() for p in model.parameters()):,} -> {sum(p.numel() for p in small.parameters()):,}")
