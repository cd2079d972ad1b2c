"""A self-contained HTML view of one text's attention patterns (no server, no network).

The page holds the patterns as inline JSON and draws the chosen layer and head as a grid with a
little inline JavaScript: queries down, keys across, the tokens on both axes, the weight on
hover. Written by :meth:`embetter_plug.attention.AttentionPattern.to_html`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 11px; }}
td {{ width: 18px; height: 18px; padding: 0; }}
th {{ font-weight: normal; white-space: nowrap; padding: 0 4px; }}
th.key {{ writing-mode: vertical-rl; transform: rotate(180deg); height: auto; }}
</style></head>
<body>
<h2>{title}</h2>
<p>{text}</p>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
<p id="info">queries down, keys across; hover a cell for its weight</p>
<table id="grid"></table>
<script>
const DATA = {data};
function fill(id, values) {{
  const s = document.getElementById(id);
  values.forEach((v, i) => {{ const o = document.createElement("option"); o.value = i;
    o.textContent = v; s.appendChild(o); }});
  s.onchange = draw;
}}
function color(w) {{ const c = Math.round(255 * (1 - w)); return `rgb(${{c}},${{c}},255)`; }}
function draw() {{
  const l = +document.getElementById("layer").value, h = +document.getElementById("head").value;
  const p = DATA.pattern[l][h], tok = DATA.tokens, grid = document.getElementById("grid");
  let rows = "<tr><th></th>" + tok.map(t => `<th class="key">${{t}}</th>`).join("") + "</tr>";
  p.forEach((row, q) => {{
    rows += `<tr><th>${{tok[q]}}</th>` + row.map((w, k) =>
      `<td style="background:${{color(w)}}" title="${{tok[q]}} -> ${{tok[k]}}: ${{w.toFixed(3)}}"></td>`
    ).join("") + "</tr>";
  }});
  grid.innerHTML = rows;
}}
fill("layer", DATA.layers); fill("head", DATA.heads); draw();
</script></body></html>
"""


def write_pattern_html(pattern, path, *, title: str | None = None) -> Path:
    """Write the patterns of one text (an ``AttentionPattern``) to ``path`` as an HTML page."""
    data = {"layers": [int(x) for x in pattern.layers], "heads": [int(x) for x in pattern.heads],
            "tokens": [html.escape(str(t)) for t in pattern.tokens],
            "pattern": [[[[round(float(w), 4) for w in row] for row in head] for head in layer]
                        for layer in pattern.pattern]}
    title = title or "Attention patterns"
    page = _PAGE.format(title=html.escape(title), text=html.escape(pattern.text),
                        data=json.dumps(data).replace("</", "<\\/"))
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
