"""Hostile strings reach the groups page, the shrink report and DOT only as text (issue 13).

A plan is a JSON file anyone can hand over, and module names and group reasons come from the
model, so every one of them is shown as text: no markup of theirs may reach the page, no
``</script>`` may end the page's data, no quote may end a DOT string. The browser tests open the
hostile pages in headless Chromium (``apt-get install -y chromium`` on Debian) and skip without it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from torch import nn

import surgeon
from surgeon.viz import graph_data, page, target_plans, to_dot
from surgeon.viz._page_js import JS

from cdp import Browser, find_chromium

# each payload, if it ever ran, marks the top document: an attribute, an element, the title
IMG = "<img src=x onerror=top['document']['body']['setAttribute']('data-pwned','yes')>"
SCRIPT = ("</script><script>top['document']['title']='PWNED';"
          "top['document']['body']['appendChild'](top['document']['createElement']('p'))['id']='pwned'</script>")
ATTR = "\"'><svg onload=top['document']['body']['setAttribute']('data-pwned','attr')>"
EVIL = ATTR + IMG + SCRIPT + "<!--\u2028\u2029&amp;"


def _model() -> nn.Module:
    """The repro's net, its first layers named with payloads (module names cannot hold '.' or '"')."""
    m = nn.Sequential()
    m.add_module(IMG, nn.Conv2d(3, 16, 3))
    m.add_module(SCRIPT, nn.ReLU())
    m.add_module("c2", nn.Conv2d(16, 8, 3))
    return m.eval()


def _evil_plan(model: nn.Module, x: torch.Tensor, tmp_path: Path) -> surgeon.Plan:
    """/work/shared/repros/xss_plan.py's plan: decision fields hold markup, read back from a file."""
    d = json.loads(surgeon.plan(model, x, 0.5).to_json())
    for dec in d["decisions"]:
        dec["kind"], dec["reason"] = EVIL, EVIL
        dec["tensors"] = [EVIL + t for t in dec["tensors"]]
    d["model"] = d["metric"] = d["criterion"] = EVIL
    (tmp_path / "evil_plan.json").write_text(json.dumps(d))
    plan = surgeon.Plan.load(tmp_path / "evil_plan.json")  # from_dict refuses non-integer counts...
    return dataclasses.replace(plan, decisions=tuple(dataclasses.replace(d, units="zzz", kept=EVIL)  # ...a plan
                                                     for d in plan.decisions))  # built in Python can still hold them


