"""Feature matching for :func:`surgeon.recover`: a module's output in the student is pulled towards
the same module's output in the teacher, at the channels that survived.

The plan knows which channels survived: a module whose ``weight`` was sliced along dim 0 (a
convolution's or linear layer's output units, a norm's channels) keeps the indices of that
:class:`~surgeon.slicing.edits.Slice`, so the teacher's output is indexed with them along the one
dimension where the two outputs differ in size. A module whose output width was not cut is
compared whole. The loss of one module is the mean squared error divided by the variance of the
teacher's feature (so modules of any scale weigh alike), or with ``kind="cosine"`` one minus the
cosine similarity along the last dimension (a transformer block's hidden state per token, as
DistilBERT matches them); either is averaged over the modules.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .criteria._data import DataError

__all__ = ["FeatureMatch", "KINDS"]

KINDS = ("mse", "cosine")


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise DataError(f"feature matching: a module returned {type(out).__name__}, not a tensor; name "
                    f"modules whose output is a tensor (convolutions, linear layers, norms, blocks)")


class FeatureMatch:
    """Forward hooks on ``names`` in both models; :meth:`loss` after each pair of forwards."""

    def __init__(self, student: nn.Module, teacher: nn.Module, names: Sequence[str], plan: Any = None,
                 kind: str = "mse"):
        if kind not in KINDS:
            raise ValueError(f"feature matching: kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        kept = {s.tensor: torch.as_tensor(s.keep, dtype=torch.long) for s in (plan.slices if plan else ())
                if s.dim == 0}
        self.names = list(names)
        self.keep = {n: kept.get(f"{n}.weight") for n in self.names}
        self.got: dict[tuple[str, str], torch.Tensor] = {}
        self.handles: list = []
        for side, model in (("student", student), ("teacher", teacher)):
            for n in self.names:
                try:
                    mod = model.get_submodule(n)
                except AttributeError as exc:
                    self.close()
                    raise DataError(f"feature matching: the {side} has no module {n!r} (a layer the plan "
                                    f"dropped?); name modules both models have") from exc
                self.handles.append(mod.register_forward_hook(self._hook(side, n)))

    def _hook(self, side: str, name: str):
        def hook(_mod, _args, out):
            self.got[(side, name)] = _first_tensor(out)
        return hook

    def loss(self) -> torch.Tensor:
        losses = []
        for n in self.names:
            s, t = self.got.pop(("student", n)), self.got.pop(("teacher", n)).detach()
            s, t = s.float(), self._align(n, s, t).float()
            if self.kind == "cosine":
                losses.append((1 - F.cosine_similarity(s, t, dim=-1)).mean())
            else:
                losses.append(F.mse_loss(s, t) / t.var().clamp_min(1e-8))
        return torch.stack(losses).mean()

    def _align(self, name: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if s.shape == t.shape:
            return t
        differ = [d for d in range(t.dim()) if s.dim() == t.dim() and s.shape[d] != t.shape[d]]
        idx = self.keep[name]
        if len(differ) != 1 or idx is None or len(idx) != s.shape[differ[0]]:
            raise DataError(f"feature matching at {name!r}: the student's output {tuple(s.shape)} and the "
                            f"teacher's {tuple(t.shape)} differ, and the plan does not say which channels "
                            f"survived (pass plan=the plan that shrank it, or name a module whose weight it sliced)")
        return t.index_select(differ[0], idx.to(t.device))

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
