"""The labelling map as one self-contained HTML page: plotly.js inlined, no server, no network.

plotly draws the points and does the box/lasso selection and the colour switch (its own
dropdown). A little glue script fills the hover texts from the page's data (each text is
stored once, not once per colour mode), circles the points whose text contains a searched
phrase (in a trace of their own, drawn on top) and downloads the selected rows, with a label
the user types, as CSV or JSON.

For scripts and tests the page exposes ``window.labellingMap``: ``ready`` (a promise),
``selectedRows()``, ``highlightedRows()``, ``search(phrase)``, ``selectRows(rows)``,
``exportCSV()`` and ``exportJSON()``.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["PLOTLY_INSTALL", "require_plotly", "page_html", "iframe_html"]

PLOTLY_INSTALL = "pip install 'embetter_plug[map]'  (or: pip install plotly)"
DIV_ID = "labelling-map"


def require_plotly():
    """``plotly`` (the module), or an ImportError with the line that installs it."""
    try:
        import plotly
    except ImportError:
        raise ImportError(f"The labelling map draws with plotly, which is not installed; "
                          f"install it with: {PLOTLY_INSTALL}") from None
    return plotly


def _script_json(obj: Any) -> str:
    """JSON that cannot end its ``<script>`` element early (``<``, ``>`` and ``&`` escaped)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_html(figure, data: dict, *, title: str, config: dict | None = None,
              search_trace: str = "search matches", max_hover_chars: int = 400) -> str:
    """The whole page: the plotly figure (without hover texts), ``data`` and the glue script.

    ``data`` holds one entry per row: ``texts`` (full texts, for hover, search and export),
    ``labels`` (str or None), ``xy`` (the coordinates as base64 float32 pairs, where the search
    draws its matches: the figure's trace named ``search_trace``) and, when there is a
    classifier, ``predictions`` and ``confidence``.
    """
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    fig = figure.to_plotly_json()
    for trace in fig["data"]:
        trace.pop("text", None)
    figure_json = pio.to_json({"data": fig["data"], "layout": fig["layout"]}, validate=False,
                              pretty=False)
    figure_json = figure_json.replace("<", "\\u003c").replace(">", "\\u003e")
    options = {"maxHoverChars": int(max_hover_chars), "divId": DIV_ID, "config": config or {},
               "searchTrace": search_trace}
    return _PAGE.format(
        title=html.escape(title), plotlyjs=get_plotlyjs(), div_id=DIV_ID,
        figure=figure_json, data=_script_json(data), options=_script_json(options), glue=_GLUE,
    )


def iframe_html(page: str, height: int = 720) -> str:
    """``page`` in an ``<iframe srcdoc>`` (notebooks: its scripts run isolated from the host)."""
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:{height}px;'
            f'border:1px solid #ddd" sandbox="allow-scripts allow-downloads"></iframe>')


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0.6em 1em; color: #222; }}
#controls {{ display: flex; flex-wrap: wrap; gap: 0.4em 1em; align-items: center; margin-bottom: 0.3em; }}
#controls input[type=text] {{ padding: 0.2em 0.4em; }}
#controls .count {{ color: #555; min-width: 7em; }}
#{div_id} {{ width: 100%; height: calc(100vh - 6em); min-height: 420px; }}
</style>
<script type="text/javascript">{plotlyjs}</script>
</head>
<body>
<div id="controls">
  <label>search <input type="text" id="map-search" placeholder="phrase in the text"></label>
  <span class="count" id="map-matches"></span>
  <button id="map-select-matches" type="button">select matches</button>
  <span class="count" id="map-selected">0 selected</span>
  <label>label <input type="text" id="map-label" placeholder="for the selected rows"></label>
  <button id="map-csv" type="button">download CSV</button>
  <button id="map-json" type="button">download JSON</button>
