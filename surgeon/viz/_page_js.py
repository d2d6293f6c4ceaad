"""The page's script: layered left-to-right layout, SVG drawing, pan/zoom, search, side panel.

Kept as a Python string so that the page is built from the installed package alone (no data
files to ship). It reads the JSON in ``#surgeon-data`` and reports what it drew in
``#surgeon-status`` (a JSON line tests and tools read with ``--dump-dom``).

Every string in that JSON may come from a file someone else wrote (a plan, module names), so
it reaches the page only as text: ``textContent``/``setAttribute`` for the drawing, and for the
side panel the ``html`` template tag, which escapes every value put into it (``esc``) unless
the value is itself an ``html`` result; ``setHtml`` is the only writer of ``innerHTML`` and
takes nothing else. Colours are checked to be ``#rrggbb`` before they reach a style.

The side panel, search,
toolbar and status are in ``_page_panel_js`` (the same closure; split only for length).
"""

from ._page_panel_js import PANEL

_GRAPH = r"""
(function () {
'use strict';
const D = JSON.parse(document.getElementById('surgeon-data').textContent);
const safeColor = (c, dflt) => (typeof c === 'string' && /^#[0-9a-fA-F]{6}$/.test(c)) ? c : dflt;
const GREY = safeColor(D.grey, '#c8c8c8'), NS = 'http://www.w3.org/2000/svg';
const NW = 150, FW = 190, HGAP = 18, VGAP = 26, CH = 9, CG = 2;
const G = new Map(D.groups.map(g => [g.id, g]));
const S = {open: new Set(D.open || []), machinery: false, t: -1, marked: 0, selected: null, k: 1, tx: 0, ty: 0,
           hits: [], hitAt: -1, V: [], E: [], vOf: []};
const svg = document.getElementById('view'), vp = document.getElementById('viewport');
const panel = document.getElementById('panel'), tip = document.getElementById('tip');
const esc = s => String(s == null ? '' : s).replace(/[&<>"']/g,
  c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
function Html(s) { this.s = s; }  // markup built by the html tag: the one kind setHtml accepts
Html.prototype.toString = () => { throw new TypeError('html`` markup joined with +; nest it in html``'); };
const part = v => v instanceof Html ? v.s : Array.isArray(v) ? v.map(part).join('') : esc(v);
const html = (strings, ...vals) => new Html(strings.reduce((out, s, i) => out + part(vals[i - 1]) + s));
function setHtml(node, h) {
  if (!(h instanceof Html)) throw new TypeError('setHtml takes html`` markup only');
  node.innerHTML = h.s;
}
const pct = x => (x * 100).toFixed(x > 0 && x < 0.001 ? 3 : 1) + '%';
function num(x) {
  const a = Math.abs(x);
  if (a >= 1e12) return (x / 1e12).toFixed(2) + 'T';
  if (a >= 1e9) return (x / 1e9).toFixed(2) + 'G';
  if (a >= 1e6) return (x / 1e6).toFixed(2) + 'M';
  if (a >= 1e3) return (x / 1e3).toFixed(1) + 'k';
  return String(Math.round(x * 100) / 100);
}
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
const colorOf = gid => safeColor((G.get(gid) || {}).color, GREY);

// ---- the visible graph: ops, or folds (module paths) holding several ------------------------------
const F = D.folds || [];
function chainOf(n) { const c = []; for (let f = n.fold; f >= 0; f = F[f].parent) c.push(f); return c.reverse(); }
const CHAIN = D.nodes.map(chainOf);
const shownOp = n => S.machinery || !n.hide;
function boxOf(n) {  // the outermost closed fold holding n, or -1: n is drawn itself
  for (const f of CHAIN[n.id]) if (!S.open.has(f)) return f;
  return -1;
}
function buildVisible() {
  const map = new Map(), V = [], vOf = [];
  for (const n of D.nodes) {
    if (!shownOp(n)) { vOf[n.id] = null; continue; }
    const f = boxOf(n), key = f >= 0 ? 'f' + f : 'n' + n.id;
    let v = map.get(key);
    if (!v) {
      v = {key, fold: f >= 0 ? F[f].key : null, fi: f, node: f >= 0 ? null : n, members: [], i: V.length,
           groups: new Set(), primary: -1, weight: new Map()};
      map.set(key, v); V.push(v);
    }
    v.members.push(n.id); vOf[n.id] = v;
    if (n.group >= 0) { v.groups.add(n.group); v.weight.set(n.group, (v.weight.get(n.group) || 0) + 1 + n.flops); }
    n.chips.forEach(c => { v.groups.add(c); if (!v.weight.has(c)) v.weight.set(c, 0); });
  }
  V.forEach(v => { if (v.node) v.primary = v.node.group; });
  const seen = new Set(), E = [];
  const add = (a, b) => {
    const va = vOf[a], vb = vOf[b];
    if (!va || !vb || va === vb) return;
    const key = va.i + ',' + vb.i;
    if (!seen.has(key)) { seen.add(key); E.push([va, vb]); }
  };
  D.edges.forEach(([a, b]) => add(a, b));
  if (!S.machinery) (D.bridges || []).forEach(([a, b]) => add(a, b));
  S.V = V; S.E = E; S.vOf = vOf;
}

// ---- layered layout, top to bottom -----------------------------------------------------------------
function chipsOf(v) { return v.fold ? [] : [...v.groups].filter(g => g !== v.primary).sort((a, b) => a - b); }
function sizeOf(v) {
  v.w = v.fold ? FW : NW;
  v.chips = chipsOf(v);
  const perRow = Math.floor((v.w - 10) / (CH + CG));
  v.h = (v.fold ? 46 : 34) + (v.chips.length ? Math.ceil(v.chips.length / perRow) * (CH + CG) + 2 : 0);
}
function place(nodes, want) {  // keep order, at least HGAP apart, centred on what they want
  if (!nodes.length) return;
  nodes.sort((a, b) => want(a) - want(b) || a.i - b.i);
  let x = -Infinity, shift = 0;
  nodes.forEach((v, j) => {
    const min = j ? x + (nodes[j - 1].w + v.w) / 2 + HGAP : -Infinity;
    v.x = Math.max(want(v), min); x = v.x; shift += want(v) - v.x;
  });
  nodes.forEach(v => { v.x += shift / nodes.length; });
}
function layout() {
  const V = S.V, pre = V.map(() => []), suc = V.map(() => []);
  for (const e of S.E) {
    const [a, b] = e;
    e.back = a.i > b.i;
    if (!e.back) { pre[b.i].push(a); suc[a.i].push(b); }
  }
  V.forEach(v => { v.L = pre[v.i].reduce((m, p) => Math.max(m, p.L + 1), 0); sizeOf(v); });
  for (let i = V.length - 1; i >= 0; i--) {  // sources sit just before their first consumer
    const v = V[i];
    if (!pre[i].length && suc[i].length) v.L = Math.max(0, Math.min(...suc[i].map(s => s.L)) - 1);
  }
  const layers = [];
  V.forEach(v => { (layers[v.L] = layers[v.L] || []).push(v); });
  const mean = (xs, f) => xs.reduce((s, x) => s + f(x), 0) / xs.length;
  const wantPre = v => pre[v.i].length ? mean(pre[v.i], p => p.x) : (v.x || 0);
  layers.forEach(l => { l.forEach(v => { v.x = 0; }); place(l, wantPre); });
  for (let l = layers.length - 1; l >= 0; l--) {  // pull sources towards their consumers
    const ls = layers[l] || [];
    if (ls.some(v => !pre[v.i].length && suc[v.i].length)) {
      place(ls, v => (!pre[v.i].length && suc[v.i].length) ? mean(suc[v.i], s => s.x) : v.x);
    }
  }
  let y = 0;
  layers.forEach(l => {
    if (!l) return;
    const h = Math.max(...l.map(v => v.h));
    l.forEach(v => { v.y = y + h / 2; });
    y += h + VGAP;
  });
}

// ---- drawing ---------------------------------------------------------------------------------------
function edgePath(a, b, back) {
  const x1 = a.x, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y - b.h / 2, dy = Math.max(y2 - y1, 20);
  const ax = a.x + a.w / 2, bx = b.x + b.w / 2;  // a back edge loops round the right-hand side
  if (back) return `M${ax},${a.y}C${ax + 120},${a.y} ${bx + 120},${b.y} ${bx},${b.y}`;
  if (b.L - a.L > 1) {
    const side = Math.min(30 + (b.L - a.L) * 6, 160) + Math.max(a.w, b.w) / 2;
    const right = Math.max(x1, x2) + side;
    return `M${x1 + a.w / 2},${a.y}C${right},${y1} ${right},${y2} ${x2 + b.w / 2},${b.y}`;
  }
  return `M${x1},${y1}C${x1},${y1 + dy / 2} ${x2},${y2 - dy / 2} ${x2},${y2}`;
}
const clip = (s, n) => s.length > n ? s.slice(0, n - 1) + '…' : s;
function label(v) {
  if (v.fold) {
    const f = F[v.fi];
    const what = f.repeat ? `${f.repeat} × ${clip(String(f.block || 'block'), 18)}` : clip(String(f.cls || 'module'), 22);
    return [clip(f.repeat ? `${f.label} (repeated)` : f.label, 28), `${what} · ${v.members.length} ops`];
  }
  const n = v.node, own = n.path && n.op === 'call_function' && (n.fold < 0 || F[n.fold].key !== n.path);
  if (own) return [clip(n.path.split('.').pop(), 22), clip(n.label + ' · ' + n.type, 24)];  // a module's one op
  return [clip(n.label, 22), clip(n.type, 24)];
}
function drawStrip(v, g) {  // a fold is coloured by the groups inside it, by their FLOPs
  const gs = [...v.weight.entries()].sort((a, b) => a[0] - b[0]), x0 = 6, W = v.w - 12;
  const tot = gs.reduce((s, [, w]) => s + w, 0) || 1, minW = Math.min(3, W / Math.max(1, gs.length));
  let x = x0;
  const free = W - minW * gs.length;
  v.segs = gs.map(([gid, w]) => {
    const width = minW + Math.max(0, free) * w / tot;
    const r = el('rect', {class: 'seg', 'data-group': gid, x: x.toFixed(2), y: 30, width: width.toFixed(2), height: 10,
                          fill: colorOf(gid)}, g);
    const cut = el('rect', {class: 'cut', x: x.toFixed(2), y: 30, width: 0, height: 10}, g);
    x += width;
    return {gid, r, cut, x: +r.getAttribute('x'), w: width};
  });
}
function drawNode(v, layer) {
  const fill = v.fold ? '#f3f3f3' : (v.primary >= 0 ? colorOf(v.primary) : GREY);
  const g = el('g', {class: 'node' + (v.fold ? ' fold' : '') + (!v.fold && v.primary < 0 ? ' grey' : '') +
                     (v.node && v.node.hide ? ' machinery' : ''),
                     'data-v': v.i, transform: `translate(${v.x - v.w / 2},${v.y - v.h / 2})`}, layer);
  if (v.fold) g.setAttribute('data-fold', v.fi);
  const box = el('rect', {class: 'box', width: v.w, height: v.h, rx: 5, fill}, g);
  if (!v.fold && v.primary >= 0) box.setAttribute('data-group', v.primary);
  if (!v.fold && v.primary < 0 && v.node.kept_group >= 0) box.setAttribute('data-kept-group', v.node.kept_group);
  const [a, b] = label(v);
  el('text', {x: 6, y: 13, class: 'lbl'}, g).textContent = a;
  el('text', {x: 6, y: 25, class: 'sub'}, g).textContent = b;
  if (v.fold) drawStrip(v, g);
  else if (v.primary >= 0) v.cut = el('rect', {class: 'cut', x: 0, y: v.h - 5, width: 0, height: 5}, g);
  const perRow = Math.floor((v.w - 10) / (CH + CG));
  v.chips.forEach((gid, j) => {
    el('rect', {class: 'chip', 'data-group': gid, width: CH, height: CH, rx: 2, fill: colorOf(gid),
                x: 6 + (j % perRow) * (CH + CG), y: 31 + Math.floor(j / perRow) * (CH + CG)}, g);
  });
  v.el = g;
}
function render() {
  buildVisible(); layout();
  vp.textContent = '';
  const edges = el('g', {class: 'edges'}, vp), nodes = el('g', {class: 'nodes'}, vp);
  for (const e of S.E) {
    const [a, b] = e, c = a.primary >= 0 ? colorOf(a.primary) : '#aaa';
    e.el = el('path', {d: edgePath(a, b, e.back), stroke: c, class: 'edge' + (e.back ? ' back' : '')}, edges);
  }
  S.V.forEach(v => drawNode(v, nodes));
  sizeMini(); highlight(); markHits(); paintTarget(); writeStatus();
}

// ---- the target slider: what the plan at each target removes ----------------------------------------
const T = D.targets || [];
const rec = () => (S.t >= 0 && S.t < T.length && !T[S.t].error) ? T[S.t] : null;
function removedShare(gid) {
  const r = rec(), g = G.get(gid);
  if (!r || !g || !r.groups[gid]) return 0;
  return 1 - r.groups[gid][0] / g.units;
}
function paintTarget() {
  let marked = 0;
  S.V.forEach(v => {
    if (v.cut) {
      const s = removedShare(v.primary);
      v.cut.setAttribute('width', (v.w * s).toFixed(2)); v.cut.setAttribute('x', (v.w * (1 - s)).toFixed(2));
      if (s > 0) marked++;
    }
    (v.segs || []).forEach(sg => {
      const s = removedShare(sg.gid);
      sg.cut.setAttribute('width', (sg.w * s).toFixed(2)); sg.cut.setAttribute('x', (sg.x + sg.w * (1 - s)).toFixed(2));
      if (s > 0) marked++;
    });
  });
  S.marked = marked;
  const r = T[S.t], fig = document.getElementById('figures');
  if (!r) fig.textContent = '';
  else if (r.error) fig.textContent = `target ${r.target}: no plan (${clip(r.error, 90)})`;
  else fig.textContent = `FLOPs ${num(r.flops[0])} → ${num(r.flops[1])} (${pct(r.flops[1] / (r.flops[0] || 1))}) · ` +
    `params ${num(r.params[0])} → ${num(r.params[1])} (${pct(r.params[1] / (r.params[0] || 1))}) · ` +
    `${Object.keys(r.groups).length} groups shrink`;
}
function setTarget(i) {
  S.t = i; slider.value = i;
  document.getElementById('target-label').textContent = T[i] ? `keep ${T[i].target}` : '';
  paintTarget(); if (!S.selected || S.selected.type !== 'node') showPanel(); writeStatus();
}

// ---- view: pan and zoom ------------------------------------------------------------------------
function applyView() {
  vp.setAttribute('transform', `translate(${S.tx},${S.ty}) scale(${S.k})`);
  svg.classList.toggle('far', S.k < 0.42);
  drawMini();
}
function bounds() {
  const V = S.V;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  V.forEach(v => {
    x0 = Math.min(x0, v.x - v.w / 2); x1 = Math.max(x1, v.x + v.w / 2);
    y0 = Math.min(y0, v.y - v.h / 2); y1 = Math.max(y1, v.y + v.h / 2);
  });
  return {x0: x0 - 20, x1: x1 + 20, y0: y0 - 20, y1: y1 + 20};
}
function fit() {
  const r = svg.getBoundingClientRect();
  if (!S.V.length) return;
  const b = bounds();
  S.k = Math.max(0.01, Math.min(1.5, 0.95 * Math.min(r.width / (b.x1 - b.x0), r.height / (b.y1 - b.y0))));
  S.tx = r.width / 2 - S.k * (b.x0 + b.x1) / 2; S.ty = r.height / 2 - S.k * (b.y0 + b.y1) / 2;
  applyView();
}
function fitOrTop() {  // the whole graph if legible that small, else its top at a legible zoom
  fit();
  if (S.k >= 0.4) return;
  const r = svg.getBoundingClientRect(), b = bounds();
  S.k = Math.max(0.4, Math.min(1, 0.95 * r.width / (b.x1 - b.x0)));
  S.tx = r.width / 2 - S.k * (b.x0 + b.x1) / 2; S.ty = 10 - S.k * b.y0;
  applyView();
}
const mini = document.getElementById('mini');
function miniScale() {  // uniform scale, graph centred in the canvas
  const b = bounds(), s = Math.min(mini.width / (b.x1 - b.x0), mini.height / (b.y1 - b.y0));
  const ox = (mini.width / s - (b.x1 - b.x0)) / 2, oy = (mini.height / s - (b.y1 - b.y0)) / 2;
  return {b: {x0: b.x0 - ox, y0: b.y0 - oy}, s};
}
function drawMini() {
  if (!S.V.length || !mini.getContext) return;
  const ctx = mini.getContext('2d'), {b, s} = miniScale(), r = svg.getBoundingClientRect(), w = bounds();
  mini.hidden = S.tx + S.k * w.x0 >= -1 && S.ty + S.k * w.y0 >= -1 &&  // all in view: no map needed
    S.tx + S.k * w.x1 <= r.width + 1 && S.ty + S.k * w.y1 <= r.height + 1;
  ctx.clearRect(0, 0, mini.width, mini.height);
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, mini.width, mini.height);
  S.V.forEach(v => {
    ctx.fillStyle = v.fold ? '#bbb' : (v.primary >= 0 ? colorOf(v.primary) : GREY);
    ctx.fillRect((v.x - v.w / 2 - b.x0) * s, (v.y - v.h / 2 - b.y0) * s,
                 Math.max(1.5, v.w * s), Math.max(1.5, v.h * s));
  });
  ctx.strokeStyle = '#d00'; ctx.lineWidth = 1.5;
  ctx.strokeRect((-S.tx / S.k - b.x0) * s, (-S.ty / S.k - b.y0) * s, r.width / S.k * s, r.height / S.k * s);
}
function miniJump(e) {
  const {b, s} = miniScale(), m = mini.getBoundingClientRect(), r = svg.getBoundingClientRect();
  const gx = (e.clientX - m.left) / s + b.x0, gy = (e.clientY - m.top) / s + b.y0;
  S.tx = r.width / 2 - gx * S.k; S.ty = r.height / 2 - gy * S.k;
  applyView();
}
let miniDrag = false;
mini.addEventListener('pointerdown', e => { e.stopPropagation(); miniDrag = true; miniJump(e); });
window.addEventListener('pointermove', e => { if (miniDrag) miniJump(e); });
window.addEventListener('pointerup', () => { miniDrag = false; });
function sizeMini() {
  const b = bounds(), w = Math.min(360, Math.max(160, svg.getBoundingClientRect().width * 0.3));
  mini.width = Math.round(w);
  mini.height = Math.round(Math.max(24, Math.min(140, w * (b.y1 - b.y0) / (b.x1 - b.x0))));
}
function zoom(f, cx, cy) {
  const r = svg.getBoundingClientRect();
  if (cx == null) { cx = r.width / 2; cy = r.height / 2; }
  const k = Math.max(0.02, Math.min(4, S.k * f));
  S.tx = cx - (cx - S.tx) * k / S.k; S.ty = cy - (cy - S.ty) * k / S.k; S.k = k;
  applyView();
}
function focusV(v, k) {
  const r = svg.getBoundingClientRect();
  S.k = Math.max(S.k, k || 1);
  S.tx = r.width / 2 - v.x * S.k; S.ty = r.height / 2 - v.y * S.k;
  applyView();
}
function focusGroup(gid) {
  const v = S.V.find(v => v.primary === gid) || S.V.find(v => v.groups.has(gid));
  if (v) focusV(v, 1);
  return v ? v.el : null;
}
let drag = null;
svg.addEventListener('pointerdown', e => {
  drag = {x: e.clientX, y: e.clientY, tx: S.tx, ty: S.ty, moved: false, target: e.target};
});
window.addEventListener('pointermove', e => {
  if (drag) {
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    if (drag.moved) { S.tx = drag.tx + dx; S.ty = drag.ty + dy; applyView(); }
  }
});
window.addEventListener('pointerup', () => {
  if (drag && !drag.moved) onClick(drag.target);
  drag = null;
});
svg.addEventListener('wheel', e => {
  e.preventDefault();
  const r = svg.getBoundingClientRect();
  zoom(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
}, {passive: false});
svg.addEventListener('mousemove', e => {
  const g = e.target.closest && e.target.closest('.node');
  if (!g || drag) { tip.hidden = true; return; }
  const chip = e.target.closest('.chip');
  tip.textContent = chip ? groupLine(+chip.getAttribute('data-group')) : tipText(S.V[+g.getAttribute('data-v')]);
  tip.hidden = false;
  tip.style.left = (e.clientX + 14) + 'px'; tip.style.top = (e.clientY + 12) + 'px';
});
svg.addEventListener('mouseleave', () => { tip.hidden = true; });
function groupLine(gid) {
  const g = G.get(gid);
  const r = rec(), cut = r && r.groups[gid] ? ` · at ${r.target}: keeps ${r.groups[gid][0]}` : '';
  return `group ${gid} · ${g.kind} ×${g.units} · ${pct(g.flops_share)} of FLOPs${cut}`;
}
function tipText(v) {
  if (v.fold) {
    const f = F[v.fi];
    return `${v.fold}${f.repeat ? ` (${f.repeat} × ${f.block})` : ''}: ${v.members.length} ops folded, ` +
      `${v.groups.size} prunable groups (click to open)`;
  }
  const n = v.node, lines = [`${n.name}: ${n.type}${n.path ? ' in ' + n.path : ''}`];
  if (n.shape) lines.push('shape [' + n.shape.join(', ') + ']' + (n.flops ? ` · ${num(n.flops)} FLOPs` : ''));
  lines.push(n.group >= 0 ? groupLine(n.group) : 'not prunable: ' + n.reason);
  if (v.chips.length) lines.push('also touches groups ' + v.chips.join(', '));
  return lines.join('\n');
}
"""

JS = _GRAPH + PANEL  # one script: the graph part defines what the panel part uses
