"""What every exporter module shares: the error type and the inputs surgeon feeds a file."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import SurgeonError

__all__ = ["ExportError", "batch_of", "at_batch", "flat_inputs"]


class ExportError(SurgeonError):
    """The ONNX file could not be written, or onnxruntime disagrees with PyTorch."""


def flat_inputs(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The model's inputs in the order the exported file takes them (positional, then keyword)."""
    return [v for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor)]


def batch_of(args: tuple, kwargs: dict) -> int | None:
    """The batch size of the example (dim 0 of its first tensor), or None if it has none."""
    for t in flat_inputs(args, kwargs):
        return int(t.shape[0]) if t.dim() else None
    return None


def _random_like(t: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` fresh samples shaped like one sample of ``t``, drawn like its values."""
    shape = (n, *t.shape[1:])
    if t.is_floating_point():
        std = float(t.float().std()) if t.numel() > 1 else 1.0
        mean = float(t.float().mean())
        if not (math.isfinite(std) and math.isfinite(mean)):
            std, mean = 1.0, 0.0
        return (torch.randn(shape, generator=gen) * (std or 1.0) + mean).to(t.dtype)
    if t.dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    lo, hi = int(t.min()), int(t.max())
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=t.dtype)


def at_batch(args: tuple, kwargs: dict, n: int, seed: int = 0) -> tuple[tuple, dict]:
    """Random inputs like the example's at batch size ``n`` (tensors of rank 0 are kept)."""
    gen = torch.Generator().manual_seed(seed)

    def one(v: Any) -> Any:
        return _random_like(v, n, gen).to(v.device) if isinstance(v, torch.Tensor) and v.dim() else v

    return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}