</div>
<div id="{div_id}"></div>
<script type="application/json" id="map-figure">{figure}</script>
<script type="application/json" id="map-data">{data}</script>
<script type="application/json" id="map-options">{options}</script>
<script type="text/javascript">{glue}</script>
</body>
</html>
"""

_GLUE = r"""
(function () {
  "use strict";
  function read(id) { return JSON.parse(document.getElementById(id).textContent); }
  var fig = read("map-figure"), D = read("map-data"), O = read("map-options");
  var gd = document.getElementById(O.divId);
  var n = D.texts.length, lower = D.texts.map(function (t) { return t.toLowerCase(); });
  function esc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
  function wrap(s) {
    if (s.length > O.maxHoverChars) s = s.slice(0, O.maxHoverChars) + "\u2026";
    var lines = [], line = "";
    s.split(/\s+/).forEach(function (w) {
      if (line && line.length + w.length > 80) { lines.push(line); line = ""; }
      line += (line ? " " : "") + w;
    });
    lines.push(line);
    return lines.map(esc).join("<br>");
  }
  function hover(i) {
    var h = wrap(D.texts[i]) + "<br><b>label</b>: " +
      (D.labels[i] === null ? "<i>unlabelled</i>" : esc(D.labels[i]));
    if (D.predictions) {
      h += "<br><b>predicted</b>: " + esc(D.predictions[i]) +
        (D.confidence ? " (" + D.confidence[i].toFixed(2) + ")" : "");
    }
    return h + "<br><b>row</b>: " + i;
  }
  var hovers = [];
  for (var i = 0; i < n; i++) hovers.push(hover(i));
  fig.data.forEach(function (tr) { tr.text = tr.customdata.map(function (r) { return hovers[r]; }); });
  var xy = (function (b64) {  // float32 (x, y) pairs, row by row
    var s = atob(b64), u = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) u[i] = s.charCodeAt(i);
    return new Float32Array(u.buffer);
  })(D.xy);
  var overlay = fig.data.findIndex(function (tr) { return tr.name === O.searchTrace; });

  var selected = [], matches = [], $ = function (id) { return document.getElementById(id); };
  function setSelected(rows) {
    selected = Array.from(new Set(rows)).sort(function (a, b) { return a - b; });
    $("map-selected").textContent = selected.length + " selected";
  }
  function highlight(phrase) {
    var q = phrase.trim().toLowerCase();
    matches = [];
    if (q) for (var i = 0; i < n; i++) if (lower[i].indexOf(q) >= 0) matches.push(i);
    $("map-matches").textContent = q ? matches.length + " match" + (matches.length === 1 ? "" : "es") : "";
    return Plotly.restyle(gd, {
      x: [matches.map(function (r) { return xy[2 * r]; })],
      y: [matches.map(function (r) { return xy[2 * r + 1]; })],
      customdata: [matches.slice()], text: [matches.map(function (r) { return hovers[r]; })]
    }, [overlay]);
  }
  function rows() {
    var label = $("map-label").value;
    return selected.map(function (i) { return {index: i, text: D.texts[i], label: label}; });
  }
  function csvCell(v) { v = String(v); return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
  function exportCSV() {
    return ["index,text,label"].concat(rows().map(function (r) {
      return [r.index, r.text, r.label].map(csvCell).join(",");
    })).join("\r\n") + "\r\n";
  }
  function exportJSON() { return JSON.stringify(rows(), null, 1); }
  function download(name, type, content) {
    var a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([content], {type: type}));
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 0);
  }
  var ready = Plotly.newPlot(gd, fig.data, fig.layout, O.config).then(function () {
    gd.on("plotly_selected", function (ev) {
      setSelected(ev && ev.points ? ev.points.map(function (p) { return p.customdata; }) : []);
    });
    gd.on("plotly_deselect", function () { setSelected([]); });
    $("map-search").addEventListener("input", function (e) { highlight(e.target.value); });
    $("map-select-matches").addEventListener("click", function () { setSelected(matches); });
    $("map-csv").addEventListener("click", function () { download("selection.csv", "text/csv", exportCSV()); });
    $("map-json").addEventListener("click", function () { download("selection.json", "application/json", exportJSON()); });
    return gd;
  });
  window.labellingMap = {
    ready: ready, graph: gd,
    selectedRows: function () { return selected.slice(); },
    highlightedRows: function () { return matches.slice(); },
    search: function (phrase) { $("map-search").value = phrase; return highlight(phrase); },
    selectRows: setSelected, exportCSV: exportCSV, exportJSON: exportJSON
  };
})();
"""
