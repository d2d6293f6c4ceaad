"""Per-layer latency tables: one layer's time on a runtime over a grid of kept widths, cached.

A :class:`LayerSig` describes one conv or linear layer of a traced model as a layer that can be
rebuilt on its own (kind, widths, kernel, stride, input size). Its table holds the layer's
latency at every pair of (in, out) width fractions of ``GRID`` (one axis for depthwise and
grouped convs, whose in and out widths move together), each width rounded to the runtime's
preferred multiple so the table is measured where the planner will land. Lookups interpolate
bilinearly, and the table is made monotone (never cheaper at a larger width) before use.

Tables are cached as JSON under ``$SURGEON_CACHE`` (default ``~/.cache/surgeon``)
``/latency/<runtime>-<machine>.json``, keyed by the layer signature; the machine part names the
CPU (or GPU), the onnxruntime or torch version and the thread count, so a table measured
elsewhere is never reused. A cache file that cannot be read as such (truncated, corrupt, or JSON of
another shape) is ignored with a warning naming it, and rewritten with the tables measured again;
writes are atomic, so a concurrent reader sees the old file or the new one, whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._atomic import write_text

__all__ = ["GRID", "LayerSig", "Table", "TableCache", "widths_for", "build_layer"]

GRID = (0.125, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class LayerSig:
    """One layer, rebuildable on its own. ``lead`` is the input shape without the channel dim
    (conv: (batch, *spatial); linear: every leading dim)."""

    kind: str  # "conv", "dwconv" (in = out = groups), "gconv" (groups > 1), "linear"
    cin: int
    cout: int
    lead: tuple[int, ...]
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def one_axis(self) -> bool:
        return self.kind in ("dwconv", "gconv")


def _rounded(n: int, frac: float, step: int) -> int:
    w = int(round(n * frac / step)) * step
    return max(min(w, n), min(step, n), 1)


def widths_for(sig: LayerSig, step: int) -> tuple[list[int], list[int]]:
    """The (out, in) widths a table is measured at (one axis: in follows out)."""
    if sig.one_axis:
        unit = sig.cout // sig.groups  # per-group width stays; the number of groups shrinks
        gs = [_rounded(sig.groups, f, max(1, step // max(1, unit))) for f in GRID]
        return [g * unit for g in gs], [g * (sig.cin // sig.groups) for g in gs]
    return [_rounded(sig.cout, f, step) for f in GRID], [_rounded(sig.cin, f, step) for f in GRID]


def build_layer(sig: LayerSig, cin: int, cout: int) -> tuple[nn.Module, torch.Tensor]:
    """The layer of ``sig`` at widths (cin, cout), and a random input for it."""
    g = torch.Generator().manual_seed(0)
    if sig.kind == "linear":
        layer = nn.Linear(cin, cout, bias=sig.bias)
        x = torch.randn(*sig.lead, cin, generator=g)
    else:
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(sig.kernel)]
        groups = 1 if sig.kind == "conv" else cin // (sig.cin // sig.groups)
        layer = conv(cin, cout, sig.kernel, sig.stride, sig.padding, sig.dilation, groups=groups, bias=sig.bias)
        x = torch.randn(sig.lead[0], cin, *sig.lead[1:], generator=g)
    return layer.eval(), x


@dataclass
class Table:
    """Latency (ms) of one layer at out widths x in widths; one row when ``one_axis``."""

    sig: LayerSig
    out_w: list[int]
    in_w: list[int]
    ms: list[list[float]]  # [i_out][j_in], or [i][0] along the single axis

    def grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(out fractions, in fractions, n x n latency of the fitted surface) for lookups."""
        fo = np.asarray(self.out_w, float) / self.sig.cout
        fi = np.asarray(self.in_w, float) / self.sig.cin
        coef = self.fit()
        fo_g, fi_g = np.meshgrid(fo, fi if not self.sig.one_axis else np.ones(len(GRID)), indexing="ij")
        return fo, (fi if not self.sig.one_axis else np.linspace(0.2, 1.0, len(GRID))), _surface(coef, fo_g, fi_g)

    def fit(self) -> np.ndarray:
        """Non-negative coefficients of ``a + b*f_out + c*f_in + d*f_out*f_in`` (one axis:
        ``a + b*f``) fitted to the measurements, after dropping outliers (a timing that another
        process disturbed), so that the surface is smooth and never cheaper at a larger width."""
        fo = np.asarray(self.out_w, float) / self.sig.cout
        ms = np.asarray(self.ms, float)
        if self.sig.one_axis:
            fo_g, fi_g, y = fo, np.ones_like(fo), ms[:, 0]
        else:
            fi = np.asarray(self.in_w, float) / self.sig.cin
            fo_g, fi_g = np.meshgrid(fo, fi, indexing="ij")
            fo_g, fi_g, y = fo_g.ravel(), fi_g.ravel(), ms.ravel()
        x = _features(fo_g, fi_g)
        coef = _nnls(x, y)
        for _ in range(2):
            res = y - x @ coef
            mad = np.median(np.abs(res - np.median(res))) + 1e-9
            ok = np.abs(res) <= 4 * 1.4826 * mad + 0.02 * np.abs(y)
            coef = _nnls(x[ok], y[ok])
        return coef

    def at(self, f_out: float, f_in: float) -> float:
        fo, fi, ms = self.grid()
        return float(interp2(fo[None], fi[None], ms[None], np.array([f_out]), np.array([f_in]))[0])