def _poison(obj):
    """Every string in the page's data (names, reasons, colours, the plan summary) with EVIL in front."""
    if isinstance(obj, str):
        return EVIL + obj
    if isinstance(obj, dict):
        return {k: _poison(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_poison(v) for v in obj]
    return obj


@pytest.fixture
def hostile(tmp_path):
    """The repro's page end to end, and a page whose data is hostile in every string field."""
    torch.manual_seed(0)
    model, x = _model(), torch.randn(1, 3, 16, 16)
    plan = _evil_plan(model, x, tmp_path)
    repro = surgeon.visualize(model, x, tmp_path / "repro.html", plan=plan, title=EVIL)
    data = _poison(graph_data(surgeon.analyze(model, x), plan=plan, title=EVIL,
                              targets=target_plans(model, x, surgeon.analyze(model, x), targets=(0.9, 0.5))))
    data["targets"].append({"target": 0.1, "error": EVIL})  # a target the page reports as failed
    everything = tmp_path / "everything.html"
    everything.write_text(page(data), encoding="utf-8")
    return {"model": model, "x": x, "plan": plan, "data": data, "repro": repro, "everything": everything}


# ---- the written page -------------------------------------------------------------------------------
def _assert_inert(text: str, data: dict | None = None) -> None:
    """No payload markup anywhere, only the page's own three scripts, and the data reads back whole."""
    for raw in (IMG, SCRIPT, ATTR, "<img", "<svg onload"):
        assert raw not in text, raw
    assert len(re.findall(r"<script", text)) == 3 and len(re.findall(r"</script>", text)) == 3
    raw = re.search(r'<script type="application/json" id="surgeon-data">(.*?)</script>', text, re.S).group(1)
    assert not re.search("[<>&\u2028\u2029]", raw)
    if data is not None:
        assert json.loads(raw) == data


def test_page_holds_no_raw_payload(hostile):
    text = hostile["repro"].read_text()
    _assert_inert(text)
    assert "&lt;img src=x onerror=" in text.split("<script")[0]  # the title, shown as text
    _assert_inert(hostile["everything"].read_text(), hostile["data"])


def test_escape_examples():
    import doctest

    import surgeon.viz._escape as mod

    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0


def test_page_script_writes_markup_only_through_the_escaping_tag():
    # one innerHTML in the script, inside setHtml, which takes html`` results only
    assert JS.count("innerHTML") == 1 and re.search(r"node\.innerHTML = h\.s;", JS)
    assert not re.search(r"outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function", JS)


def test_report_holds_no_raw_payload(hostile, tmp_path):
    path = _report(hostile, tmp_path)
    text = path.read_text()
    for raw in (IMG, SCRIPT, ATTR, "<img", "<script", "<svg onload"):
        assert raw not in text, raw
    assert not list(tmp_path.glob(".*.part"))


def _report(hostile: dict, tmp_path: Path) -> Path:
    from surgeon.viz import report as rp

    rep = rp.ShrinkReport(EVIL, rp.Measure(1e6, 1000, 4000, 2.0), rp.Measure(5e5, 600, 2500, 1.0), EVIL, EVIL,
                          [(EVIL, EVIL, 16, 8)], hostile["plan"], hostile["data"], notes=[EVIL])
    return rp.write_report(tmp_path / "report.html", rep)


# ---- DOT ------------------------------------------------------------------------------------------------
_Q = r'"(?:[^"\\\n]|\\.)*"'  # a DOT double-quoted string, escapes included, on one line


def _unquote(q: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), q[1:-1])


