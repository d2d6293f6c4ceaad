"""The shrink report: one HTML page with cost, size and speed before and after, every layer's
width before and after, the plan's decision for every group, and the groups picture."""

from __future__ import annotations

import io
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import write_text
from ..planning.plan import Plan
from ._escape import css_color, esc
from .html import page

__all__ = ["Measure", "ShrinkReport", "layer_widths", "write_report", "render_report",
           "torch_latency_ms", "ort_latency_ms", "saved_bytes"]

_WIDTH_ATTRS = ("out_channels", "out_features", "embedding_dim", "embed_dim")


@dataclass(frozen=True)
class Measure:
    """One model's cost: FLOPs, parameters, file size and median latency (ms) on one input."""

    flops: float
    params: int
    file_bytes: int
    latency_ms: float | None = None


@dataclass
class ShrinkReport:
    title: str
    before: Measure
    after: Measure
    runtime: str  # what measured the latency ("onnxruntime CPU", "torch CPU")
    file_kind: str  # what file the sizes are of
    widths: list[tuple[str, str, int, int]]
    plan: Plan
    groups: dict  # surgeon.viz.graphdata.graph_data(..., plan=plan)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# ---- measuring ----------------------------------------------------------------------------------
def torch_latency_ms(model: nn.Module, example_input: Any, runs: int = 10) -> float:
    """Median wall time of one forward on this machine's CPU, after three warm-up runs."""
    from ..graph.trace import eval_mode, run_model

    times = []
    with eval_mode(model), torch.inference_mode():
        for _ in range(3):
            run_model(model, example_input)
        for _ in range(runs):
            t0 = time.perf_counter()
            run_model(model, example_input)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def ort_latency_ms(path: str | Path, example_input: Any, runs: int = 10) -> float:
    """Median onnxruntime CPU time of one run of the file at ``path``, after two warm-up runs."""
    import onnxruntime as ort

    from ..exporters._runtime import latency_ms
    from ..graph.trace import normalize_inputs

    args, kwargs = normalize_inputs(example_input)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return latency_ms(sess, args, kwargs, runs)


def saved_bytes(model: nn.Module) -> int:
    """Size of ``torch.save(model)``."""
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.tell()


def _width(m: nn.Module) -> int | None:
    for attr in _WIDTH_ATTRS:
        v = getattr(m, attr, None)
        if isinstance(v, int):
            return v
    w = getattr(m, "weight", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() >= 2 else None


def layer_widths(model: nn.Module, small: nn.Module) -> list[tuple[str, str, int, int]]:
    """(name, type, output width before, after) of every leaf layer with a weight matrix (convs,
    linears, embeddings; norms follow them and are left out), in model order."""
    after = dict(small.named_modules())
    rows = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if list(m.children()) or not isinstance(w, torch.Tensor) or w.dim() < 2:
            continue
        before, other = _width(m), after.get(name)
        if before is None or other is None:
            continue
        rows.append((name, type(m).__name__, before, _width(other) or 0))
    return rows


# ---- drawing -------------------------------------------------------------------------------------
def _num(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def width_chart(rows: list[tuple[str, str, int, int]]) -> str:
    """Inline SVG: one bar per layer, grey before and blue after, on a log scale."""
    if not rows:
        return "<p>No layers with a width.</p>"
    n, height, left = len(rows), 220, 44
    bar = max(2.0, min(14.0, 1100 / n))
    width = left + n * bar + 10
    top = max(max(b, a) for _, _, b, a in rows)
    scale = lambda w: (height - 20) * math.log1p(w) / math.log1p(top)  # noqa: E731
    parts = [f'<svg class="widths" width="{width:.0f}" height="{height + 20}" '
             f'viewBox="0 0 {width:.0f} {height + 20}" xmlns="http://www.w3.org/2000/svg">']
    tick = 1
    while tick <= top:
        y = height - scale(tick)
        parts.append(f'<line x1="{left - 4}" x2="{width:.0f}" y1="{y:.1f}" y2="{y:.1f}" class="tick"/>'
                     f'<text x="{left - 6}" y="{y + 3:.1f}" class="tl">{tick}</text>')
        tick *= 8
    for i, (name, kind, b, a) in enumerate(rows):
        x = left + i * bar
        tip = esc(f"{name} ({kind}): {b} -> {a}")
        parts.append(f'<g class="layer"><title>{tip}</title>'
                     f'<rect x="{x:.2f}" y="{height - scale(b):.2f}" width="{bar - 0.6:.2f}" '
                     f'height="{scale(b):.2f}" class="before"/>'
                     f'<rect x="{x:.2f}" y="{height - scale(a):.2f}" width="{bar - 0.6:.2f}" '
                     f'height="{scale(a):.2f}" class="{"after" if a == b else "after cut"}"/></g>')
    parts.append(f'<text x="{left}" y="{height + 15}" class="tl">layers in model order '
                 f'(hover a bar for its name); grey: before, blue: after</text></svg>')
    return "".join(parts)


def _cards(rep: ShrinkReport) -> str:
    b, a = rep.before, rep.after
    rows = [("FLOPs", _num(b.flops), _num(a.flops), a.flops / b.flops if b.flops else 1.0),
            ("parameters", _num(b.params), _num(a.params), a.params / b.params if b.params else 1.0),
            (f"file size ({rep.file_kind})", _bytes(b.file_bytes), _bytes(a.file_bytes),
             a.file_bytes / b.file_bytes if b.file_bytes else 1.0)]
    if b.latency_ms and a.latency_ms:
        rows.append((f"latency ({rep.runtime}, median)", f"{b.latency_ms:.2f} ms", f"{a.latency_ms:.2f} ms",
                     a.latency_ms / b.latency_ms))
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(x)}</td><td>{esc(y)}</td><td>{r:.3f}</td>"
                   f"<td>{'%.2fx' % (1 / r) if r > 0 else '-'}</td></tr>" for k, x, y, r in rows)
    return ('<table class="cards"><tr><th></th><th>before</th><th>after</th><th>after / before</th>'
            f"<th>smaller or faster by</th></tr>{body}</table>")


