"""The criteria that need only the weights, and the helpers every criterion shares
(see :mod:`surgeon.criteria` for how scores are combined and normalised)."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn

from .. import _walks
from ..graph.groups import PruneGroup
from .._gc import own_loop

__all__ = ["Criterion", "Magnitude", "BNScale", "Random", "combine", "per_index", "layer_rms"]


class Criterion(Protocol):
    """``score`` returns one array per group, one score per unit, higher = more important.
    A criterion may set ``per_group = True`` when a group's scores depend on that group alone;
    ``plan``/``shrink`` then score only the groups they may prune."""

    name: str

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]: ...


def _tensor(model: nn.Module, qualname: str) -> torch.Tensor | None:
    mod_name, _, leaf = qualname.rpartition(".")
    try:
        mod = model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        return None
    t = mod._parameters.get(leaf)
    return t.detach() if t is not None else None


def per_index(t: torch.Tensor, dim: int, p: int) -> np.ndarray:
    """``sum |t|^p`` over every dim but ``dim``."""
    return _sum_but(_powered(t, p), dim).cpu().numpy().astype(np.float64)


def _powered(t: torch.Tensor, p: int) -> torch.Tensor:
    """``|t|^p`` in float32, p = 1 or 2 (``t * t`` equals ``|t| * |t|``), as a new tensor."""
    x = t if t.dtype == torch.float32 else t.float()
    return x * x if p == 2 else x.abs()


CHUNK = 1 << 23  # elements (32 MB in float32): the scratch buffer |t|^p is written into
SMALL = 1 << 18  # elements (1 MB): smaller tensors get a plain temporary


class _Scratch:
    """One float32 buffer that every tensor's ``|t|^p`` is written into, in blocks of rows where a
    tensor is bigger than it. A fresh temporary per tensor would leave the allocator's heap at
    the size of the biggest few (glibc keeps freed blocks under 32 MB): on a 600M-parameter
    Llama, scoring held 0.6x the weights that way, and 0.01x this way."""

    def __init__(self, tensors):
        biggest = max((t.numel() for t in tensors), default=0)
        self.buf = torch.empty(min(biggest, CHUNK), dtype=torch.float32)

    def powered(self, t: torch.Tensor, p: int) -> torch.Tensor:
        """``|t|^p`` in float32 (t has at most CHUNK elements), in the buffer: valid until the next call."""
        if t.numel() < SMALL or t.device != self.buf.device or t.numel() > self.buf.numel():
            return _powered(t, p)  # a small temporary costs less than the view (and the heap reuses it)
        x = self.buf[:t.numel()].view(t.shape)
        if t.dtype == torch.float32:  # one pass, as ``t * t`` makes it
            return torch.mul(t, t, out=x) if p == 2 else torch.abs(t, out=x)
        x.copy_(t)
        return x.mul_(x) if p == 2 else x.abs_()

    def sums(self, t: torch.Tensor, dims: list[int], p: int) -> list[torch.Tensor]:
        """``sum |t|^p`` over every dim but ``d``, for each ``d`` in ``dims``."""
        if t.numel() <= CHUNK or t.dim() < 2 or t.device != self.buf.device:
            x = self.powered(t, p)
            return [_sum_but(x, d) for d in dims]
        rows = max(1, CHUNK // max(1, t[0].numel()))
        parts: list[list[torch.Tensor]] = [[] for _ in dims]
        for start in range(0, t.shape[0], rows):
            x = self.powered(t[start:start + rows], p)
            for i, d in enumerate(dims):
                parts[i].append(_sum_but(x, d))
        return [torch.cat(ps) if d == 0 else torch.stack(ps).sum(0) for d, ps in zip(dims, parts)]


def _sum_but(x: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [d for d in range(x.dim()) if d != dim]
    return x.sum(dim=dims) if dims else x


def layer_rms(model: nn.Module, layers: list[str]) -> np.ndarray:
    """Root-mean-square of all the weights of each layer: a data-free score for whole layers."""
    out = np.zeros(len(layers))
    for i, name in enumerate(layers):
        ps = [p.detach().float() for p in model.get_submodule(name).parameters()]
        n = sum(p.numel() for p in ps)
        out[i] = float(sum((p * p).sum() for p in ps) / max(n, 1)) ** 0.5
    return out


def combine(group: PruneGroup, member_scores: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Sum of mean-normalised per-unit scores. ``member_scores``: (unit_of, per-index score)."""
    return _combine([group], [0] * len(member_scores), [u for u, _ in member_scores],
                    [s for _, s in member_scores])[0]


