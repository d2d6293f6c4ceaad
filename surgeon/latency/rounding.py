"""Widths a runtime runs fast: ``round_to="auto"`` picks the multiple per runtime and per group.

Measured on this project's CI machine (AMD EPYC, AVX-512, onnxruntime 1.31 CPU, 1 thread; a
conv at 28x28, interleaved timing, ratio to the 128-wide layer):

* a 1x1 conv 128 -> w costs 0.78 at w=96, 0.88-0.90 for w=100..112 and 1.00 for w=116..128:
  onnxruntime's NCHWc kernels pad channels to blocks of 16 (8 on AVX2-only CPUs), so a width
  just above a multiple of 16 pays for the whole next block;
* a depthwise 3x3 conv of width w costs 0.88-0.90 for w = 100, 104, 112 but 2.6-3.0 for
  w = 97, 98, 102, 110: widths that are not multiples of 4 fall off the blocked kernels
  altogether, which is why an unrounded MobileNet-V2 at half the FLOPs ran slower than dense.

GPUs (fp16 tensor cores) want multiples of 8. With no runtime named, "auto" uses 16, a multiple
of both blocks: at half the FLOPs MobileNet-V2 ran 1.19x faster than dense with steps of 8 and
1.37x with steps of 16 (onnxruntime CPU, 1 thread, CPU time, interleaved), ResNet-50 1.84x and
1.87x, ConvNeXt-T 1.76x and 1.77x.

Narrow groups get whole blocks too. A group at least one block wide keeps a multiple of the
block or its full width (24 channels: 16 or 24; 32: 16 or 32); a group narrower than one block is
not pruned at all, since every width in it pads to the same block. The step is chosen from the
group's width in channels (a unit may hold several: an attention head), then turned into units.
Earlier, groups under four blocks got steps of 8 or 4 "so that small groups still shrink", and
MobileNet-V2's first stages (112x112 and 56x56: 40% of its time on onnxruntime, 30% of its
FLOPs) kept 24 of 32, 8 of 16 and 20 of 24 channels. Those widths fall off the
blocked kernels: that stage (depthwise 3x3, 1x1 to 16, 1x1 expand to 64, depthwise stride 2, at
112x112) ran 1.29x *slower* at widths (24, 8) than at the full (32, 16), 1.32x slower at (32, 12),
and 0.75x at (16, 16). The FLOPs those widths saved were taken from layers where they would have
saved time, and the default shrink ran 1.58x faster than dense against 1.86x with whole blocks
(same FLOPs, 0.500; Torch-Pruning with round_to=8 1.62x and 16 1.84x, interleaved, 40 rounds).
ResNet-50, ConvNeXt-T and ViT-B/16 have no group under 64 channels, so their plans are unchanged.
Other models with narrow groups gained as much (default shrink at 0.500 FLOPs, before -> after,
same machine, 40 interleaved rounds): MobileNet-V3-L 1.66x -> 1.90x, MobileNet-V3-S 1.48x ->
1.71x, EfficientNet-B0 1.76x -> 1.88x, MNASNet-0.5 1.45x -> 1.82x, ShuffleNet-V2-0.5 1.29x ->
1.76x; RegNet-X-400MF 1.76x -> 1.77x.
A plan that cannot land on a counted target with these steps is planned unrounded (``AUTO_SLACK``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

__all__ = ["AutoRound", "preferred_multiple", "resolve"]

AUTO_SLACK = 0.002  # "auto" plans that land further than this from a counted target are not rounded


@functools.lru_cache(maxsize=None)
def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return "avx512f" in f.read()
    except OSError:  # not Linux: assume the narrower block, which is never wrong by much
        return False


def preferred_multiple(runtime: str | None) -> int:
    """The channel multiple ``runtime`` runs fastest at (see the module docstring)."""
    if runtime == "ort-cpu":
        return 16 if _cpu_has_avx512() else 8
    if runtime == "torch-cuda":
        return 8  # fp16 tensor cores
    return 16  # no runtime named: a multiple of every block above (8, 16)


@dataclass(frozen=True)
class AutoRound:
    """Per-group rounding to whole blocks of ``multiple`` channels: a group at least one block
    wide keeps a multiple of the block (or its full width); a narrower group is not pruned."""

    multiple: int

    def for_group(self, width: int) -> int:
        """The channel step of a group ``width`` channels wide (its units times their channels);
        a step of the whole width leaves the group as it is."""
        return self.multiple if width >= self.multiple else max(int(width), 1)

    def __str__(self) -> str:
        return f"auto({self.multiple})"


def resolve(round_to, runtime: str | None):
    """What the planner uses for a user's ``round_to`` (None, an int, or "auto")."""
    if round_to == "auto":
        return AutoRound(preferred_multiple(runtime))
    return round_to


def is_valid(round_to) -> bool:
    return round_to is None or round_to == "auto" or (
        isinstance(round_to, int) and not isinstance(round_to, bool) and round_to >= 1)
