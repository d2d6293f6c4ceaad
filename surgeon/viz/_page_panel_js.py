"""The second half of the page's script (see ``_page_js``): selection, the side panel, the
target slider's panel text, search, the toolbar, keys and the status line tests read."""

PANEL = r"""
// ---- selection and the side panel --------------------------------------------------------------
function onClick(t) {
  const chip = t.closest && t.closest('.chip');
  if (chip) return select({type: 'group', id: +chip.getAttribute('data-group')});
  const seg = t.closest && t.closest('.seg');  // a fold's colour strip: that group, the fold stays shut
  if (seg) return select({type: 'group', id: +seg.getAttribute('data-group')});
  const g = t.closest && t.closest('.node');
  if (!g) return select(null);
  const v = S.V[+g.getAttribute('data-v')];
  if (v.fold) return expand(v.fi);
  if (v.primary >= 0) return select({type: 'group', id: v.primary, node: v.node.id});
  return select({type: 'node', id: v.node.id});
}
function select(sel) { S.selected = sel; highlight(); showPanel(); writeStatus(); }
function highlight() {
  const s = S.selected, gid = s && s.type === 'group' ? s.id : null;
  S.V.forEach(v => {
    v.el.classList.toggle('dim', gid != null && !v.groups.has(gid));
    const mine = s && v.node && (s.node === v.node.id || (s.type === 'node' && s.id === v.node.id));
    const on = s && s.type !== 'fold' && mine;
    v.el.classList.toggle('sel', !!on);
  });
  S.E.forEach(e => e.el.classList.toggle('dim', gid != null && !(e[0].groups.has(gid) && e[1].groups.has(gid))));
}
function expand(fi) {  // open one fold: its blocks show, the view fits, the panel describes it
  S.open.add(fi); S.selected = {type: 'fold', key: F[fi].key, fi}; render(); fitOrTop(); showPanel(); writeStatus();
}
function collapse(fi) {  // close a fold and every fold inside it
  S.open.forEach(f => { if (chainOfFold(f).includes(fi)) S.open.delete(f); });
  S.selected = null; render(); fit(); showPanel(); writeStatus();
}
function chainOfFold(f) { const c = []; for (; f >= 0; f = F[f].parent) c.push(f); return c; }
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
function sliderPart(g) {
  const r = rec();
  if (!r || !g.prunable) return '';
  const d = r.groups[g.id];
  if (!d) return html`<p class="plan">at target ${r.target}: kept whole</p>`;
  const runs = d[1].map(([a, b]) => b - a > 1 ? `${a}–${b - 1}` : a).join(', ') + (d[2] > d[1].length ? ', …' : '');
  return html`<p class="plan">at target ${r.target}: keeps <b>${d[0]}</b> of ${g.units}, removes units ${runs}</p>`;
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
    g.decision ? decisionPart(g.decision) : ''}${g.prunable ? ''
    : html`<p>${g.plain}</p><p><i>Fix:</i> ${g.fix}</p>`}${sliderPart(g)}${table(rows)}<h3>Scores</h3>${scoreChart(g)}
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
function foldPanel(fi) {
  const f = F[fi], gs = new Set();
  D.nodes.forEach(n => {
    if (CHAIN[n.id].includes(fi)) { if (n.group >= 0) gs.add(n.group); n.chips.forEach(c => gs.add(c)); }
  });
  return html`<h2>${f.key}</h2><p>${f.cls}${f.repeat ? html` stacking ${f.repeat} × ${f.block}` : ''} · ${f.count} ops</p>
<p><button id="collapse-one">Fold ${f.label} again</button></p><p>prunable groups inside:</p><p>${
    [...gs].sort((a, b) => a - b).map(swatch)}</p>`;
}
function targetPart() {  // the overview's part for the slider's plan
  const r = T[S.t];
  if (!r) return '';
  if (r.error) return html`<h3>At target ${r.target}</h3><p class="bad">${r.error}</p>`;
  const shrink = Object.entries(r.groups).map(([gid, d]) => [+gid, d[0]]).filter(([gid]) => G.has(gid))
    .sort((a, b) => G.get(b[0]).flops_share - G.get(a[0]).flops_share);
  const whole = D.groups.filter(g => !g.prunable || r.whole.includes(g.id));
  const why = g => g.prunable
    ? html`${swatch(g.id)} ${g.kind} ×${g.units}: the plan keeps it whole at this target (its units score above the cut${
        r.round_to && g.units < 2 * r.round_to ? `, or it is narrower than two blocks of ${r.round_to}` : ''}). <i>Fix:</i> a lower target${
        r.round_to ? ', or round_to=None' : ''}.`
    : html`${swatch(g.id)} ${g.kind} ×${g.units}: ${g.plain}<br><i>Fix:</i> ${g.fix}`;
  return html`<h3>At target ${r.target} (${r.metric} kept: ${r.ratio})</h3>
<table class="legend">${shrink.map(([gid, kept]) => html`<tr><td>${swatch(gid)}</td><td>${G.get(gid).kind} ${
    G.get(gid).units} → <b>${kept}</b></td><td>removes ${G.get(gid).units - kept}</td></tr>`)}</table>
<h3>Kept whole (${whole.length})</h3><ul class="members whole">${whole.map(g => html`<li>${why(g)}</li>`)}</ul>`;
}
function overview() {
  const t = D.totals, plan = D.plan ? String(D.plan.summary).split('\n').slice(0, 3).join('\n') : null;
  const gs = D.groups.filter(g => g.prunable).sort((a, b) => b.flops_share - a.flops_share);
  const row = g => html`<tr><td>${swatch(g.id)}</td><td>${g.kind} ×${g.units}${
    g.decision ? ' → ' + g.decision.kept : ''}</td><td>${pct(g.flops_share)}</td></tr>`;
  const kept = D.groups.filter(g => !g.prunable);
  if (T[S.t]) return html`<h2>${D.title}</h2>
<p>${t.nodes} ops (${D.mode} capture${t.hidden ? `, ${t.hidden} machinery ops hidden` : ''}) · ${num(t.flops)} FLOPs · ${
    num(t.params)} params · <b>${t.prunable}</b> prunable groups of ${t.groups}</p>${targetPart()}`;
  return html`<h2>${D.title}</h2>
<p>${t.nodes} ops (${D.mode} capture) · ${num(t.flops)} FLOPs · ${num(t.params)} params</p>
<p><b>${t.prunable}</b> prunable groups of ${t.groups}. Click a box or a chip to see its group.</p>${
    plan != null ? html`<h3>Plan</h3><pre>${plan}</pre>` : ''}
<h3>Groups by FLOPs share</h3><table class="legend">${gs.map(row)}</table>${
    kept.length ? html`<h3>Kept whole</h3>${list(kept, kept.length, g => html`group ${g.id}: ${g.plain}<br><i>Fix:</i> ${g.fix}`)}` : ''}`;
}
function showPanel() {
  const s = S.selected;
  if (!s) setHtml(panel, overview());
  else if (s.type === 'group') setHtml(panel, groupPanel(G.get(s.id)));
  else if (s.type === 'node') setHtml(panel, nodePanel(D.nodes[s.id]));
  else setHtml(panel, foldPanel(s.fi));
  const b = document.getElementById('collapse-one');
  if (b) b.addEventListener('click', () => collapse(s.fi));
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
  if (!v) { S.machinery = true; mach.checked = true; render(); v = S.vOf[n.id]; }
  if (v.fold) { CHAIN[n.id].forEach(f => S.open.add(f)); render(); v = S.vOf[n.id]; }
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
const mach = document.getElementById('machinery'), slider = document.getElementById('target');
mach.addEventListener('change', () => { S.machinery = mach.checked; render(); fitOrTop(); showPanel(); });
document.getElementById('mach-count').textContent = `(${D.totals.hidden || 0})`;
slider.max = Math.max(0, T.length - 1);
slider.addEventListener('input', () => setTarget(+slider.value));
if (!T.length) document.getElementById('slider').hidden = true;
document.getElementById('overview').addEventListener('click', () => {
  S.open = new Set(D.open || []); S.selected = null; render(); fit(); showPanel();
});
document.getElementById('fit').addEventListener('click', fit);
document.getElementById('zin').addEventListener('click', () => zoom(1.3));
document.getElementById('zout').addEventListener('click', () => zoom(1 / 1.3));
document.getElementById('expand-all').addEventListener('click', () => {
  S.open = new Set(F.map((f, i) => i)); S.selected = null; render(); fitOrTop(); showPanel();
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
              totalNodes: D.nodes.length, openFolds: [...S.open].sort((a, b) => a - b), selected: S.selected,
              machineryDrawn: S.V.filter(v => v.node && v.node.hide).length, showMachinery: S.machinery,
              target: T[S.t] ? T[S.t].target : null, marked: S.marked, drawnAt: S.drawnAt,
              figures: document.getElementById('figures').textContent,
              panelTitle: h ? h.textContent : ''};
  document.getElementById('surgeon-status').textContent = JSON.stringify(st);
  return st;
}
function fromHash() {
  const q = new URLSearchParams(location.hash.replace(/^#/, ''));
  if (q.get('open') === 'all') { S.open = new Set(F.map((f, i) => i)); render(); fitOrTop(); }
  if (q.get('machinery') === '1') { S.machinery = mach.checked = true; render(); fit(); }
  if (q.get('target') != null) {
    const i = T.findIndex(r => Math.abs(r.target - +q.get('target')) < 1e-9);
    if (i >= 0) setTarget(i);
  }
  if (q.get('search')) { box.value = q.get('search'); box.dispatchEvent(new Event('input')); }
  if (q.get('node')) selectNodeByName(q.get('node'));
  const id = q.get('select') != null ? +q.get('select') : null;
  if (id != null && G.has(id)) { select({type: 'group', id}); focusGroup(id); }
}
window.__surgeon = {status: writeStatus, select: id => { select({type: 'group', id}); return focusGroup(id); },
                    selectNode: selectNodeByName, focusGroup, fit, render, data: D, setTarget, expand,
                    focusNode: name => { const n = D.nodes.find(n => n.name === name); if (!n) return null;
                                         reveal(n); return S.vOf[n.id].el; }};
S.t = T.length ? T.reduce((b, r, i) => Math.abs(r.target - 0.5) < Math.abs(T[b].target - 0.5) ? i : b, 0) : -1;
if (T.length) { slider.value = S.t; document.getElementById('target-label').textContent = `keep ${T[S.t].target}`; }
render(); fit(); showPanel(); fromHash();
S.drawnAt = performance.now();  // ms from navigation start until the page is drawn (benchmarks/viz_scale.py)
writeStatus();
window.addEventListener('hashchange', fromHash);
window.addEventListener('resize', () => { sizeMini(); applyView(); });
})();
"""
