"""Drive a labelling-map page in headless Chromium (Debian's ``chromium``; no extra download).

The page is copied with two scripts added: one at the top of ``<head>`` that records errors
(uncaught exceptions, rejected promises, ``console.error``), one at the end of ``<body>`` that
waits for ``window.labellingMap.ready``, runs a driver (JavaScript with helpers for real mouse
drags on plotly's drag layer) and writes the driver's result and the errors as JSON into the
DOM, which ``--dump-dom`` prints once the virtual-time budget is spent.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--hide-scrollbars", "--virtual-time-budget=30000"]

_TOP = """<script>
window.__test = {errors: []};
window.addEventListener("error", function (e) { window.__test.errors.push("error: " + e.message); });
window.addEventListener("unhandledrejection", function (e) { window.__test.errors.push("rejection: " + e.reason); });
(function () { var orig = console.error; console.error = function () {
  window.__test.errors.push("console.error: " + Array.from(arguments).join(" ")); orig.apply(console, arguments); }; })();
</script>"""

_HELPERS = r"""
function plotArea(gd) { return gd.querySelector(".nsewdrag").getBoundingClientRect(); }
function toPx(gd, x, y) {
  var r = plotArea(gd), xr = gd.layout.xaxis.range, yr = gd.layout.yaxis.range;
  return [r.left + (x - xr[0]) / (xr[1] - xr[0]) * r.width, r.top + (yr[1] - y) / (yr[1] - yr[0]) * r.height];
}
function mouse(type, p) {
  var el = document.elementFromPoint(p[0], p[1]) || document;
  el.dispatchEvent(new MouseEvent(type, {bubbles: true, cancelable: true, clientX: p[0], clientY: p[1],
    button: 0, buttons: type === "mouseup" ? 0 : 1, view: window}));
}
function drag(gd, points) {  // points in data coordinates, as a user would drag through them
  var px = points.map(function (q) { return toPx(gd, q[0], q[1]); });
  mouse("mousemove", px[0]); mouse("mousedown", px[0]);
  px.slice(1).forEach(function (p) { mouse("mousemove", p); });
  mouse("mouseup", px[px.length - 1]);
}
function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
function visibleTraces(gd) {
  var out = [];
  gd.data.forEach(function (t, k) { if (t.visible !== false) out.push(k); });
  return out;
}
function drawnPoints(gd) {  // SVG mode: the points plotly drew, per visible trace (search matches last)
  var layer = {};  // trace index -> its drawn group (a trace with no points may have none)
  gd.querySelectorAll(".scatterlayer .trace").forEach(function (g) { layer[g.__data__[0].trace.index] = g; });
  return visibleTraces(gd).map(function (k) {
    var pts = layer[k] ? layer[k].querySelectorAll("path.point") : [];
    return {name: gd.data[k].name, n: pts.length,
            fills: Array.from(pts).map(function (p) { return p.style.fill; }),
            pos: Array.from(pts).map(function (p) {  // translate(x,y) of each point
              var t = /translate\(([^,]+),([^)]+)\)/.exec(p.getAttribute("transform"));
              return [Number(t[1]), Number(t[2])]; })};
  });
}
"""

_BOTTOM = """<script>
%s
(async function () {
  try {
    var m = window.labellingMap || {}, gd = m.ready ? await m.ready : null;  // other pages: none
    await sleep(200);
    window.__test.result = await (async function (m, gd) { %s })(m, gd);
  } catch (e) { window.__test.errors.push("driver: " + e + " " + (e && e.stack)); }
  var pre = document.createElement("pre");
  pre.id = "test-out"; pre.style.display = "none"; pre.textContent = JSON.stringify(window.__test);
  document.body.appendChild(pre);
})();
</script>"""


def chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        if shutil.which(name):
            return shutil.which(name)
    return None


def require_chromium() -> str:
    exe = chromium()
    if exe is None:
        pytest.skip("headless Chromium is not installed (Debian package 'chromium')")
    return exe


def with_driver(page: str, driver: str) -> str:
    head = page.index("<head>") + len("<head>")
    page = page[:head] + _TOP + page[head:]
    end = page.rindex("</body>")
    return page[:end] + _BOTTOM % (_HELPERS, driver) + page[end:]


def run_page(path, driver: str, *, screenshot: str | Path | None = None,
             size: tuple[int, int] = (1200, 800)) -> dict:
    """Run ``driver`` (the body of an async function of ``m``, ``gd``) on the page at ``path``.

    Returns ``{"errors": [...], "result": ...}``; with ``screenshot`` also writes a PNG.
    """
    exe = require_chromium()
    path = Path(path)
    driven = path.with_name(path.stem + ".driven.html")
    driven.write_text(with_driver(path.read_text(encoding="utf-8"), driver), encoding="utf-8")
    args = [exe, *FLAGS, f"--window-size={size[0]},{size[1]}"]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    else:
        args.append("--dump-dom")
    out = subprocess.run([*args, driven.as_uri()], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    if screenshot is not None:
        return {}
    found = re.search(r'<pre id="test-out"[^>]*>(.*?)</pre>', out.stdout, re.S)
    assert found, f"the page did not finish: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(found.group(1)))


def read_page(path) -> tuple[dict, dict]:
    """``(figure, data)`` stored in a saved page, with plotly's binary arrays decoded."""
    page = Path(path).read_text(encoding="utf-8")

    def block(name):
        return json.loads(re.search(rf'<script type="application/json" id="{name}">(.*?)</script>',
                                    page, re.S).group(1))

    def decode(obj):
        if isinstance(obj, dict):
            if set(obj) >= {"dtype", "bdata"}:
                return np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
            return {k: decode(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [decode(v) for v in obj]
        return obj

    data = block("map-data")
    data["xy"] = np.frombuffer(base64.b64decode(data["xy"]), dtype="<f4").reshape(-1, 2)
    return decode(block("map-figure")), data
