"""surgeon.visualize: the page's data, DOT, and the page itself driven in headless Chromium.

The browser tests open each page from a file, check that no script or console error happened and
that nothing was fetched, count the coloured groups drawn against the prunable groups, click a
group with real mouse events and read its panel, hover a grey op for its reason, and keep a
screenshot under ``artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import surgeon
from surgeon.viz import graph_data, to_dot
from surgeon.viz.graphdata import fold_depth, kept_units

from cdp import Browser, find_chromium

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"


def _small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def _deep_mlp(blocks: int) -> nn.Module:
    layers = [nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU()) for _ in range(blocks)]
    return nn.Sequential(*layers).eval()


# ---- data ------------------------------------------------------------------------------------------
def test_every_prunable_group_is_on_a_drawn_node():
    model, x = _small_cnn(), torch.randn(1, 3, 16, 16)
    a = surgeon.analyze(model, x)
    data = graph_data(a)
    on_nodes = {n["group"] for n in data["nodes"]} | {c for n in data["nodes"] for c in n["chips"]}
    prunable = {g.id for g in a.groups if g.prunable}
    assert prunable and prunable <= on_nodes
    assert len(data["nodes"]) == sum(n.op != "get_attr" for n in a.traced.gm.graph.nodes)
    colors = [g["color"] for g in data["groups"] if g["prunable"]]
    assert len(set(colors)) == len(colors) and all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colors)
    for n in data["nodes"]:
        assert (n["group"] >= 0) != bool(n["reason"]), n  # coloured, or grey with a reason


def test_grey_nodes_say_why():
    model, x = _small_cnn(), torch.randn(1, 3, 16, 16)
    data = graph_data(surgeon.analyze(model, x))
    reasons = {n["name"]: n["reason"] for n in data["nodes"] if n["group"] < 0}
    assert "model input" in reasons["input_1"] or "model input" in " ".join(reasons.values())
    assert any("model output" in r for r in reasons.values())


def test_plan_decisions_and_kept_units():
    model, x = _small_cnn(), torch.randn(1, 3, 16, 16)
    a = surgeon.analyze(model, x)
    plan = surgeon.plan(model, x, 0.5, analysis=a)
    scores = surgeon.criteria.get_criterion("l2").score(model, a.groups)
    data = graph_data(a, plan=plan, scores=scores)
    by_id = {g["id"]: g for g in data["groups"]}
    for d in plan.decisions:
        g = next(g for g in a.groups if g.id == d.group)
        kept = kept_units(g, plan)
        assert kept is not None and int(kept.sum()) == d.kept
        assert by_id[d.group]["decision"]["kept"] == d.kept
        if g.prunable:
            s = by_id[d.group]["scores"]
            assert s["n"] == g.n_units and s["sorted"] == sorted(s["sorted"])
            assert sum(s["kept"]) == pytest.approx(d.kept)  # one bin per unit below 256 units
    assert data["plan"]["ratio"] == pytest.approx(plan.ratio, rel=1e-3)


def test_fold_depth_picks_deepest_that_fits():
    paths = [f"layers.{i}.{leaf}" for i in range(10) for leaf in ("a", "b", "c")] + [""]
    assert fold_depth(paths, 100) == 0
    assert fold_depth(paths, 11) == 2  # layers.0 .. layers.9 and the root node
    assert fold_depth(paths, 2) == 1


def test_large_graphs_start_folded_by_module_path():
    model, x = _deep_mlp(40), torch.randn(2, 16)
    a = surgeon.analyze(model, x)
    data = graph_data(a)
    assert len(data["nodes"]) > 60 and len(data["folds"]) == 40 and data["open"] == []  # one box a block
    assert all(n["fold"] >= 0 for n in data["nodes"] if n["op"] == "call_module")
    assert graph_data(a, max_nodes=1000)["open"] == list(range(40))  # small enough: drawn whole


@pytest.mark.parametrize("module", ["surgeon.viz", "surgeon.cli", "surgeon.viz.targets", "surgeon.viz.explain"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


# ---- files -------------------------------------------------------------------------------------------
def test_html_is_self_contained(tmp_path):
    model, x = _small_cnn(), torch.randn(1, 3, 16, 16)
    path = surgeon.visualize(model, x, tmp_path / "g.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"<(script|img|iframe)[^>]+src=|<link|@import|url\(|fetch\(|XMLHttpRequest", text)
    raw = re.search(r'<script type="application/json" id="surgeon-data">(.*?)</script>', text, re.S).group(1)
    data = json.loads(raw)
    assert data["totals"]["prunable"] == sum(g.prunable for g in surgeon.analyze(model, x).groups)


def test_dot_output(tmp_path):
    model, x = _small_cnn(), torch.randn(1, 3, 16, 16)
    a = surgeon.analyze(model, x)
    path = surgeon.visualize(model, x, tmp_path / "g.dot", analysis=a)
    text = path.read_text()
    data = graph_data(a)
    assert text.startswith("digraph surgeon {") and text.rstrip().endswith("}")
    assert len(re.findall(r"^  n\d+ \[", text, re.M)) == len(data["nodes"])
    assert len(re.findall(r"^  n\d+ -> n\d+", text, re.M)) == len(data["edges"])
    for g in a.groups:
        if g.prunable:
            assert f"    g{g.id} [" in text
    assert to_dot(data) == text
    if shutil.which("dot"):
        done = subprocess.run(["dot", "-Tsvg", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def test_visualize_rejects_bad_arguments(tmp_path):
    model, x = _small_cnn(), torch.randn(1, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        surgeon.visualize(model, x, tmp_path / "missing" / "g.html")
    with pytest.raises(TypeError, match="nn.Module"):
        surgeon.visualize("resnet", x, tmp_path / "g.html")
    with pytest.raises(TypeError, match="Plan"):
        surgeon.visualize(model, x, tmp_path / "g.html", plan={"not": "a plan"})


# ---- in a real browser ----------------------------------------------------------------------------
def _install_chromium() -> str | None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        if subprocess.run(cmd, env=env, capture_output=True, timeout=1200).returncode != 0:
            return None
    return find_chromium()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = find_chromium() or _install_chromium()
    if binary is None:
        pytest.skip("no Chromium, and `apt-get install chromium` is not possible here (needs root and apt)")
    with Browser(binary, tmp_path_factory.mktemp("chromium-profile")) as b:
        yield b


def _status(b: Browser) -> dict:
    return json.loads(b.eval("document.getElementById('surgeon-status').textContent"))


def _open(b: Browser, path: Path) -> dict:
    b.events.clear()
    b.open(path.resolve().as_uri())
    st = _status(b)
    assert st["ready"] and st["errors"] == [], st["errors"]
    assert b.problems() == []
    assert b.requests() == [path.resolve().as_uri()]  # nothing fetched but the page itself
    return st


def _center(b: Browser, js_element: str) -> tuple[float, float]:
    return tuple(b.eval(f"(() => {{ const r = ({js_element}).getBoundingClientRect(); "
                        "return [r.x + r.width / 2, r.y + r.height / 2]; })()"))


def _click_group(b: Browser, gid: int) -> str:
    b.eval(f"window.__surgeon.focusGroup({gid})")  # scroll it into view, as a user would
    x, y = _center(b, f"document.querySelector('.box[data-group=\"{gid}\"], .chip[data-group=\"{gid}\"], "
                      f".seg[data-group=\"{gid}\"]')")
    b.click(x, y)
    return b.eval("document.getElementById('panel').innerText")


def _check_page(b: Browser, name: str, model: nn.Module, x, tmp_path: Path, target=None) -> dict:
    a = surgeon.analyze(model, x)
    plan = surgeon.plan(model, x, target, round_to=8, analysis=a) if target else None
    path = surgeon.visualize(model, x, tmp_path / f"{name}.html", plan=plan, analysis=a, targets=())
    st = _open(b, path)
    prunable = [g for g in a.groups if g.prunable]
    assert st["groupsDrawn"] == len(prunable) == st["prunableGroups"]
    assert st["groupsDrawn"] + st["greyGroupsDrawn"] <= len(a.groups) == st["groups"]
    biggest = max(prunable, key=lambda g: g.flops_per_unit * g.n_units)
    panel = _click_group(b, biggest.id)
    assert panel.startswith(f"Group {biggest.id}") and "prunable" in panel
    assert f"{biggest.n_units} channels" in panel or f"{biggest.n_units} {biggest.kind.value}s" in panel
    assert sorted(m.name for m in biggest.tensors)[0] in panel
    assert _status(b)["selected"]["id"] == biggest.id
    grey = next((n for n in graph_data(a)["nodes"] if n["group"] < 0 and n["op"] == "placeholder"), None)
    if grey is not None:  # hover a grey op: the tooltip says why it cannot be pruned
        gx, gy = _center(b, f"window.__surgeon.focusNode({json.dumps(grey['name'])})")
        b.hover(gx, gy)
        assert b.eval("document.getElementById('tip').textContent").endswith("not prunable: " + grey["reason"])
    ARTIFACTS.mkdir(exist_ok=True)
    b.screenshot(ARTIFACTS / f"viz_{name}.png")
    assert b.problems() == [] and _status(b)["errors"] == []
    return {"analysis": a, "status": st, "panel": panel, "group": biggest, "plan": plan}


def test_browser_resnet18_with_plan(browser, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    model, x = torchvision.models.resnet18(weights=None).eval(), torch.randn(1, 3, 224, 224)
    out = _check_page(browser, "resnet18", model, x, tmp_path, target=0.5)
    d = next(d for d in out["plan"].decisions if d.group == out["group"].id)
    assert f"plan keeps {d.kept} of {d.units} units" in out["panel"]


def test_browser_densenet121(browser, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    model, x = torchvision.models.densenet121(weights=None).eval(), torch.randn(1, 3, 224, 224)
    _check_page(browser, "densenet121", model, x, tmp_path)


def test_browser_folded_graph_search_and_expand(browser, tmp_path):
    model, x = _deep_mlp(40), torch.randn(2, 16)
    a = surgeon.analyze(model, x)
    path = surgeon.visualize(model, x, tmp_path / "deep.html", analysis=a, targets=())
    st = _open(browser, path)
    assert st["openFolds"] == [] and st["visibleNodes"] < st["totalNodes"]
    assert st["groupsDrawn"] == sum(g.prunable for g in a.groups)  # chips on the folded boxes
    browser.eval("(() => { const s = document.getElementById('search'); s.value = '37.2'; "
                 "s.dispatchEvent(new Event('input')); "
                 "s.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'})); })()")
    after = _status(browser)
    assert after["visibleNodes"] > st["visibleNodes"]  # the fold holding layer 37 opened
    assert browser.eval("document.getElementById('hits').textContent") == "1 match"
    assert "37" in browser.eval("document.querySelector('.node.hit text').textContent") or \
        browser.eval("document.querySelectorAll('.node.hit').length") == 1
    assert after["errors"] == [] and browser.problems() == []


def test_browser_hash_selects_a_group(browser, tmp_path):
    model, x = _small_cnn(), torch.randn(1, 3, 16, 16)
    a = surgeon.analyze(model, x)
    gid = next(g.id for g in a.groups if g.prunable)
    path = surgeon.visualize(model, x, tmp_path / "small.html", analysis=a)
    browser.events.clear()
    browser.open(path.resolve().as_uri() + f"#select={gid}")
    st = _status(browser)
    assert st["selected"]["id"] == gid and st["panelTitle"] == f"Group {gid}" and st["errors"] == []


def test_browser_report_page(browser, tmp_path):
    from surgeon.viz import report as rp

    model, x = _small_cnn(), torch.randn(1, 3, 16, 16)
    a = surgeon.analyze(model, x)
    plan = surgeon.plan(model, x, 0.5, analysis=a)
    small = surgeon.apply(model, plan)
    rep = rp.ShrinkReport("small", rp.Measure(1e6, 1000, 4000, 2.0), rp.Measure(5e5, 600, 2500, 1.0),
                          "torch CPU", "torch.save", rp.layer_widths(model, small), plan, graph_data(a, plan=plan))
    path = rp.write_report(tmp_path / "report.html", rep)
    browser.events.clear()
    browser.open(path.resolve().as_uri())
    inner = json.loads(browser.eval(
        "document.getElementById('groups').contentDocument.getElementById('surgeon-status').textContent"))
    assert inner["errors"] == [] and inner["groupsDrawn"] == sum(g.prunable for g in a.groups)
    text = browser.eval("document.body.innerText")
    assert "Before and after" in text and "0.500" in text and "Decisions per group" in text
    bars = browser.eval("document.querySelectorAll('svg.widths g.layer').length")
    assert bars == len(rep.widths) == 3
    assert browser.problems() == []


def test_layer_widths_follow_the_plan():
    from surgeon.viz.report import layer_widths

    model, x = _small_cnn(), torch.randn(1, 3, 16, 16)
    small = surgeon.shrink(model, x, 0.5)
    rows = layer_widths(model, small)
    assert [r[0] for r in rows] == ["0", "3", "7"]
    assert rows[0][2] == 16 and rows[0][3] == small[0].out_channels < 16
    assert rows[-1][2:] == (10, 10)
    assert np.all([r[3] <= r[2] for r in rows])


def test_browser_pan_zoom_and_open_a_fold_by_clicking(browser, tmp_path):
    model, x = _deep_mlp(12), torch.randn(2, 16)
    path = surgeon.visualize(model, x, tmp_path / "mlp.html", max_nodes=20)
    st = _open(browser, path)
    assert st["openFolds"] == []
    transform = "document.getElementById('viewport').getAttribute('transform')"
    before = browser.eval(transform)
    browser.call("Input.dispatchMouseEvent", type="mousePressed", x=300, y=300, button="left", clickCount=1)
    browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=380, y=340, button="left")
    browser.call("Input.dispatchMouseEvent", type="mouseReleased", x=380, y=340, button="left", clickCount=1)
    panned = browser.eval(transform)
    assert panned != before and _status(browser)["selected"] is None  # a drag is not a click
    browser.call("Input.dispatchMouseEvent", type="mouseWheel", x=300, y=300, deltaX=0, deltaY=-300)
    zoomed = browser.eval(transform)
    scale = lambda t: float(re.search(r"scale\(([-\d.e]+)\)", t).group(1))  # noqa: E731
    assert scale(zoomed) > scale(panned)
    fold = "document.querySelector('.node.fold')"
    browser.eval("window.__surgeon.fit()")
    x, y = browser.eval(f"(() => {{ const r = ({fold}).getBoundingClientRect(); "
                        "return [r.x + r.width / 2, r.y + 6]; })()")
    browser.click(x, y)  # a click on a fold opens it, and the panel describes it
    assert _status(browser)["selected"]["type"] == "fold"
    assert _status(browser)["visibleNodes"] > st["visibleNodes"] and len(_status(browser)["openFolds"]) == 1
    assert "Fold " in browser.eval("document.getElementById('panel').innerText")
    grey = browser.eval("window.__surgeon.focusNode('output') && 1")
    assert grey == 1
    browser.click(*_center(browser, "window.__surgeon.focusNode('output')"))
    panel = browser.eval("document.getElementById('panel').innerText")
    assert panel.startswith("output") and "not prunable: " in panel
    assert browser.problems() == [] and _status(browser)["errors"] == []