def _kept_share(d) -> float | None:
    """``d.kept / d.units``, or None when a hand-edited plan holds something else there."""
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (d.kept, d.units))
    return d.kept / d.units if ok and d.units else None


def _decision_row(d, share: float, color: object) -> str:
    """One table row; every field is escaped, as a hand-edited plan may hold anything there."""
    names = ", ".join(map(str, d.tensors[:3])) + (f" (+{len(d.tensors) - 3})" if len(d.tensors) > 3 else "")
    kept = _kept_share(d)
    cut = kept is not None and kept < 1
    status = d.reason if d.reason else ("shrinks" if cut else "kept whole")
    cells = [f'<i style="background:{esc(css_color(color))}"></i>{esc(d.group)}', esc(d.kind), esc(d.units),
             esc(d.kept), "-" if kept is None else f"{kept:.0%}", f"{share:.1%}", esc(status)]
    return (f'<tr class="{"cut" if cut else ""}">' + "".join(f"<td>{c}</td>" for c in cells)
            + f"<td class='names'>{esc(names)}</td></tr>")


def _decisions(rep: ShrinkReport) -> str:
    share = {g["id"]: g["flops_share"] for g in rep.groups["groups"]}
    color = {g["id"]: g["color"] for g in rep.groups["groups"]}
    rows = [_decision_row(d, share.get(d.group, 0), color.get(d.group)) for d in rep.plan.decisions]
    return ('<table class="decisions"><tr><th>group</th><th>kind</th><th>units</th><th>kept</th>'
            "<th>kept %</th><th>FLOPs share</th><th>decision</th><th>tensors</th></tr>"
            + "".join(rows) + "</table>")


_CSS = """body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1280px; color: #1d1d1f;
  padding: 0 16px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } th, td { padding: 3px 10px; text-align: left; }
table.cards td, table.cards th { border-bottom: 1px solid #eee; }
table.decisions { font-size: 12.5px; } table.decisions tr:nth-child(even) { background: #fafafa; }
table.decisions tr.cut td:nth-child(4) { font-weight: 600; color: #0b57d0; }
td.names { color: #555; max-width: 520px; overflow-wrap: anywhere; }
i { display: inline-block; width: 11px; height: 11px; border-radius: 3px; margin-right: 5px; }
.muted { color: #666; } pre { background: #f6f6f6; padding: 8px; white-space: pre-wrap; font-size: 12px; }
svg.widths .before { fill: #d6d6d6; } svg.widths .after { fill: #7aa7e8; } svg.widths .cut { fill: #0b57d0; }
svg.widths .tick { stroke: #eee; } svg.widths .tl { font-size: 10px; fill: #777; text-anchor: end; }
svg.widths text.tl:last-child { text-anchor: start; }
.chart { overflow-x: auto; border: 1px solid #eee; padding: 6px; }
iframe { width: 100%; height: 760px; border: 1px solid #ccc; }"""


def render_report(rep: ShrinkReport) -> str:
    p = rep.plan
    changed = sum(k is not None and k < 1 for k in map(_kept_share, p.decisions))
    notes = "".join(f"<li>{esc(n)}</li>" for n in rep.notes)
    head = (f"<p>target <b>{esc(p.target)}</b> of the {esc(p.metric)}, criterion {esc(p.criterion)}"
            + (f", widths rounded to multiples of {esc(p.round_to)}" if p.round_to else "")
            + f"; {changed} of {len(p.decisions)} groups shrink; report made in {rep.seconds:.1f}s.</p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>surgeon shrink report: {esc(rep.title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>surgeon shrink report: {esc(rep.title)}</h1>{head}"
        f"<h2>Before and after</h2>{_cards(rep)}" + (f"<ul class='muted'>{notes}</ul>" if notes else "")
        + f"<h2>Layer widths</h2><div class='chart'>{width_chart(rep.widths)}</div>"
        f"<h2>Decisions per group</h2>{_decisions(rep)}"
        f"<h2>Plan</h2><pre>{esc(p.summary())}</pre>"
        "<h2>Groups</h2><p class='muted'>Click a box or chip to see the group and what the plan keeps.</p>"
        f'<iframe id="groups" title="groups" srcdoc="{esc(page(rep.groups))}"></iframe>'
        "</body></html>\n"
    )


def write_report(path: str | Path, rep: ShrinkReport) -> Path:
    path = Path(path)
    write_text(path, render_report(rep))  # atomic: a failed or interrupted write leaves any older report whole
    return path