def _features(fo: np.ndarray, fi: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(fo), fo, fi, fo * fi], axis=-1)


def _surface(coef: np.ndarray, fo: np.ndarray, fi: np.ndarray) -> np.ndarray:
    return _features(fo, fi) @ coef


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients (a few columns: clamp the most negative, refit)."""
    free = np.ones(x.shape[1], dtype=bool)
    coef = np.zeros(x.shape[1])
    while free.any():
        sol = np.linalg.lstsq(x[:, free], y, rcond=None)[0]
        if (sol >= 0).all():
            coef[:] = 0
            coef[free] = sol
            return coef
        idx = np.nonzero(free)[0][np.argmin(sol)]
        free[idx] = False
    return coef


def _axis(grid: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower index and weight of ``f`` on each row's grid (linear, extrapolated below the grid)."""
    n = grid.shape[1]
    i = np.clip((f[:, None] >= grid[:, 1:-1]).sum(axis=1), 0, n - 2)
    lo = np.take_along_axis(grid, i[:, None], 1)[:, 0]
    hi = np.take_along_axis(grid, i[:, None] + 1, 1)[:, 0]
    w = np.where(hi > lo, (f - lo) / np.maximum(hi - lo, 1e-12), 1.0)
    return i, np.clip(w, -1.0, 1.0)


def interp2(fo: np.ndarray, fi: np.ndarray, ms: np.ndarray, f_out: np.ndarray, f_in: np.ndarray) -> np.ndarray:
    """Bilinear lookup of T tables at once: fo, fi (T, n) grids, ms (T, n, n), f_out/f_in (T,)."""
    i, wi = _axis(fo, f_out)
    j, wj = _axis(fi, f_in)
    t = np.arange(len(ms))
    a, b = ms[t, i, j], ms[t, i + 1, j]
    c, d = ms[t, i, j + 1], ms[t, i + 1, j + 1]
    val = (1 - wi) * (1 - wj) * a + wi * (1 - wj) * b + (1 - wi) * wj * c + wi * wj * d
    return np.maximum(val, 0.0)


Measure = Callable[[Sequence[tuple[nn.Module, torch.Tensor]]], list[float]]