def _one_line_breaks(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\r", "\n")


def test_dot_names_cannot_leave_their_strings(hostile, tmp_path):
    breakout = 'x"]; evil [label="pwned"]; n0 -> evil; //\\\n}\r\ndigraph x {\\'
    data = json.loads(json.dumps(hostile["data"]).replace(json.dumps(EVIL)[1:-1], json.dumps(breakout)[1:-1]))
    text = to_dot(data)
    lines = text.rstrip("\n").split("\n")
    assert re.fullmatch(rf"digraph surgeon {{  // {_Q}: \d+ prunable groups", lines[0])
    nodes = [ln for ln in lines if re.match(r"  n\d+ \[", ln)]
    assert len(nodes) == len(data["nodes"])
    for ln, n in zip(nodes, data["nodes"]):
        m = re.fullmatch(rf"  n\d+ \[label=({_Q}), fillcolor={_Q}, tooltip={_Q}(, comment={_Q})?\];", ln)
        assert m, ln
        assert _unquote(m.group(1)).startswith(_one_line_breaks(f"{n['label']}\n{n['type']}"))
    assert len([ln for ln in lines if re.fullmatch(rf"  n\d+ -> n\d+ \[color={_Q}\];", ln)]) == len(data["edges"])
    legend = [ln for ln in lines if ln.startswith("    g")]
    assert legend and all(re.fullmatch(rf"    g\d+ \[label={_Q}, fillcolor={_Q}\];", ln) for ln in legend)
    assert len(lines) == 1 + 3 + len(nodes) + len(data["edges"]) + 2 + len(legend) + 2
    if shutil.which("dot"):  # Graphviz reads it as the same graph: no node called 'evil', no second graph
        done = subprocess.run(["dot", "-Tjson"], input=text, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        names = {o["name"] for o in json.loads(done.stdout).get("objects", []) if "nodes" not in o}
        assert "evil" not in names and len([s for s in names if s.startswith("n")]) == len(data["nodes"])


# ---- every file viz writes is written atomically ------------------------------------------------------
def test_files_are_written_atomically(hostile, tmp_path, monkeypatch):
    model, x = hostile["model"], hostile["x"]
    targets = [tmp_path / "g.html", tmp_path / "g.dot", tmp_path / "report.html"]
    for t in targets:
        t.write_text("old")

    def interrupted(src, dst):  # the last step of an atomic write; a plain write never gets here
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    for t in targets[:2]:
        with pytest.raises(KeyboardInterrupt):
            surgeon.visualize(model, x, t)
    with pytest.raises(KeyboardInterrupt):
        _report(hostile, tmp_path)
    assert [t.read_text() for t in targets] == ["old"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["evil_plan.json", "repro.html", "everything.html"]
                                                                + [t.name for t in targets])


# ---- in headless Chromium -------------------------------------------------------------------------------
class _Dom(HTMLParser):
    """What a payload would have left in a dumped DOM, and what the page's own script writes."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.marks, self.nodes, self.title, self.status, self._in = [], 0, "", "", None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id") == "pwned" or "data-pwned" in a:
            self.marks.append((tag, a))
        if tag == "g" and "node" in (a.get("class") or "").split():
            self.nodes += 1
        self._in = "title" if tag == "title" else "status" if a.get("id") == "surgeon-status" else None

    def handle_data(self, data):
        if self._in == "title":
            self.title += data
        elif self._in == "status":
            self.status += data

    def handle_endtag(self, tag):
        self._in = None


def _dump(chromium: str, url: str, profile: Path) -> str:
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", f"--user-data-dir={profile}", "--dump-dom", url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium binary (Debian: apt-get update && apt-get install -y chromium)")
    return binary


def test_chromium_runs_no_payload(chromium, hostile, tmp_path):
    data = hostile["data"]
    grey = next(n for n in data["nodes"] if n["group"] < 0)
    prunable = next(g["id"] for g in data["groups"] if g["prunable"])
    kept = next(g["id"] for g in data["groups"] if not g["prunable"])
    repro, every = hostile["repro"], hostile["everything"]
    # (page, hash, the side panel's title): overview, a group, a group kept whole, a grey op
    states = [(repro, "", EVIL), (repro, f"#select={prunable}", f"Group {prunable}"),
              (every, "", EVIL + EVIL), (every, f"#select={prunable}", f"Group {prunable}"),
              (every, f"#select={kept}", f"Group {kept}"),
              (every, "#node=" + quote(grey["name"], safe=""), grey["name"]),
              (every, "#target=0.1", EVIL + EVIL), (every, "#open=all&machinery=1&target=0.9", EVIL + EVIL)]
    urls = [path.resolve().as_uri() + frag for path, frag, _ in states]
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(states)) as pool:  # one Chromium per state, side by side
        dumps = list(pool.map(lambda i: _dump(chromium, urls[i], tmp_path / f"profile{i}"), range(len(urls))))
    print(f"{len(states)} Chromium dumps in {time.monotonic() - t0:.1f}s")
    for (path, frag, title), text in zip(states, dumps):
        dom = _Dom(text)
        assert dom.marks == [] and dom.title != "PWNED", (path.name, frag, dom.marks, dom.title)
        st = json.loads(dom.status)  # the page's own script did run, and drew the graph and the panel
        assert st["ready"] and st["errors"] == [], (path.name, frag, st["errors"])
        assert dom.nodes == st["visibleNodes"] > 0 and st["panelTitle"] == title
        if frag == "#target=0.1":  # the failed target's error is shown, as text
            assert st["target"] == 0.1 and st["figures"].startswith("target 0.1: no plan (" + EVIL[:20])


def test_chromium_report_runs_no_payload(chromium, hostile, tmp_path):
    path = _report(hostile, tmp_path)
    with Browser(chromium, tmp_path / "profile") as b:
        b.open(path.resolve().as_uri())
        time.sleep(0.3)  # the groups page in the iframe draws on its own load
        marks = ("[top.document, document.getElementById('groups').contentDocument].map(d => "
                 "[d.title, d.querySelectorAll('#pwned, [data-pwned]').length])")
        assert all(t != "PWNED" and n == 0 for t, n in b.eval(marks))
        inner = json.loads(b.eval(
            "document.getElementById('groups').contentDocument.getElementById('surgeon-status').textContent"))
        assert inner["ready"] and inner["errors"] == [] and inner["visibleNodes"] > 0
        assert EVIL in b.eval("document.querySelector('table.decisions').innerText")
        assert b.problems() == []
