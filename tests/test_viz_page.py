"""The groups page as people first see it (issue 20): an overview folded by module that fits the
window, capture machinery hidden, and a target slider that shows what each plan removes.

The browser tests open resnet50 (fx capture) and a small Llama (torch.export capture) in one
headless Chromium (Debian's ``chromium``) and skip without it. Nothing here asserts a wall-clock
time: the page's draw time is measured by ``benchmarks/viz_scale.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
from surgeon.viz import graph_data, page
from surgeon.viz.overview import bridges, folds, overview_open
from surgeon.viz.explain import explain
from surgeon.viz.targets import target_plans

from cdp import Browser
from test_viz import _open as open_page, _status, browser  # noqa: F401 - the one browser fixture

_CHECKS = ("_assert_tensor_metadata", "_guards_fn", "sym_size", "_assert_scalar")


def _llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   use_cache=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval(), {"input_ids": torch.randint(0, 256, (1, 16))}


@pytest.fixture(scope="module")
def llama():
    model, x = _llama()
    a = surgeon.analyze(model, x)
    return {"model": model, "x": x, "analysis": a, "data": graph_data(a, targets=target_plans(model, x, a))}


@pytest.fixture(scope="module")
def resnet50():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model, x = torchvision.models.resnet50(weights=None).eval(), torch.randn(1, 3, 224, 224)
    a = surgeon.analyze(model, x)
    return {"model": model, "x": x, "analysis": a, "data": graph_data(a, targets=target_plans(model, x, a))}


# ---- data: machinery, folds, targets -------------------------------------------------------------
def test_export_machinery_is_hidden_and_nothing_prunable_is(llama):
    d = llama["data"]
    assert llama["analysis"].traced.mode == "export"
    by_label = {}
    for n in d["nodes"]:
        by_label.setdefault(n["label"].split(".")[0], []).append(n)
    for check in ("_assert_tensor_metadata", "_guards_fn"):
        assert by_label[check] and all(n["hide"] == "capture check" for n in by_label[check]), check
    moves = [n for n in d["nodes"] if n["label"] == "to.device"]
    assert moves and all(n["hide"] == "device move" for n in moves)
    assert all(n["hide"] is None for n in d["nodes"] if n["group"] >= 0 or n["chips"])
    assert all(n["hide"] is None for n in d["nodes"] if n["op"] in ("placeholder", "output"))
    assert d["totals"]["hidden"] == sum(bool(n["hide"]) for n in d["nodes"]) > 0


def test_hidden_ops_are_bridged():
    # 0 -> 1(hidden) -> 2(hidden) -> 3 and 0 -> 3 already; 4 -> 2: bridges 0->3 and 4->3
    assert bridges([(0, 1), (1, 2), (2, 3), (4, 2), (0, 3)], {1, 2}, 5) == [[0, 3], [4, 3]]
    assert bridges([(0, 1)], set(), 2) == []  # edges between shown ops are not bridges


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)


def test_overview_opens_wrappers_and_keeps_stacks_whole():
    model = nn.Module()
    model.body = nn.Module()
    model.body.embed = nn.Linear(4, 4)
    model.body.layers = nn.ModuleList([_Block() for _ in range(6)])
    model.head = nn.Linear(4, 4)
    paths = [""] + ["body.embed"] * 2 + [f"body.layers.{i}.{x}" for i in range(6) for x in "ab"] + ["head"] * 2 + [""]
    paths = paths * 2  # 40 ops: more than are drawn whole
    shown = [True] * len(paths)
    fs, deepest = folds(paths, shown, model)
    key = {f["key"]: i for i, f in enumerate(fs)}
    assert fs[key["body.layers"]]["repeat"] == 6 and fs[key["body.layers"]]["block"] == "_Block"
    assert fs[key["body"]]["repeat"] == 0 and fs[key["body.layers.0"]]["parent"] == key["body.layers"]
    open_ = overview_open(fs, deepest, shown)
    assert [fs[i]["key"] for i in open_] == ["body"]  # the wrapper opens, the stack stays one box
    assert overview_open(fs, deepest, shown, max_ops=len(paths)) == list(range(len(fs)))


def test_targets_plan_once_and_shrink_monotonically(llama, monkeypatch):
    from surgeon.api import Planner

    calls = []
    real = Planner.prepare.__func__
    monkeypatch.setattr(Planner, "prepare", classmethod(lambda cls, *a, **k: calls.append(1) or real(cls, *a, **k)))
    recs = target_plans(llama["model"], llama["x"], llama["analysis"], targets=(0.9, 0.6, 0.3))
    assert len(calls) == 1 and [r["target"] for r in recs] == [0.9, 0.6, 0.3]
    after = [r["flops"][1] for r in recs]
    assert after == sorted(after, reverse=True) and all(abs(r["ratio"] - r["target"]) < 0.03 for r in recs)
    a = llama["analysis"]
    units = {g.id: g.n_units for g in a.groups}
    for r in recs:  # the runs name exactly the units the plan removes
        for gid, (kept, runs, n) in r["groups"].items():
            assert kept + sum(b - e for e, b in runs) == units[int(gid)] and n == len(runs)
    assert sum(len(r["groups"]) for r in recs) > 0


def test_groups_kept_whole_say_why_in_plain_words(llama):
    kept = [g for g in llama["data"]["groups"] if not g["prunable"]]
    assert kept and all(g["plain"] and g["fix"] for g in kept)
    config = [g for g in kept if "config cannot express" in (g["reason"] or "")]
    assert all("uniform=False" in g["fix"] for g in config)  # (this Llama's config expresses every width)
    assert "Hugging Face config" not in " ".join(g["plain"] for g in kept)  # not the internal wording
    assert explain("something new")[0] == "something new"


# ---- in the browser ----------------------------------------------------------------------------------
def _open(b: Browser, path: Path) -> dict:
    st = open_page(b, path)  # loads, nothing fetched, no errors
    assert isinstance(st["drawnAt"], (int, float)) and st["drawnAt"] > 0  # the page says when it was drawn
    return st


_BOXES = """(() => { const r = document.getElementById('view').getBoundingClientRect();
  return [...document.querySelectorAll('#view .node')].map(g => { const b = g.getBoundingClientRect();
    return [b.left - r.left, b.top - r.top, b.right - r.left, b.bottom - r.top, r.width, r.height]; }); })()"""
_CUTS = "[...document.querySelectorAll('#view .cut')].map(c => +c.getAttribute('width'))"


def _slide(b: Browser, i: int) -> dict:
    b.eval(f"(() => {{ const s = document.getElementById('target'); s.value = {i}; "
           "s.dispatchEvent(new Event('input')); })()")
    return _status(b)


def _check_overview(b: Browser, data: dict, tmp_path: Path, name: str) -> dict:
    path = tmp_path / f"{name}.html"
    path.write_text(page(data), encoding="utf-8")
    st = _open(b, path)
    boxes = b.eval(_BOXES)
    assert boxes and len(boxes) == st["visibleNodes"] < st["totalNodes"]  # folded
    for x0, y0, x1, y1, w, h in boxes:  # every top-level block lies inside the first view
        assert 0 <= x0 and x1 <= w and 0 <= y0 and y1 <= h, (x0, y0, x1, y1, w, h)
    hidden = {n["id"] for n in data["nodes"] if n["hide"]}
    drawn = b.eval("[...document.querySelectorAll('#view .node')].length")
    assert st["machineryDrawn"] == 0 and drawn == st["visibleNodes"]
    assert b.eval("document.querySelectorAll('#view .node.machinery').length") == 0
    labels = b.eval("[...document.querySelectorAll('#view .node text.lbl')].map(t => t.textContent)")
    assert not any(lb.startswith(_CHECKS) for lb in labels), labels
    assert st["groupsDrawn"] == st["prunableGroups"] == data["totals"]["prunable"]
    # the slider: the gentlest and the hardest target highlight different units and figures
    first, last = _slide(b, 0), None
    cuts_first = b.eval(_CUTS)
    last = _slide(b, len(data["targets"]) - 1)
    cuts_last = b.eval(_CUTS)
    assert first["target"] == data["targets"][0]["target"] and last["target"] == data["targets"][-1]["target"]
    assert first["figures"] != last["figures"] and last["marked"] >= first["marked"] > 0
    assert sum(cuts_last) > sum(cuts_first) > 0
    panel = b.eval("document.getElementById('panel').innerText")
    assert f"At target {data['targets'][-1]['target']}" in panel and "Kept whole" in panel
    b.screenshot(tmp_path / f"{name}.png")
    assert b.problems() == [] and _status(b)["errors"] == []
    return {"status": st, "hidden": hidden, "panel": panel}


def test_browser_resnet50_overview_and_slider(browser, resnet50, tmp_path):
    out = _check_overview(browser, resnet50["data"], tmp_path, "resnet50")
    assert out["status"]["visibleNodes"] <= 20  # stem, the four stages, the head
    # a click on a stage opens it; the view fits the larger graph again
    before = _status(browser)["visibleNodes"]
    fold = "[...document.querySelectorAll('#view .node.fold')].find(g => g.textContent.startsWith('layer3'))"
    x, y = browser.eval(f"(() => {{ const r = ({fold}).getBoundingClientRect(); "
                        "return [r.x + r.width / 2, r.y + 8]; })()")
    browser.click(x, y)
    st = _status(browser)
    assert st["visibleNodes"] > before and st["selected"]["type"] == "fold" and st["selected"]["key"] == "layer3"
    assert all(0 <= b[0] and b[2] <= b[4] and 0 <= b[1] and b[3] <= b[5] for b in browser.eval(_BOXES))


def test_browser_llama_export_overview_and_slider(browser, llama, tmp_path):
    out = _check_overview(browser, llama["data"], tmp_path, "llama")
    assert "capture machinery" in browser.eval("document.querySelector('header').innerText")
    labels = browser.eval("[...document.querySelectorAll('#view .node text.sub')].map(t => t.textContent)")
    assert any("2 × LlamaDecoderLayer" in s for s in labels), labels  # the decoder layers: one repeated box
    assert "Fix:" in out["panel"]  # groups kept whole: why, and the fix
    browser.eval("(() => { const m = document.getElementById('machinery'); m.checked = true; "
                 "m.dispatchEvent(new Event('change')); })()")
    assert _status(browser)["showMachinery"] is True
    browser.eval("document.getElementById('expand-all').click()")
    st = _status(browser)
    assert st["machineryDrawn"] == len(out["hidden"]) and st["visibleNodes"] == st["totalNodes"]


def _tiled(data: dict, copies: int) -> dict:
    """``data``'s graph repeated ``copies`` times in a chain, each copy under its own module path."""
    nodes, edges, fs, n0, f0 = [], [], [], len(data["nodes"]), len(data["folds"])
    for c in range(copies):
        for n in data["nodes"]:
            nodes.append({**n, "id": n["id"] + c * n0, "name": f"{n['name']}_{c}",
                          "path": f"copy.{c}." + n["path"] if n["path"] else f"copy.{c}",
                          "fold": n["fold"] + c * f0 if n["fold"] >= 0 else -1})
        edges += [[a + c * n0, b + c * n0] for a, b in data["edges"]]
        if c:
            edges.append([c * n0 - 1, c * n0])
        fs += [{**f, "key": f"copy.{c}." + f["key"], "parent": f["parent"] + c * f0 if f["parent"] >= 0 else -1}
               for f in data["folds"]]
    return {**data, "nodes": nodes, "edges": edges, "bridges": [], "folds": fs, "open": [],
            "totals": {**data["totals"], "nodes": len(nodes)}}


def test_browser_5000_op_page_is_drawn_and_folded(browser, llama, tmp_path):
    data = _tiled(llama["data"], 5000 // len(llama["data"]["nodes"]) + 1)
    assert len(data["nodes"]) >= 5000
    path = tmp_path / "big.html"
    path.write_text(page(data), encoding="utf-8")
    st = _open(browser, path)
    assert st["totalNodes"] == len(data["nodes"]) and 0 < st["visibleNodes"] < 1000
    assert all(0 <= b[0] and b[2] <= b[4] and 0 <= b[1] and b[3] <= b[5] for b in browser.eval(_BOXES))
    assert np.isfinite(st["drawnAt"])


def test_unreachable_target_is_recorded_not_raised():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()
    x = torch.randn(1, 3, 16, 16)
    recs = target_plans(model, x, surgeon.analyze(model, x), targets=(0.5, 0.01))
    assert recs[0]["error"] is None and abs(recs[0]["ratio"] - 0.5) < 0.05
    assert recs[1]["target"] == 0.01 and "Error" in recs[1]["error"] and "groups" not in recs[1]
