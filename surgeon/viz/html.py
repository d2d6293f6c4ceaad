"""One self-contained HTML page (styles, data and script inline; nothing is fetched)."""

from __future__ import annotations

from ._escape import esc, script_json
from ._page_js import JS

__all__ = ["page", "embed_json"]

CSS = """
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: #1d1d1f; background: #fff; }
#app { display: flex; flex-direction: column; height: 100%; }
header { display: flex; gap: 8px; align-items: center; padding: 6px 10px; border-bottom: 1px solid #ddd;
  background: #fafafa; flex-wrap: wrap; }
header h1 { font-size: 14px; margin: 0 10px 0 0; font-weight: 600; }
header input[type=search] { width: 240px; padding: 3px 6px; }
header button, header select { padding: 2px 8px; }
#hits { color: #666; min-width: 70px; }
main { flex: 1; display: flex; min-height: 0; }
#stage { flex: 1; min-width: 0; position: relative; }
#mini { position: absolute; left: 8px; bottom: 8px; border: 1px solid #bbb; background: #fff;
  box-shadow: 0 1px 4px #0002; cursor: crosshair; }
#view { width: 100%; height: 100%; display: block; cursor: grab; background: #fcfcfc; user-select: none; }
#view:active { cursor: grabbing; }
#panel { width: 380px; overflow: auto; border-left: 1px solid #ddd; padding: 8px 12px; }
#panel h2 { font-size: 15px; margin: 4px 0 6px; display: flex; align-items: center; gap: 6px; }
#panel h3 { font-size: 13px; margin: 12px 0 4px; }
#panel table { border-collapse: collapse; width: 100%; }
#panel th { text-align: left; font-weight: 500; color: #555; padding: 1px 8px 1px 0; white-space: nowrap; }
#panel td { padding: 1px 0; }
#panel pre { white-space: pre-wrap; font-size: 11px; background: #f6f6f6; padding: 6px; }
.members { margin: 0; padding-left: 16px; font-size: 12px; word-break: break-all; }
.muted { color: #777; font-size: 12px; }
.ok { color: #17672d; margin: 2px 0; }
.bad { color: #9b2226; margin: 2px 0; }
.plan { background: #eef6ff; padding: 4px 6px; border-radius: 4px; }
i.sw, a.gl i { display: inline-block; width: 12px; height: 12px; border-radius: 3px; border: 1px solid #0003; }
a.gl { text-decoration: none; color: inherit; display: inline-flex; align-items: center; gap: 3px;
  margin-right: 4px; }
.node .box { stroke: #0004; stroke-width: 1; }
.node.fold .box { stroke: #666; stroke-dasharray: 4 3; }
.node text { font-size: 11px; pointer-events: none; fill: #111; }
.node text.sub { font-size: 9.5px; fill: #333; }
.node.grey text { fill: #555; }
.node { cursor: pointer; }
.node.dim { opacity: 0.18; }
.node.sel .box { stroke: #000; stroke-width: 3; }
.node.hit .box { stroke: #e60000; stroke-width: 3; }
.chip { stroke: #0005; stroke-width: 0.5; }
.seg { stroke: #fff; stroke-width: 0.5; }
.cut { fill: #3a0d0d; opacity: 0.75; pointer-events: none; }
.node.machinery .box { stroke-dasharray: 2 2; opacity: 0.7; }
#slider { display: inline-flex; gap: 6px; align-items: center; }
#slider input { width: 160px; }
#figures { color: #333; font-size: 12px; }
ul.whole li { margin-bottom: 3px; }
.edge { fill: none; stroke-width: 1.3; opacity: 0.55; }
.edge.back { stroke-dasharray: 5 4; }
.edge.dim { opacity: 0.06; }
svg.far text { display: none; }
#tip { position: fixed; z-index: 5; background: #222; color: #fff; padding: 5px 8px; border-radius: 4px;
  font-size: 12px; white-space: pre; pointer-events: none; max-width: 520px; overflow: hidden; }
#surgeon-status { display: none; }
"""

_COLLECTOR = """window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e)); });
window.addEventListener('unhandledrejection', function (e) {
  window.__errors.push('unhandled rejection: ' + e.reason);
});
(function () {
  var ce = console.error.bind(console);
  console.error = function () {
    window.__errors.push(Array.prototype.join.call(arguments, ' '));
    ce.apply(null, arguments);
  };
})();"""

_BODY = """<div id="app">
<header><h1>{title}</h1>
<input id="search" type="search" placeholder="search module name (/), Enter for next" autocomplete="off">
<span id="hits"></span>
<button id="fit" title="fit the graph (f)">fit</button><button id="zin">+</button><button id="zout">&minus;</button>
<button id="overview" title="fold back to the top-level blocks">overview</button>
<button id="expand-all">expand all</button>
<label title="export checks, size arithmetic, device moves, index and mask bookkeeping"><input id="machinery"
 type="checkbox"> capture machinery <span id="mach-count" class="muted"></span></label>
<span id="slider"><label for="target">target</label> <input id="target" type="range" min="0" max="0" step="1">
<b id="target-label"></b> <span id="figures"></span></span>
</header>
<main><div id="stage"><svg id="view" xmlns="http://www.w3.org/2000/svg"><g id="viewport"></g></svg>
<canvas id="mini" width="300" height="60" title="overview: click or drag to move"></canvas></div>
<aside id="panel"></aside></main>
</div>
<div id="tip" hidden></div>
<pre id="surgeon-status"></pre>"""


embed_json = script_json  # JSON safe inside a <script> element; kept under its old name


def page(data: dict) -> str:
    """The whole page for :func:`surgeon.viz.graphdata.graph_data`'s ``data``.

    Only two values reach the markup: the title, escaped as text, and ``data``, escaped as
    script JSON; the page's script then shows every string of it as text (see ``_page_js``)."""
    title = esc(f"surgeon groups: {data['title']}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title}</title>\n<script>{_COLLECTOR}</script>\n<style>{CSS}</style></head>\n<body>\n"
        + _BODY.format(title=title)
        + f'\n<script type="application/json" id="surgeon-data">{script_json(data)}</script>\n'
        + f"<script>{JS}</script>\n</body></html>\n"
    )
