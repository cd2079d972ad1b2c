"""LabellingMap at scale: file size per point, time to build the page, and in headless Chromium
(software WebGL) the time to draw it, to select a box and to search.

Texts are the built-in data set's sentences, cycled; the embedding is random (384 features).
"labels" maps have 10% of rows labelled (2 classes); "classifier" maps add probabilities, so
the page carries the label, prediction and uncertainty colourings.

Run: flock /tmp/embetter_bench.lock python benchmarks/bench_map.py [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _report import write_section  # noqa: E402

class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (no extra package, no
    virtual time: ``performance.now()`` in the page is real time)."""

    def __init__(self, exe: str):
        self._to_chrome, self._from_chrome = os.pipe(), os.pipe()
        r_in, w_out = self._to_chrome[0], self._from_chrome[1]

        def fds():  # the browser reads commands on fd 3 and writes replies on fd 4
            a, b = os.dup(r_in), os.dup(w_out)  # above 4, so that neither dup2 clobbers the other
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
             "--remote-debugging-pipe", "--window-size=1200,800", "about:blank"],
            preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(r_in)
        os.close(w_out)
        self._buf, self._id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")

    def _read(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._from_chrome[0], 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._to_chrome[1], json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]

    def wait_event(self, method: str, timeout: float = 600) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            msg = self._read()
            if msg.get("method") == method:
                return msg
        raise TimeoutError(method)

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                        returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self._to_chrome[1])
        os.close(self._from_chrome[0])


MEASURE = """(async function () {
  var m = window.labellingMap, gd = await m.ready, out = {ready_ms: performance.now()};
  function frame() { return new Promise(function (r) { requestAnimationFrame(function () { r(); }); }); }
  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
  await frame();
  var r = gd.querySelector(".nsewdrag").getBoundingClientRect();
  function mouse(type, fx, fy) {
    var x = r.left + r.width * fx, y = r.top + r.height * fy;
    (document.elementFromPoint(x, y) || document).dispatchEvent(new MouseEvent(type, {bubbles: true,
      cancelable: true, clientX: x, clientY: y, button: 0, buttons: type === "mouseup" ? 0 : 1, view: window}));
  }
  var t = performance.now();
  mouse("mousemove", 0.3, 0.3); mouse("mousedown", 0.3, 0.3);
  mouse("mousemove", 0.5, 0.5); mouse("mousemove", 0.7, 0.7); mouse("mouseup", 0.7, 0.7);
  while (!m.selectedRows().length && performance.now() - t < 60000) await sleep(5);
  await frame();
  out.select_ms = performance.now() - t; out.selected = m.selectedRows().length;
  t = performance.now();
  await m.search("dataset"); await frame();
  out.search_ms = performance.now() - t; out.matches = m.highlightedRows().length;
  var xr = gd.layout.xaxis.range;
  t = performance.now();
  await Plotly.relayout(gd, {"xaxis.range": [xr[0] / 2, xr[1] / 2]}); await frame();
  out.zoom_ms = performance.now() - t;
  return out;
})()"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def browser_times(path: Path) -> dict:
    """Times in the page: ready after navigation, a box selection, a search and a zoom."""
    exe = chromium()
    if exe is None:
        return {}
    browser = Chromium(exe)
    try:
        browser.call("Page.navigate", url=path.as_uri())
        browser.wait_event("Page.loadEventFired")
        return browser.evaluate(MEASURE)
    finally:
        browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)

    from plotly.offline import get_plotlyjs

    from embetter_plug import LabellingMap, load_builtin_dataset

    base = load_builtin_dataset()["text"].tolist()
    plotlyjs = len(get_plotlyjs().encode())
    rng = np.random.default_rng(0)
    rows = []
    LabellingMap.from_embeddings(rng.normal(size=(10, 4)), base[:10])  # imports, outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            texts = [base[i % len(base)] for i in range(n)]
            text_bytes = sum(len(t.encode()) for t in texts) / n
            X = rng.normal(size=(n, 384)).astype(np.float32)
            labels = np.where(rng.random(n) < 0.1, rng.choice(["yes", "no"], n), None)
            for kind in ("labels", "classifier"):
                extra = {}
                if kind == "classifier":
                    extra = {"proba": rng.dirichlet([1, 1], size=n), "classes": ["no", "yes"]}
                t = time.perf_counter()
                m = LabellingMap.from_embeddings(X, texts, labels, **extra)
                path = m.save(Path(tmp) / f"map_{n}_{kind}.html")
                build = time.perf_counter() - t
                size = path.stat().st_size
                b = browser_times(path)
                row = {"n": n, "kind": kind, "size_mb": size / 1e6,
                       "per_point": (size - plotlyjs) / n, "text_bytes": text_bytes,
                       "build_s": build, **b}
                print(row, flush=True)
                rows.append(row)

    lines = [
        "## Labelling map at scale (`bench_map`)",
        "",
        "`LabellingMap.from_embeddings` on a random 384-feature embedding (PCA to 2-D) of the "
        "built-in data set's sentences, cycled (*text bytes*: their mean length in UTF-8); 10% of "
        "rows labelled. "
        "*classifier* adds probabilities (prediction and uncertainty colourings). The page "
        f"inlines plotly.js ({plotlyjs / 1e6:.1f} MB); *bytes per point* is the rest of the file "
        "divided by the number of points. Browser figures: headless Chromium with software WebGL "
        "(SwiftShader, no GPU), driven over the DevTools protocol in real time: *page ready* is from the start of navigation until the points are drawn (file read, "
        "plotly.js and data parsed, hover texts built); *box select* from a scripted drag over "
        "the middle of the plot until the selection is known (plotly throttles selection "
        "updates, so this includes its delay; the box holds about 90% of the points); *search* "
        "for 'dataset' (31% of the texts match) until the matches are circled; *zoom* a 2x zoom "
        "until redrawn.",
        "",
        "| points | colourings | file (MB) | bytes per point | text bytes | build + save (s) "
        "| page ready (s) | box select (ms) | search (ms) | zoom (ms) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ready = r["ready_ms"] / 1000 if "ready_ms" in r else float("nan")
        lines.append(
            f"| {r['n']:,} | {'label' if r['kind'] == 'labels' else 'label, prediction, uncertainty'} "
            f"| {r['size_mb']:.1f} | {r['per_point']:.0f} | {r['text_bytes']:.0f} | {r['build_s']:.1f} "
            f"| {ready:.1f} "
            f"| {r.get('select_ms', float('nan')):.0f} | {r.get('search_ms', float('nan')):.0f} "
            f"| {r.get('zoom_ms', float('nan')):.0f} |")
    load = os.getloadavg()[0]
    lines += ["", f"Single runs on a 2-core CPU shared with other jobs (load average {load:.0f} at "
              "the end of the run); times vary between runs (sizes do not). Software WebGL draws "
              "on the CPU: a browser with a GPU draws faster (not measured here)."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("bench_map", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