def _combine(groups: list[PruneGroup], group_of: list[int], unit_of: list[np.ndarray], scores: list) -> list[np.ndarray]:
    """:func:`combine` for many groups at once: member k of group ``group_of[k]`` has units
    ``unit_of[k]`` and per-index ``scores[k]``; each group's members are added in the order given."""
    n_units = np.array([g.n_units for g in groups], dtype=np.int64)
    total = np.zeros(int(n_units.sum()))
    offsets = np.cumsum(n_units) - n_units
    if group_of:
        gi = np.array(group_of, dtype=np.int64)
        # Per-unit sums, one block per member. Groups with as many units and members are handled
        # together: their blocks lie one after another, group by group, each in member order.
        n, count = n_units[gi], np.bincount(gi, minlength=len(groups))[gi]
        order = np.lexsort((gi, count, n))
        identity: dict[int, bool] = {}  # id(unit_of) -> each index is its own unit
        ramp = np.arange(int(n.max()))
        blocks = []
        for k in order.tolist():
            u, size, s = unit_of[k], n_units[group_of[k]], scores[k]
            if id(u) not in identity:
                identity[id(u)] = len(u) == size and bool((u == ramp[:size]).all())
            if identity[id(u)] and len(s) == size:
                blocks.append(s)
            else:
                blocks.append(np.bincount(u, weights=s, minlength=size))
                if len(blocks[-1]) != size:
                    raise ValueError(f"unit_of names unit {len(blocks[-1]) - 1} of a group of {size} units")
        per_unit = np.concatenate(blocks, dtype=np.float64, casting="same_kind")
        per_unit += 0.0  # as a sum from zero: -0.0 becomes 0.0
        at = first = 0  # where the run starts in per_unit and in order
        for size, members, length in _runs(n[order], count[order]):
            rows = per_unit[at: at + size * length].reshape(length, size)
            heads = gi[order[first: first + length: members]]  # the run's groups
            at, first = at + size * length, first + length
            if size == 0:
                continue
            mean = rows.mean(axis=1)  # each block summed as alone
            used = mean > 0  # a member whose scores are all zero adds nothing
            np.divide(rows, mean[:, None], out=rows, where=used[:, None])
            rows[~used] = 0.0
            part = rows.reshape(-1, members, size)
            # each group's members added one after another, as a running sum from zero would
            if members <= 16:
                summed = np.zeros((len(part), size))
                for j in range(members):
                    summed += part[:, j]
            else:
                part[:, 0] += 0.0  # the first addition, to zero (-0.0 becomes 0.0)
                summed = np.add.accumulate(part, axis=1)[:, -1]
            total[offsets[heads][:, None] + np.arange(size)] = summed
    ends = np.cumsum(n_units).tolist()
    return [total[e - n: e] for e, n in zip(ends, n_units.tolist())]  # (np.split is slower)


def _runs(sizes: np.ndarray, counts: np.ndarray) -> list[tuple[int, int, int]]:
    """(size, count, length) of each run of equal (size, count) pairs."""
    cut = np.flatnonzero(np.diff(sizes) | np.diff(counts)) + 1
    first = np.r_[0, cut]
    return list(zip(sizes[first].tolist(), counts[first].tolist(), np.diff(np.r_[first, len(sizes)]).tolist()))


