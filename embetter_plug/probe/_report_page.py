"""The page of the probe report: an interactive, self-contained HTML page (no server, no network).

The page holds the summary as inline JSON and draws the layer curves as SVG with a little inline
JavaScript: pick dataset, model, pooling and metric, see one line per part with a ±std band, the
dummy baseline, the selection-free estimate of the best probe, and the table of every metric
(with selectivity, corrected p-values and MDL compression where computed) with the best marked. The initial choice can
be set in the address, e.g. ``report.html#metric=f1&pooling=mean``. With ``patterns=``, a
section below shows one text's attention pattern per layer and head (the view of
:meth:`embetter_plug.attention.patterns.AttentionPattern.to_html`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._pages import check_writable, fill, write_page
from ..layout import PartName
from .metrics import LOWER_IS_BETTER, metric_range, ranking_metrics
from ._table import ANY, DUMMY

if TYPE_CHECKING:
    from .results import ProbeResults

__all__ = ["report_rows", "side_by_side", "write_single"]

SELECTORS = ("dataset", "model", "pooling")


def report_rows(results: ProbeResults) -> list[dict]:
    """Summary rows with ``dataset``, ``model`` and ``pooling`` filled in ("-" when unknown).

    Part names such as ``mlp_out@mean`` (several token poolings) are split into part and pooling.
    """
    s = results.summary()
    extra = _slice_statistics(results)
    s["stats"] = [extra.get(tuple(r)) for r in
                  s[[*results.context, "layer", "part"]].astype(str).to_numpy()]
    if "pooling" not in s.columns:
        names = [PartName.parse(p) for p in s["part"]]
        if any(n.pooling is not None for n in names):
            s["pooling"] = [ANY if n.pooling is None else n.pooling for n in names]
            s["part"] = [str(n.without_pooling()) for n in names]
    for col in SELECTORS:
        if col not in s.columns:
            s[col] = ANY
    s.loc[s["part"] == DUMMY, "pooling"] = ANY
    rows = []
    for r in s.itertuples(index=False):
        rows.append({"dataset": str(r.dataset), "model": str(r.model), "pooling": str(r.pooling),
                     "layer": None if r.layer is None or str(r.layer) == "<NA>" else int(r.layer),
                     "part": str(r.part), "metric": str(r.metric), "mean": float(r.mean),
                     "std": float(r.std), **(r.stats or {})})
    return rows


#: per-probe statistics shown in the report's table: column name -> report label
STAT_COLUMNS = {"selectivity": "selectivity", "p_holm": "p (holm)", "compression": "compression"}


def _slice_statistics(results: ProbeResults) -> dict[tuple, dict]:
    """(context..., layer, part) -> the statistics ``probe_layers`` computed for that probe."""
    st = results.statistics()
    cols = [c for c in STAT_COLUMNS if c in st.columns]
    if st.empty or not cols:
        return {}
    keys = [*results.context, "layer", "part"]
    st = st.assign(layer=[str(int(v)) for v in st["layer"]])
    return {tuple(map(str, k)): {STAT_COLUMNS[c]: float(v) for c, v in zip(cols, vals) if v == v}
            for k, vals in zip(st[keys].to_numpy(), st[cols].to_numpy())}


def _selection(results: ProbeResults) -> dict:
    """Per metric: the selection-free estimate of the best probe (empty without one)."""
    out = {}
    for m in results.metrics:
        sf = results.selection_free(m)
        if sf is not None:
            out[m] = {k: sf[k] for k in ("mean", "std", "low", "high", "confidence", "n_folds")}
    return out


def write_single(results: "ProbeResults", path, *, title: str | None = None, patterns=None,
                 image_attention=None) -> Path:
    """Write the report page of one ``ProbeResults`` to ``path`` (see ``report.write_report``)."""
    return write_page(path, _page(results, title, patterns, image_attention), what="the report")


def _page(results, title: str | None, patterns, image_attention=None) -> str:
    """The report page of one results set."""
    title = title or "Probe results"
    check_writable(title, "title")
    rows = report_rows(results)
    verdict = results.verdict()
    payload = {"rows": rows, "metrics": results.metrics, "lower": sorted(LOWER_IS_BETTER),
               "primary": results.primary_metric, "ranking": ranking_metrics(results.metrics),
               "bounds": _bounds(results.metrics),
               "selection": _selection(results), "stats": list(STAT_COLUMNS.values()),
               "warning": "" if verdict["beats_chance"] else verdict["message"]}
    data = json.dumps(payload).replace("<", "\\u003c")
    page = fill(_TEMPLATE, TITLE=html.escape(title), DATA=data)
    page = _with_heads(page, results)
    if patterns is not None:
        page = _with_patterns(page, patterns)
    if image_attention is not None:
        page = _with_image_attention(page, image_attention)
    return page


def side_by_side(results: dict, path, *, title: str | None = None, patterns=None,
                 image_attention=None) -> Path:
    """One page holding each target's report in a frame, side by side (wrapping on narrow
    screens), and the attention patterns once below them."""
    if not results:
        raise ValueError("results is an empty dict: give at least one target's ProbeResults.")
    title = title or "Probe results"
    check_writable(title, "title")
    for name in results:
        check_writable(str(name), "target name")
    frames = "\n".join(
        f'<section><h2>{html.escape(str(name))}</h2><iframe title="{html.escape(str(name))}" '
        f'srcdoc="{html.escape(_page(res, f"{title}: {name}", None), quote=True)}"></iframe>'
        "</section>" for name, res in results.items())
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:system-ui,sans-serif;margin:1em}"
            ".targets{display:flex;flex-wrap:wrap;gap:1em}.targets section{flex:1 1 560px}"
            "iframe{width:100%;height:1100px;border:1px solid #ccc}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>One probe report per label, on the same "
            f"activations: {', '.join(html.escape(str(n)) for n in results)}.</p>"
            f"<div class='targets'>{frames}</div></body></html>")
    if patterns is not None:
        page = _with_patterns(page, patterns)
    if image_attention is not None:
        page = _with_image_attention(page, image_attention)
    return write_page(path, page, what="the report")


def _with_image_attention(page: str, image_attention) -> str:
    """``page`` with the section showing where on the picture a token looks, before the end."""
    from ..attention.image_page import image_attention_section

    end = page.rindex("</body>")
    return page[:end] + image_attention_section(image_attention) + "\n" + page[end:]


def _with_heads(page: str, results: ProbeResults) -> str:
    """``page`` with a layer x head heatmap per per-head part (``attn_result.h3``, ...) after the
    chart, where a line per head would be unreadable; unchanged without per-head parts."""
    from .heads import head_tables, heatmap_png

    tables = head_tables(results)
    if not tables:
        return page
    metric = results.primary_metric
    section = (f'<section id="heads"><h2>Per head: {html.escape(metric)} per layer (rows) x '
               f'head (columns)</h2><img alt="layer x head heatmap of {html.escape(metric)}" '
               f'src="{heatmap_png(tables, metric)}"></section>')
    at = page.index('<div id="tablewrap">')
    return page[:at] + section + "\n" + page[at:]


def _with_patterns(page: str, patterns) -> str:
    """``page`` with the attention-pattern section before its end."""
    from ..attention.page import pattern_section
    from ..attention.patterns import AttentionPattern

    if isinstance(patterns, AttentionPattern):
        patterns = {"": patterns}
    if not isinstance(patterns, dict) or not patterns or not all(
            isinstance(p, AttentionPattern) for p in patterns.values()):
        raise TypeError(f"patterns={type(patterns).__name__}: give an AttentionPattern (from "
                        "attention_patterns) or a non-empty dict {model label: AttentionPattern}.")
    end = page.rindex("</body>")
    return page[:end] + pattern_section(patterns) + "\n" + page[end:]


def _bounds(metrics) -> dict[str, list]:
    """Each metric's finite range ends (``None`` where unbounded), for clipping the ±std bands."""
    out = {}
    for m in metrics:
        low, high = metric_range(m)
        out[m] = [low if np.isfinite(low) else None, high if np.isfinite(high) else None]
    return out


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
label{margin-right:1em} select{margin-left:.3em}
table{border-collapse:collapse;margin-top:1em;font-size:.9em}
td,th{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:right;white-space:nowrap}
th{background:#f4f4f4} td.l{text-align:left} tr.best{background:#fff3c4;font-weight:bold}
tr.dummy{color:#777} #empty{color:#a00} #warning{color:#a00} #headline{margin:.5em 0}
</style></head><body>
<h1>__TITLE__</h1>
<div id="controls"></div>
<div id="headline"></div><div id="warning"></div>
<div id="chart"></div><div id="empty"></div>
<div id="tablewrap"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
(function(){
const D = JSON.parse(document.getElementById('data').textContent);
const ROWS = D.rows, LOWER = new Set(D.lower), KEYS = ['dataset','model','pooling','metric'];
const COLORS = ['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2','#7f7f7f','#bcbd22','#17becf'];
const state = {};
const uniq = a => [...new Set(a)];
const fmt = (m, s) => m.toFixed(3) + ' \u00b1 ' + s.toFixed(3);
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
new URLSearchParams(location.hash.slice(1)).forEach((v, k) => { state[k] = v; });
const controls = document.getElementById('controls');
const selects = {};
KEYS.forEach(k => {
  const lab = document.createElement('label'); lab.textContent = k;
  const sel = document.createElement('select'); sel.id = 'sel-' + k;
  sel.addEventListener('change', () => { state[k] = sel.value; update(); });
  lab.appendChild(sel); controls.appendChild(lab); selects[k] = sel;
});
function matching(upto) {
  return ROWS.filter(r => r.part !== 'dummy' && KEYS.slice(0, upto).every(k => r[k] === state[k]));
}
function fillOptions() {
  KEYS.forEach((k, i) => {
    let opts = uniq(matching(i).map(r => r[k]));
    if (k === 'metric') opts = D.metrics.filter(m => opts.includes(m));
    if (!opts.includes(state[k])) state[k] = (k === 'metric' && opts.includes(D.primary)) ? D.primary : opts[0];
    selects[k].innerHTML = opts.map(o => '<option' + (o === state[k] ? ' selected' : '') + '>' + esc(o) + '</option>').join('');
  });
}
function update() {
  fillOptions();
  const sel = KEYS.map(k => k + '=' + encodeURIComponent(state[k])).join('&');
  history.replaceState(null, '', '#' + sel);
  draw(); table(); headline();
  document.body.setAttribute('data-rendered', sel);
}
function draw() {
  const rows = matching(4);
  const base = ROWS.find(r => r.part === 'dummy' && r.dataset === state.dataset && r.model === state.model && r.metric === state.metric);
  const chart = document.getElementById('chart');
  document.getElementById('empty').textContent = rows.length ? '' : 'No results for this choice.';
  if (!rows.length) { chart.innerHTML = ''; return; }
  const W = 760, H = 420, m = {l: 60, r: 170, t: 20, b: 45};
  const layers = uniq(rows.map(r => r.layer)).sort((a, b) => a - b);
  const B = (D.bounds || {})[state.metric] || [null, null];
  const clip = v => Math.min(B[1] === null ? v : B[1], Math.max(B[0] === null ? v : B[0], v));
  const bandLo = r => clip(r.mean - r.std), bandHi = r => clip(r.mean + r.std);
  let lo = Math.min(...rows.map(bandLo)), hi = Math.max(...rows.map(bandHi));
  if (base) { lo = Math.min(lo, base.mean); hi = Math.max(hi, base.mean); }
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
  const x0 = layers[0], x1 = layers[layers.length - 1];
  const X = v => m.l + (x1 === x0 ? (W - m.l - m.r) / 2 : (v - x0) / (x1 - x0) * (W - m.l - m.r));
  const Y = v => m.t + (hi - v) / (hi - lo) * (H - m.t - m.b);
  let s = '<svg id="plot" xmlns="http://www.w3.org/2000/svg" width="' + W + '" height="' + H + '">';
  s += '<line x1="' + m.l + '" y1="' + (H - m.b) + '" x2="' + (W - m.r) + '" y2="' + (H - m.b) + '" stroke="#333"/>';
  s += '<line x1="' + m.l + '" y1="' + m.t + '" x2="' + m.l + '" y2="' + (H - m.b) + '" stroke="#333"/>';
  const ticks = [];  // labels at least 30 px apart: 30 layers must not overlap
  layers.forEach(l => { if (!ticks.length || X(l) - X(ticks[ticks.length - 1]) >= 30) ticks.push(l); });
  ticks.forEach(l => { s += '<text class="tick" x="' + X(l) + '" y="' + (H - m.b + 16) + '" text-anchor="middle" font-size="12">' + l + '</text>'; });
  for (let i = 0; i <= 5; i++) { const v = lo + (hi - lo) * i / 5;
    s += '<text x="' + (m.l - 6) + '" y="' + (Y(v) + 4) + '" text-anchor="end" font-size="11">' + v.toFixed(3) + '</text>'; }
  s += '<text x="' + ((W - m.r + m.l) / 2) + '" y="' + (H - 8) + '" text-anchor="middle">layer</text>';
  s += '<text transform="translate(14,' + (H / 2) + ') rotate(-90)" text-anchor="middle">' + esc(state.metric) + '</text>';
  const parts = uniq(rows.map(r => r.part));
  parts.forEach((p, i) => {
    const pts = rows.filter(r => r.part === p).sort((a, b) => a.layer - b.layer), c = COLORS[i % COLORS.length];
    const up = pts.map(r => X(r.layer) + ',' + Y(bandHi(r))), dn = pts.map(r => X(r.layer) + ',' + Y(bandLo(r))).reverse();
    s += '<g class="series" data-part="' + esc(p) + '" data-n="' + pts.length + '" data-means="' + pts.map(r => r.mean.toFixed(6)).join(' ') + '" data-band="' + Math.min(...pts.map(bandLo)).toFixed(6) + ' ' + Math.max(...pts.map(bandHi)).toFixed(6) + '">';
    s += '<path class="band" d="M' + up.concat(dn).join('L') + 'Z" fill="' + c + '" fill-opacity="0.2" stroke="none"/>';
    s += '<path class="line" d="M' + pts.map(r => X(r.layer) + ',' + Y(r.mean)).join('L') + '" fill="none" stroke="' + c + '" stroke-width="2"/>';
    pts.forEach(r => { s += '<circle cx="' + X(r.layer) + '" cy="' + Y(r.mean) + '" r="3.5" fill="' + c + '"><title>' + esc(p) + ' layer ' + r.layer + ': ' + fmt(r.mean, r.std) + '</title></circle>'; });
    s += '</g>';
    s += '<rect x="' + (W - m.r + 12) + '" y="' + (m.t + 18 * i) + '" width="12" height="12" fill="' + c + '"/><text x="' + (W - m.r + 30) + '" y="' + (m.t + 18 * i + 11) + '" font-size="12">' + esc(p) + '</text>';
  });
  const sf = (D.selection || {})[state.metric];
  if (sf && sf.mean >= lo && sf.mean <= hi) {
    s += '<line class="selection" data-value="' + sf.mean.toFixed(6) + '" x1="' + m.l + '" x2="' + (W - m.r) + '" y1="' + Y(sf.mean) + '" y2="' + Y(sf.mean) + '" stroke="#000" stroke-width="1.5"><title>best, selection-free: ' + sf.mean.toFixed(3) + '</title></line>';
    const sy = m.t + 18 * (parts.length + 1) + 6;
    s += '<line x1="' + (W - m.r + 10) + '" x2="' + (W - m.r + 26) + '" y1="' + sy + '" y2="' + sy + '" stroke="#000" stroke-width="1.5"/>';
    s += '<text x="' + (W - m.r + 30) + '" y="' + (sy + 5) + '" font-size="12">best, selection-free</text>';
  }
  if (base) {
    s += '<line class="baseline" data-value="' + base.mean.toFixed(6) + '" x1="' + m.l + '" x2="' + (W - m.r) + '" y1="' + Y(base.mean) + '" y2="' + Y(base.mean) + '" stroke="#666" stroke-dasharray="6,4"/>';
    const ly = m.t + 18 * parts.length + 6;
    s += '<line x1="' + (W - m.r + 10) + '" x2="' + (W - m.r + 26) + '" y1="' + ly + '" y2="' + ly + '" stroke="#666" stroke-dasharray="4,3"/>';
    s += '<text x="' + (W - m.r + 30) + '" y="' + (ly + 5) + '" font-size="12">dummy baseline</text>';
  }
  chart.innerHTML = s + '</svg>';
}
function headline() {
  const sf = (D.selection || {})[state.metric];
  document.getElementById('headline').textContent = sf ? 'Best probe, selection-free (nested CV, ' +
    sf.n_folds + ' folds): ' + state.metric + ' ' + sf.mean.toFixed(3) + ' [' + Math.round(sf.confidence * 100) +
    '% CI ' + sf.low.toFixed(3) + ', ' + sf.high.toFixed(3) + ']. The table\'s best is chosen on its own folds, so its score is optimistic.' : '';
  document.getElementById('warning').textContent = D.warning ? 'Warning: ' + D.warning : '';
}
function table() {
  const rows = ROWS.filter(r => r.dataset === state.dataset && r.model === state.model && (r.part === 'dummy' || r.pooling === state.pooling));
  const key = r => (r.layer === null ? '-' : r.layer) + '|' + r.part;
  const byKey = new Map();
  rows.forEach(r => { if (!byKey.has(key(r))) byKey.set(key(r), {layer: r.layer, part: r.part, cells: {}}); byKey.get(key(r)).cells[r.metric] = r; });
  const metrics = D.metrics.filter(mt => rows.some(r => r.metric === mt));
  // the chosen metric first, ties broken by the others in ranking order (as ProbeResults.best)
  const order = [state.metric].concat(D.ranking.filter(mt => mt !== state.metric));
  const r12 = x => Math.round(x * 1e12) / 1e12;
  const better = (a, b) => {
    for (const mt of order) {
      const ca = a.cells[mt], cb = b.cells[mt];
      if (!ca || !cb || r12(ca.mean) === r12(cb.mean)) continue;
      return (LOWER.has(mt) ? -1 : 1) * (ca.mean - cb.mean) > 0;
    }
    return false;
  };
  let best = null;
  byKey.forEach((v, k) => { if (v.part !== 'dummy' && v.cells[state.metric] && (best === null || better(v, byKey.get(best)))) best = k; });
  const stats = (D.stats || []).filter(c => rows.some(r => r[c] !== undefined));
  const statCell = (v, c) => { const r = Object.values(v.cells).find(x => x[c] !== undefined); return '<td>' + (r ? (c.startsWith('p ') ? r[c].toPrecision(3) : r[c].toFixed(3)) : '') + '</td>'; };
  let h = '<table id="table"><thead><tr><th>layer</th><th>part</th>' + metrics.map(mt => '<th>' + esc(mt) + '</th>').join('') + stats.map(c => '<th>' + esc(c) + '</th>').join('') + '<th>best</th></tr></thead><tbody>';
  byKey.forEach((v, k) => {
    h += '<tr class="' + (k === best ? 'best' : (v.part === 'dummy' ? 'dummy' : '')) + '" data-key="' + esc(k) + '"><td>' + (v.layer === null ? '-' : v.layer) + '</td><td class="l">' + esc(v.part) + '</td>';
    h += metrics.map(mt => '<td>' + (v.cells[mt] ? fmt(v.cells[mt].mean, v.cells[mt].std) : '') + '</td>').join('') + stats.map(c => statCell(v, c)).join('') + '<td>' + (k === best ? '\u2605' : '') + '</td></tr>';
  });
  document.getElementById('tablewrap').innerHTML = h + '</tbody></table>';
}
update();
})();
</script></body></html>
"""