def cache_dir() -> Path:
    root = os.environ.get("SURGEON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "surgeon")
    return Path(root) / "latency"


class TableCache:
    """Tables of one runtime on one machine, read from and written to one JSON file."""

    def __init__(self, runtime: str, machine: str):
        digest = hashlib.sha1(machine.encode()).hexdigest()[:12]
        self.path = cache_dir() / f"{runtime}-{digest}.json"
        self.machine = machine
        self.measured = 0  # tables measured (not found in the cache) by this object
        self.tables = _load(self.path, machine)

    def get(self, sig: LayerSig, step: int, measure: Measure) -> Table:
        hit = self.tables.get(sig.key)
        if hit is not None and hit["step"] == step and _fits(hit, sig):
            return Table(sig, hit["out_w"], hit["in_w"], hit["ms"])
        out_w, in_w = widths_for(sig, step)
        if sig.one_axis:
            cases = [build_layer(sig, i, o) for o, i in zip(out_w, in_w)]
            ms = [[v] for v in measure(cases)]
        else:
            cases = [build_layer(sig, i, o) for o in out_w for i in in_w]
            flat = measure(cases)
            ms = [flat[k * len(in_w):(k + 1) * len(in_w)] for k in range(len(out_w))]
        self.tables[sig.key] = {"step": step, "out_w": out_w, "in_w": in_w, "ms": ms}
        self.measured += 1
        return Table(sig, out_w, in_w, ms)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a concurrent reader sees the old or the new file, never a part
        write_text(self.path, json.dumps({"machine": self.machine, "tables": self.tables}))


def _load(path: Path, machine: str) -> dict:
    """The tables cached in ``path`` for ``machine``; ``{}`` when there are none, with a warning
    when the file is there but is not a cache file this code wrote (it is rewritten on save)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON (e.g. truncated)
        return _ignored(path, f"it cannot be read ({type(exc).__name__}: {str(exc)[:120]})")
    if not isinstance(data, dict):
        return _ignored(path, f"it holds a JSON {_JSON.get(type(data), 'value')}, not an object with "
                              f"'machine' and 'tables'")
    if not isinstance(data.get("tables"), dict):
        return _ignored(path, f"its 'tables' is a JSON {_JSON.get(type(data.get('tables')), 'value')}, "
                              f"not an object")
    if data.get("machine") != machine:
        return {}  # measured elsewhere (or with another library version): never reused
    bad = [k for k, v in data["tables"].items() if not _valid_entry(v)]
    if bad:
        return _ignored(path, f"{len(bad)} of its {len(data['tables'])} tables are malformed")
    return data["tables"]


_JSON = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
         type(None): "null"}


def _ignored(path: Path, why: str) -> dict:
    warnings.warn(f"latency cache file {path} is ignored: {why}. The layers are timed again and the "
                  f"file is rewritten; delete it if this repeats", RuntimeWarning, stacklevel=3)
    return {}


def _fits(entry: dict, sig: LayerSig) -> bool:
    """Whether a (valid) cached table has the axes of ``sig``: one latency per out width along
    the single axis of a depthwise or grouped conv, one per (out, in) pair otherwise."""
    return len(entry["ms"][0]) == (1 if sig.one_axis else len(entry["in_w"]))


def _valid_entry(entry) -> bool:
    """Whether a cached table has the shape :meth:`TableCache.get` writes: an int step, the out and
    in widths, and a finite non-negative latency per (out, in) pair (or per out width)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
        return False
    out_w, in_w, ms = entry.get("out_w"), entry.get("in_w"), entry.get("ms")
    if not all(isinstance(w, list) and w and all(type(v) is int and v > 0 for v in w) for w in (out_w, in_w)):
        return False
    if not isinstance(ms, list) or len(ms) != len(out_w) or not all(isinstance(r, list) for r in ms):
        return False
    widths = {len(r) for r in ms}
    if widths != {len(in_w)} and widths != {1}:
        return False
    return all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for r in ms for v in r)


def machine_id(runtime: str, threads: int) -> str:
    """What a measurement depends on besides the layer: processor, library version, threads."""
    if runtime == "torch-cuda":
        return f"torch-cuda|{torch.cuda.get_device_name()}|torch {torch.__version__}"
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"ort-cpu|{cpu}|onnxruntime {ort.__version__}|threads {threads}"
