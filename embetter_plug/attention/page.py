"""A self-contained HTML view of one text's attention patterns (no server, no network).

The view holds the patterns as inline JSON and draws the chosen layer and head as a grid with a
little inline JavaScript: queries down, keys across, the tokens on both axes, the weight on
hover (and in each cell's ``data-w``). Several patterns (one per model) get a model selector.
Written on its own page by :meth:`embetter_plug.attention.patterns.AttentionPattern.to_html`, and as a
section of the probe report (:func:`embetter_plug.probe.write_report` with ``patterns=``).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .._pages import check_writable, fill, write_page

#: decimals kept per weight in the page
DECIMALS = 4

_STYLE = """<style>
#patterns table { border-collapse: collapse; font-size: 11px; margin-top: .5em; }
#patterns td { width: 18px; height: 18px; padding: 0; border: none; }
#patterns th { font-weight: normal; white-space: nowrap; padding: 0 4px; background: none;
               border: none; }
#patterns th.key { writing-mode: vertical-rl; transform: rotate(180deg); }
#patterns label { margin-right: 1em; }
</style>"""

_SECTION = """<section id="patterns">
<h2>__HEADING__</h2>
<p id="pattern-text"></p>
<label id="pattern-model-label">model <select id="pattern-model"></select></label>
<label>layer <select id="pattern-layer"></select></label>
<label>head <select id="pattern-head"></select></label>
<p>queries down, keys across; hover a cell for its weight</p>
<table id="pattern-grid"></table>
<script type="application/json" id="pattern-data">__DATA__</script>
<script>
(function(){
const P = JSON.parse(document.getElementById('pattern-data').textContent);
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const sel = id => document.getElementById('pattern-' + id);
function fill(id, values) {
  sel(id).innerHTML = values.map((v, i) => '<option value="' + i + '">' + esc(v) + '</option>').join('');
}
function color(w) { const c = Math.round(255 * (1 - w)); return 'rgb(' + c + ',' + c + ',255)'; }
function pick() {
  const v = P[+sel('model').value];
  fill('layer', v.layers); fill('head', v.heads);
  document.getElementById('pattern-text').textContent = v.text;
  draw();
}
function draw() {
  const v = P[+sel('model').value], l = +sel('layer').value, h = +sel('head').value;
  const p = v.pattern[l][h], tok = v.tokens.map(esc);
  let rows = '<tr><th></th>' + tok.map(t => '<th class="key">' + t + '</th>').join('') + '</tr>';
  p.forEach((row, q) => {
    rows += '<tr><th>' + tok[q] + '</th>' + row.map((w, k) => '<td data-w="' + w +
      '" style="background:' + color(w) + '" title="' + tok[q] + ' -> ' + tok[k] + ': ' +
      w.toFixed(3) + '"></td>').join('') + '</tr>';
  });
  const grid = document.getElementById('pattern-grid');
  grid.innerHTML = rows;
  grid.setAttribute('data-shown', [v.label, v.layers[l], v.heads[h]].join('|'));
}
fill('model', P.map(v => v.label));
document.getElementById('pattern-model-label').style.display = P.length > 1 ? '' : 'none';
sel('model').onchange = pick; sel('layer').onchange = draw; sel('head').onchange = draw;
pick();
})();
</script>
</section>"""

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>body { font-family: sans-serif; margin: 1.5em; }</style>
__STYLE__</head>
<body>
__SECTION__
</body></html>
"""


def pattern_payload(patterns: dict) -> list[dict]:
    """The JSON-able view data of ``{label: AttentionPattern}``, weights rounded to
    :data:`DECIMALS` decimals."""
    return [{"label": str(label), "text": p.text, "tokens": [str(t) for t in p.tokens],
             "layers": [int(x) for x in p.layers], "heads": [int(x) for x in p.heads],
             "pattern": p.pattern.astype(float).round(DECIMALS).tolist()}
            for label, p in patterns.items()]


def pattern_section(patterns: dict, *, heading: str = "Attention pattern") -> str:
    """The view of ``{label: AttentionPattern}`` as an HTML section (style first), for a page's
    body."""
    data = json.dumps(pattern_payload(patterns)).replace("<", "\\u003c")
    return _STYLE + "\n" + fill(_SECTION, HEADING=html.escape(heading), DATA=data)


def write_pattern_html(pattern, path, *, title: str | None = None) -> Path:
    """Write the patterns of one text (an ``AttentionPattern``) to ``path`` as an HTML page."""
    title = title or "Attention patterns"
    check_writable(title, "title")
    section = pattern_section({"": pattern}, heading=title)
    page = fill(_PAGE, TITLE=html.escape(title), STYLE="", SECTION=section)
    return write_page(path, page, what="the pattern page")