class Magnitude:
    """L1 or L2 norm of every parameter slice a unit owns (conv/linear rows and columns, norm
    affine parameters), mean-normalised per member and summed."""

    per_group = True  # a group's scores depend on that group alone

    def __init__(self, p: int = 2):
        self.p = p
        self.name = f"l{p}"

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        with torch.no_grad():
            return self._score(model, groups)

    @own_loop
    def _score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        parts, dims_of, tensors = magnitude_members(model, groups)
        if not parts:
            return [np.zeros(g.n_units) for g in groups]
        # Per-index scores: sum |t|^p over every dim but the member's, |t|^p once per tensor. A
        # vector needs no sum: all of them are powered at once.
        vectors = [n for n in dims_of if tensors[n].dim() == 1]
        devices = {tensors[n].device for n in dims_of}
        if len({tensors[n].device for n in vectors}) > 1:
            vectors = []
        found = []  # float32 score vectors, one after another
        span: dict[tuple[str, int], slice] = {}  # (tensor, dim) -> where its scores lie in ``found``
        at = 0
        if vectors:
            found.append(_powered(torch.cat([tensors[n].float() for n in vectors]), self.p))
            for n in vectors:
                size = tensors[n].shape[0]
                span[n, 0] = slice(at, at + size)
                at += size
        scratch = _Scratch(tensors[n] for n in dims_of if tensors[n].device.type == "cpu")
        for name, dims in dims_of.items():
            if vectors and tensors[name].dim() == 1:
                continue
            for d, sums in zip(dims, scratch.sums(tensors[name], dims, self.p)):
                found.append(sums)
                n = sums.shape[0]  # not len(): Tensor.__len__ is Python code
                span[name, d] = slice(at, at + n)
                at += n
        if devices != {torch.device("cpu")}:
            found = [f.cpu() for f in found]
        flat = torch.cat(found).numpy()
        return _combine(groups, [p[0] for p in parts], [p[3] for p in parts],
                        [flat[span[name, dim]] for _, name, dim, _ in parts])


def magnitude_members(model: nn.Module, groups: list[PruneGroup]):
    """What :class:`Magnitude` scores, as (parts, dims_of, tensors): every member with a parameter
    slice to score as (group index, tensor name, dim, unit_of); each tensor's member dims in
    first-use order; the tensors by name (None for a name with no tensor)."""
    params = _walks.parameters(model)
    tensors: dict[str, torch.Tensor | None] = {}
    ndim: dict[str, int] = {}
    dims_of: dict[str, list[int]] = {}
    parts = []
    for gi, g in enumerate(groups):
        for m in g.members:
            key = m.key
            if key[0] != "p":
                continue
            _, name, dim = key
            nd = ndim.get(name)
            if nd is None:
                t = tensors[name] = params[name] if name in params else _tensor(model, name)
                nd = ndim[name] = -1 if t is None else t.dim()
            if nd > dim:
                parts.append((gi, name, dim, m.unit_of))
                dims = dims_of.get(name)
                if dims is None:
                    dims_of[name] = [dim]
                elif dim not in dims:
                    dims.append(dim)
    return parts, dims_of, tensors


class BNScale:
    """|gamma| of the BatchNorm layers in the group (Network Slimming); groups without a
    BatchNorm fall back to L2 magnitude."""

    name = "bn_scale"
    per_group = True

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        fallback = Magnitude(2).score(model, groups)
        out = []
        for g, fb in zip(groups, fallback):
            parts = []
            for m in g.tensors:
                mod_name, _, leaf = m.name.rpartition(".")
                mod = model.get_submodule(mod_name) if mod_name else model
                if leaf == "weight" and isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    parts.append((m.unit_of, per_index(mod.weight.detach(), 0, 1)))
            out.append(combine(g, parts) if parts else fb)
        return out


class Random:
    """Uniform random scores: the baseline every criterion must beat."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def score(self, model: nn.Module, groups: list[PruneGroup]) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        return [rng.random(g.n_units) for g in groups]
