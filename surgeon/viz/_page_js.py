"""The page's script: layered left-to-right layout, SVG drawing, pan/zoom, search, side panel.

Kept as a Python string so that the page is built from the installed package alone (no data
files to ship). It reads the JSON in ``#surgeon-data`` and reports what it drew in
``#surgeon-status`` (a JSON line tests and tools read with ``--dump-dom``).

Every string in that JSON may come from a file someone else wrote (a plan, module names), so
it reaches the page only as text: ``textContent``/``setAttribute`` for the drawing, and for the
side panel the ``html`` template tag, which escapes every value put into it (``esc``) unless
the value is itself an ``html`` result; ``setHtml`` is the only writer of ``innerHTML`` and
takes nothing else. Colours are checked to be ``#rrggbb`` before they reach a style.
"""

JS = r"""
(function () {
'use strict';
const D = JSON.parse(document.getElementById('surgeon-data').textContent);
const safeColor = (c, dflt) => (typeof c === 'string' && /^#[0-9a-fA-F]{6}$/.test(c)) ? c : dflt;
const GREY = safeColor(D.grey, '#c8c8c8'), NS = 'http://www.w3.org/2000/svg';
const NW = 132, FW = 176, HGAP = 46, VGAP = 16, CH = 9, CG = 2;
const G = new Map(D.groups.map(g => [g.id, g]));
const S = {depth: D.foldDepth, expanded: new Set(), selected: null, k: 1, tx: 0, ty: 0,
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
const parts = p => (p ? p.split('.') : []);

// ---- the visible graph: nodes, or folds of nodes sharing a module-path prefix ------------------
function foldKey(n) {  // the module-path prefix at the fold depth; shallower unprunable ops fold per module
  const p = parts(n.path);
  if (p.length >= S.depth) return p.slice(0, S.depth).join('.');
  const grey = n.group < 0 && !n.chips.length && n.op !== 'placeholder' && n.op !== 'output';
  return grey ? (n.path || '(top level)') + ' · unprunable ops' : null;
}
function foldCounts() {
  const c = new Map();
  for (const n of D.nodes) { const k = foldKey(n); if (k) c.set(k, (c.get(k) || 0) + 1); }
  return c;
}
function foldOf(n, counts) {
  if (!S.depth) return null;
  const pre = foldKey(n);
  return (pre && !S.expanded.has(pre) && counts.get(pre) > 1) ? pre : null;
}
function buildVisible() {
  const counts = S.depth ? foldCounts() : new Map();
  const map = new Map(), V = [], vOf = [];
  for (const n of D.nodes) {
    const fold = foldOf(n, counts), key = fold ? 'f:' + fold : 'n:' + n.id;
    let v = map.get(key);
    if (!v) {
      v = {key, fold, node: fold ? null : n, members: [], i: V.length, groups: new Set(), primary: -1};
      map.set(key, v); V.push(v);
    }
    v.members.push(n.id); vOf[n.id] = v;
    if (n.group >= 0) v.groups.add(n.group);
    n.chips.forEach(c => v.groups.add(c));
  }
  V.forEach(v => { if (v.node) v.primary = v.node.group; });
  const seen = new Set(), E = [];
  for (const [a, b] of D.edges) {
    const va = vOf[a], vb = vOf[b], key = va.i + ',' + vb.i;
    if (va !== vb && !seen.has(key)) { seen.add(key); E.push([va, vb]); }
  }
  S.V = V; S.E = E; S.vOf = vOf;
}

// ---- layered layout, left to right ---------------------------------------------------------------
function chipsOf(v) { return [...v.groups].filter(g => g !== v.primary).sort((a, b) => a - b); }
function sizeOf(v) {
  v.w = v.fold ? FW : NW;
  v.chips = chipsOf(v);
  const perRow = Math.floor((v.w - 10) / (CH + CG));
  v.h = 32 + (v.chips.length ? Math.ceil(v.chips.length / perRow) * (CH + CG) + 2 : 0);
}
function place(nodes, want) {  // keep order, at least VGAP apart, centred on what they want
  if (!nodes.length) return;
  nodes.sort((a, b) => want(a) - want(b) || a.i - b.i);
  let y = -Infinity, shift = 0;
  nodes.forEach((v, j) => {
    const min = j ? y + (nodes[j - 1].h + v.h) / 2 + VGAP : -Infinity;
    v.y = Math.max(want(v), min); y = v.y; shift += want(v) - v.y;
  });
  nodes.forEach(v => { v.y += shift / nodes.length; });
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
  const wantPre = v => pre[v.i].length ? mean(pre[v.i], p => p.y) : (v.y || 0);
  layers.forEach(l => { l.forEach(v => { v.y = 0; }); place(l, wantPre); });
  for (let l = layers.length - 1; l >= 0; l--) {  // pull sources towards their consumers
    const ls = layers[l] || [];
    if (ls.some(v => !pre[v.i].length && suc[v.i].length)) {
      place(ls, v => (!pre[v.i].length && suc[v.i].length) ? mean(suc[v.i], s => s.y) : v.y);
    }
  }
  let x = 0;
  layers.forEach(l => {
    const w = Math.max(...l.map(v => v.w));
    l.forEach(v => { v.x = x + w / 2; });
    x += w + HGAP;
  });
}

// ---- drawing ---------------------------------------------------------------------------------------
function edgePath(a, b, back) {
  const x1 = a.x + a.w / 2, y1 = a.y, x2 = b.x - b.w / 2, y2 = b.y, dx = Math.max(x2 - x1, 30);
  if (back) return `M${a.x},${a.y + a.h / 2}C${a.x},${a.y + 120} ${b.x},${b.y + 120} ${b.x},${b.y + b.h / 2}`;
  if (b.L - a.L > 1) {
    const lift = Math.min(30 + (b.L - a.L) * 6, 160) + Math.max(a.h, b.h) / 2;
    const top = Math.min(y1, y2) - lift;
    return `M${x1},${y1}C${x1 + 40},${top} ${x2 - 40},${top} ${x2},${y2}`;
  }
  return `M${x1},${y1}C${x1 + dx / 2},${y1} ${x2 - dx / 2},${y2} ${x2},${y2}`;
}
function label(v) {
  if (v.fold) {
    const p = v.fold.length > 26 ? '…' + v.fold.slice(-25) : v.fold;
    return [p, `${v.members.length} ops · folded`];
  }
  const n = v.node, t = n.label.length > 20 ? n.label.slice(0, 19) + '…' : n.label;
  return [t, n.type.length > 22 ? n.type.slice(0, 21) + '…' : n.type];
}
function drawNode(v, layer) {
  const fill = v.fold ? '#f3f3f3' : (v.primary >= 0 ? colorOf(v.primary) : GREY);
  const g = el('g', {class: 'node' + (v.fold ? ' fold' : '') + (!v.fold && v.primary < 0 ? ' grey' : ''),
                     'data-v': v.i, transform: `translate(${v.x - v.w / 2},${v.y - v.h / 2})`}, layer);
  const box = el('rect', {class: 'box', width: v.w, height: v.h, rx: 5, fill}, g);
  if (!v.fold && v.primary >= 0) box.setAttribute('data-group', v.primary);
  if (!v.fold && v.primary < 0 && v.node.kept_group >= 0) box.setAttribute('data-kept-group', v.node.kept_group);
  const [a, b] = label(v);
  el('text', {x: 6, y: 13, class: 'lbl'}, g).textContent = a;
  el('text', {x: 6, y: 25, class: 'sub'}, g).textContent = b;
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
  sizeMini(); highlight(); markHits(); writeStatus();
}

// ---- view: pan and zoom ------------------------------------------------------------------------
function applyView() {
  vp.setAttribute('transform', `translate(${S.tx},${S.ty}) scale(${S.k})`);
  svg.classList.toggle('far', S.k < 0.42);
  drawMini();
}
function bounds() {
  const V = S.V;
  return {x0: Math.min(...V.map(v => v.x - v.w / 2)) - 10, x1: Math.max(...V.map(v => v.x + v.w / 2)) + 10,
          y0: Math.min(...V.map(v => v.y - v.h / 2)) - 60, y1: Math.max(...V.map(v => v.y + v.h / 2)) + 20};
}
function fit() {
  const r = svg.getBoundingClientRect();
  if (!S.V.length) return;
  const b = bounds();
  S.k = Math.max(0.02, Math.min(1.5, 0.95 * Math.min(r.width / (b.x1 - b.x0), r.height / (b.y1 - b.y0))));
  S.tx = r.width / 2 - S.k * (b.x0 + b.x1) / 2; S.ty = r.height / 2 - S.k * (b.y0 + b.y1) / 2;
  applyView();
}
function home() {  // whole graph if it is legible that small, else its start at a legible zoom
  fit();
  if (S.k >= 0.35) return;
  const r = svg.getBoundingClientRect(), b = bounds();
  S.k = Math.max(0.55, Math.min(1, r.height / (b.y1 - b.y0)));
  S.tx = 20 - b.x0 * S.k; S.ty = r.height / 2 - S.k * (b.y0 + b.y1) / 2;
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
  const ctx = mini.getContext('2d'), {b, s} = miniScale(), r = svg.getBoundingClientRect();
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
  return `group ${gid} · ${g.kind} ×${g.units} · ${pct(g.flops_share)} of FLOPs`;
}
function tipText(v) {
  if (v.fold) {
    return `${v.fold}: ${v.members.length} ops folded, ${v.groups.size} prunable groups (click twice to expand)`;
  }
  const n = v.node, lines = [`${n.name}: ${n.type}${n.path ? ' in ' + n.path : ''}`];
  if (n.shape) lines.push('shape [' + n.shape.join(', ') + ']' + (n.flops ? ` · ${num(n.flops)} FLOPs` : ''));
  lines.push(n.group >= 0 ? groupLine(n.group) : 'not prunable: ' + n.reason);
  if (v.chips.length) lines.push('also touches groups ' + v.chips.join(', '));
  return lines.join('\n');
}

// ---- selection and the side panel --------------------------------------------------------------
function onClick(t) {
  const chip = t.closest && t.closest('.chip');
  if (chip) return select({type: 'group', id: +chip.getAttribute('data-group')});
  const g = t.closest && t.closest('.node');
  if (!g) return select(null);
  const v = S.V[+g.getAttribute('data-v')];
  if (v.fold) {
    if (S.selected && S.selected.type === 'fold' && S.selected.key === v.fold) return expand(v.fold);
    return select({type: 'fold', key: v.fold});
  }
  if (v.primary >= 0) return select({type: 'group', id: v.primary, node: v.node.id});
  return select({type: 'node', id: v.node.id});
}
function select(sel) { S.selected = sel; highlight(); showPanel(); writeStatus(); }
function highlight() {
  const s = S.selected, gid = s && s.type === 'group' ? s.id : null;
  S.V.forEach(v => {
    v.el.classList.toggle('dim', gid != null && !v.groups.has(gid));
    const mine = s && v.node && (s.node === v.node.id || (s.type === 'node' && s.id === v.node.id));
    const on = s && ((s.type === 'fold' && v.fold === s.key) || (s.type !== 'fold' && mine));
    v.el.classList.toggle('sel', !!on);
  });
  S.E.forEach(e => e.el.classList.toggle('dim', gid != null && !(e[0].groups.has(gid) && e[1].groups.has(gid))));
}
function expand(pre) { S.expanded.add(pre); S.selected = null; render(); showPanel(); }
function swatch(gid) {
  return html`<a href="#" class="gl" data-group="${gid}"><i style="background:${colorOf(gid)}"></i>${gid}</a>`;
}
const table = rows => html`<table>${rows.map(([a, b]) => html`<tr><th>${a}</th><td>${b}</td></tr>`)}</table>`;
function scoreChart(g) {
  const sc = g.scores;
  if (!sc) return html`<p class="muted">no scores</p>`;
  const W = 340, H = 70, n = sc.sorted.length, lo = Math.min(0, sc.min), hi = sc.max > lo ? sc.max : lo + 1;
  const bars = sc.sorted.map((s, i) => {
    const h = Math.max(1, (s - lo) / (hi - lo) * (H - 2)), kept = sc.kept[i] >= 0.5;
    const x = (i * W / n).toFixed(2), w = Math.max(W / n - 0.3, 0.4).toFixed(2);
    return html`<rect x="${x}" y="${(H - h).toFixed(2)}" width="${w}" height="${h.toFixed(2)}"
      fill="${kept ? safeColor(g.color, GREY) : '#9a9a9a'}"/>`;
  });
  return html`<svg class="scores" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">${bars}</svg>
<p class="muted">${sc.n} units sorted by score · min ${sc.min} · median ${sc.median} · max ${sc.max}${
    g.decision ? ' · grey bars are removed' : ''}</p>`;
}
function list(items, more, fmt) {
  const rest = more > items.length ? html`<li class="muted">… ${more - items.length} more</li>` : '';
  return html`<ul class="members">${items.map(x => html`<li>${fmt(x)}</li>`)}${rest}</ul>`;
}
function decisionPart(d) {
  const out = [html`<p class="plan">plan keeps <b>${d.kept}</b> of ${d.units} units
(${pct(d.kept / d.units)}), removes <b>${d.units - d.kept}</b></p>`];
  if (Array.isArray(d.removed) && d.removed.length) {
    const runs = d.removed.slice(0, 40).map(([a, b]) => b - a > 1 ? `${a}–${b - 1}` : a);
    out.push(html`<p class="muted">removed units: ${runs.join(', ')}${d.removed.length > 40 ? ', …' : ''}</p>`);
  }
  return out;
}
function groupPanel(g) {
  const rows = [['units', `${g.units} ${g.kind}s` + (g.frozen ? ` (${g.frozen} must stay)` : '')],
    ['FLOPs share', `${pct(g.flops_share)} (${num(g.flops_per_unit)} per unit)`],
    ['params share', `${pct(g.params_share)} (${num(g.params_per_unit)} per unit)`],
    ['exact', g.exact ? 'yes' : 'no: ' + g.inexact]];
  const value = ([n, d]) => html`<a href="#" class="nl" data-node="${String(n).split('#')[0]}">${n}</a>
<span class="muted">dim ${d}</span>`;
  return html`<h2><i class="sw" style="background:${safeColor(g.color, GREY)}"></i>Group ${g.id}</h2>${
    g.prunable ? html`<p class="ok">prunable</p>` : html`<p class="bad">kept whole: ${g.reason}</p>`}${
    g.decision ? decisionPart(g.decision) : ''}${table(rows)}<h3>Scores</h3>${scoreChart(g)}
<h3>Tensors (${g.n_tensors})</h3>${list(g.tensors, g.n_tensors,
    ([n, d, s]) => html`${n} <span class="muted">dim ${d} · ${s}</span>`)}
<details><summary>Values (${g.n_values}) and ops</summary>${list(g.values, g.n_values, value)}${
    g.virtual.length ? html`<p>virtual: ${g.virtual.join(', ')}</p>` : ''}${
    list(g.where, g.where.length, x => x)}</details>`;
}
function nodePanel(n) {
  const v = S.vOf[n.id];
  const rows = [['op', n.op + ' ' + n.type], ['module', n.path || '(top level)'],
                ['shape', n.shape ? '[' + n.shape.join(', ') + ']' : '—'], ['FLOPs', num(n.flops)]];
  return html`<h2><i class="sw" style="background:${n.group >= 0 ? colorOf(n.group) : GREY}"></i>${n.name}</h2>${
    table(rows)}${n.group >= 0 ? html`<p>output channels: group ${swatch(n.group)}</p>`
                               : html`<p class="bad">not prunable: ${n.reason}</p>`}${
    v.chips.length ? html`<p>also touches: ${v.chips.map(swatch)}</p>` : ''}`;
}
function foldPanel(pre) {
  const v = S.V.find(v => v.fold === pre);
  if (!v) return overview();
  const gs = [...v.groups].sort((a, b) => a - b).map(swatch);
  return html`<h2>${pre}</h2><p>${v.members.length} ops folded into one box.</p>
<p><button id="expand-one">Expand ${pre}</button></p><p>prunable groups inside:</p><p>${gs}</p>`;
}
function overview() {
  const t = D.totals, plan = D.plan ? String(D.plan.summary).split('\n').slice(0, 3).join('\n') : null;
  const gs = D.groups.filter(g => g.prunable).sort((a, b) => b.flops_share - a.flops_share);
  const row = g => html`<tr><td>${swatch(g.id)}</td><td>${g.kind} ×${g.units}${
    g.decision ? ' → ' + g.decision.kept : ''}</td><td>${pct(g.flops_share)}</td></tr>`;
  const kept = D.groups.filter(g => !g.prunable);
  return html`<h2>${D.title}</h2>
<p>${t.nodes} ops (${D.mode} capture) · ${num(t.flops)} FLOPs · ${num(t.params)} params</p>
<p><b>${t.prunable}</b> prunable groups of ${t.groups}. Click a box or a chip to see its group.</p>${
    plan != null ? html`<h3>Plan</h3><pre>${plan}</pre>` : ''}
<h3>Groups by FLOPs share</h3><table class="legend">${gs.map(row)}</table>${
    kept.length ? html`<h3>Kept whole</h3>${list(kept, kept.length, g => `group ${g.id}: ${g.reason}`)}` : ''}`;
}
function showPanel() {
  const s = S.selected;
  if (!s) setHtml(panel, overview());
  else if (s.type === 'group') setHtml(panel, groupPanel(G.get(s.id)));
  else if (s.type === 'node') setHtml(panel, nodePanel(D.nodes[s.id]));
  else setHtml(panel, foldPanel(s.key));
  const b = document.getElementById('expand-one');
  if (b) b.addEventListener('click', () => expand(s.key));
}
panel.addEventListener('click', e => {
  const a = e.target.closest('a');
  if (!a) return;
  e.preventDefault();
  if (a.dataset.group != null) { select({type: 'group', id: +a.dataset.group}); focusGroup(+a.dataset.group); }
  if (a.dataset.node != null) selectNodeByName(a.dataset.node);
});
function selectNodeByName(name) {
  const n = D.nodes.find(n => n.name === name);
  if (!n) return false;
  reveal(n);
  select(n.group >= 0 ? {type: 'group', id: n.group, node: n.id} : {type: 'node', id: n.id});
  return true;
}
function reveal(n) {
  let v = S.vOf[n.id];
  if (v.fold) { S.expanded.add(v.fold); render(); v = S.vOf[n.id]; }
  focusV(v, 1);
}

// ---- search by module name ---------------------------------------------------------------------
const box = document.getElementById('search'), count = document.getElementById('hits');
function markHits() {
  const hit = new Set(S.hits.map(id => S.vOf[id]));
  S.V.forEach(v => v.el.classList.toggle('hit', hit.has(v)));
}
box.addEventListener('input', () => {
  const q = box.value.trim().toLowerCase();
  const text = n => (n.path + ' ' + n.name + ' ' + n.target).toLowerCase();
  S.hits = q ? D.nodes.filter(n => text(n).includes(q)).map(n => n.id) : [];
  S.hitAt = -1;
  count.textContent = q ? `${S.hits.length} match${S.hits.length === 1 ? '' : 'es'}` : '';
  markHits();
});
box.addEventListener('keydown', e => {
  if (e.key === 'Enter' && S.hits.length) {
    S.hitAt = (S.hitAt + 1) % S.hits.length;
    const n = D.nodes[S.hits[S.hitAt]];
    reveal(n); markHits();
    select(n.group >= 0 ? {type: 'group', id: n.group, node: n.id} : {type: 'node', id: n.id});
  }
  if (e.key === 'Escape') { box.value = ''; box.dispatchEvent(new Event('input')); }
});

// ---- toolbar, keys, status, start --------------------------------------------------------------
const foldSel = document.getElementById('fold');
const depthMax = Math.max(0, ...D.nodes.map(n => parts(n.path).length));
for (let d = 0; d <= depthMax; d++) {
  const o = document.createElement('option');
  o.value = d; o.textContent = d ? `fold at depth ${d}` : 'no folding';
  foldSel.appendChild(o);
}
foldSel.value = S.depth;
foldSel.addEventListener('change', () => {
  S.depth = +foldSel.value; S.expanded.clear(); render(); home(); showPanel();
});
document.getElementById('fit').addEventListener('click', fit);
document.getElementById('zin').addEventListener('click', () => zoom(1.3));
document.getElementById('zout').addEventListener('click', () => zoom(1 / 1.3));
document.getElementById('expand-all').addEventListener('click', () => {
  S.depth = 0; foldSel.value = 0; render(); home(); showPanel();
});
window.addEventListener('keydown', e => {
  if (e.target === box) return;
  if (e.key === '/') { e.preventDefault(); box.focus(); }
  if (e.key === 'f') fit();
  if (e.key === 'Escape') select(null);
});
function writeStatus() {
  const drawn = new Set();
  svg.querySelectorAll('[data-group]').forEach(x => {
    if (x.getAttribute('fill') !== GREY) drawn.add(+x.getAttribute('data-group'));
  });
  const grey = new Set([...svg.querySelectorAll('[data-kept-group]')].map(x => +x.getAttribute('data-kept-group')));
  const h = panel.querySelector('h2');
  const st = {ready: true, errors: window.__errors || [], groupsDrawn: drawn.size, greyGroupsDrawn: grey.size,
              prunableGroups: D.totals.prunable, groups: D.totals.groups, visibleNodes: S.V.length,
              totalNodes: D.nodes.length, foldDepth: S.depth, selected: S.selected,
              panelTitle: h ? h.textContent : ''};
  document.getElementById('surgeon-status').textContent = JSON.stringify(st);
  return st;
}
function fromHash() {
  const q = new URLSearchParams(location.hash.replace(/^#/, ''));
  if (q.get('fold') != null) { S.depth = +q.get('fold'); foldSel.value = S.depth; render(); fit(); }
  if (q.get('search')) { box.value = q.get('search'); box.dispatchEvent(new Event('input')); }
  if (q.get('node')) selectNodeByName(q.get('node'));
  const id = q.get('select') != null ? +q.get('select') : null;
  if (id != null && G.has(id)) { select({type: 'group', id}); focusGroup(id); }
}
window.__surgeon = {status: writeStatus, select: id => { select({type: 'group', id}); return focusGroup(id); },
                    selectNode: selectNodeByName, focusGroup, fit, render, data: D,
                    focusNode: name => { const n = D.nodes.find(n => n.name === name); if (!n) return null;
                                         reveal(n); return S.vOf[n.id].el; }};
render(); home(); showPanel(); fromHash(); writeStatus();
window.addEventListener('hashchange', fromHash);
window.addEventListener('resize', () => { sizeMini(); applyView(); });
})();
"""
