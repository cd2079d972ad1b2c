"""The labelling map's page in headless Chromium: drawing, colour switch, selection, export, search.

Skipped where Chromium is absent (Debian: ``apt-get install chromium``). Run with
``EMBETTER_PLUG_UPDATE_SCREENSHOTS=1`` to rewrite the docs' screenshot.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from map_chromium import read_page, require_chromium, run_page

pytest.importorskip("plotly")

from embetter_plug import LabellingMap  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXTS_EXTRA = ['a "quoted", comma text', "two\nlines", "</script><b>bold</b> & more", "ünïcödé REFUND"]


def _clusters(n_per=30, seed=0):
    """Three separated squares: a (0..1, 0..1), b (3..4, 3..4), unlabelled (3..4, 0..1)."""
    rng = np.random.default_rng(seed)
    xy = np.concatenate([rng.uniform(0, 1, (n_per, 2)), rng.uniform(3, 4, (n_per, 2)),
                         rng.uniform(0, 1, (n_per, 2)) + [3, 0]])
    labels = np.array(["a"] * n_per + ["b"] * n_per + [None] * n_per, dtype=object)
    texts = [f"row {i}{' a refund please' if i % 7 == 0 else ''}" for i in range(3 * n_per)]
    texts[: len(TEXTS_EXTRA)] = TEXTS_EXTRA
    return xy, labels, texts


@pytest.fixture(scope="module")
def chromium():
    return require_chromium()


@pytest.fixture
def classified(tmp_path):
    xy, labels, texts = _clusters()
    rng = np.random.default_rng(1)
    proba = rng.dirichlet([1, 1], size=len(xy))
    m = LabellingMap.from_embeddings(xy, texts, labels, proba=proba, classes=["a", "b"],
                                     projection=None, color_by="label", render_mode="svg")
    return m, m.save(tmp_path / "map.html"), proba


def test_page_draws_points_per_colour_and_switches_colouring(chromium, classified):
    m, path, proba = classified
    out = run_page(path, """
      var res = {label: drawnPoints(gd)};
      var menu = gd.querySelector(".updatemenu-header");
      for (var k of [1, 2]) {  // open plotly's dropdown and click an entry, as a user does
        menu.dispatchEvent(new MouseEvent("click", {bubbles: true}));
        await sleep(100);
        gd.querySelectorAll(".updatemenu-dropdown-button")[k].dispatchEvent(new MouseEvent("click", {bubbles: true}));
        await sleep(300);
        res[k === 1 ? "prediction" : "uncertainty"] = drawnPoints(gd);
      }
      res.uncertaintyRows = gd.data[visibleTraces(gd)[0]].customdata;
      return res;
    """)
    assert out["errors"] == []
    res = out["result"]
    _, labels, _ = _clusters()
    colors = {t.name: t.marker.color for t in m.figure_.data if t.name in ("a", "b", "unlabelled")}

    def rgb(hex_color):
        return "rgb({}, {}, {})".format(*(int(hex_color[i:i + 2], 16) for i in (1, 3, 5)))

    expected = [("a", 30), ("b", 30), ("unlabelled", 30), ("search matches", 0)]
    assert [(t["name"], t["n"]) for t in res["label"]] == expected
    for t in res["label"][:-1]:
        assert set(t["fills"]) == {rgb(colors[t["name"]])}
    pred = np.array(["a", "b"])[proba.argmax(axis=1)]
    assert [(t["name"], t["n"]) for t in res["prediction"]] == [
        ("predicted a", int((pred == "a").sum())), ("predicted b", int((pred == "b").sum())),
        ("search matches", 0)]
    for t in res["prediction"][:-1]:  # a predicted class has the colour of that label
        assert set(t["fills"]) == {rgb(colors[t["name"].split()[-1]])}
    # uncertainty: each point's colour is Plasma at (1 - max p) / (1 - 1/2)
    from plotly.colors import sample_colorscale, unlabel_rgb

    (u, _) = res["uncertainty"]
    assert u["n"] == len(proba)
    doubt = 1 - proba.max(axis=1)[res["uncertaintyRows"]]
    want = np.array([unlabel_rgb(c) for c in sample_colorscale("Plasma", list(doubt / 0.5))])
    got = np.array([unlabel_rgb(c) for c in u["fills"]])
    np.testing.assert_allclose(got, want, atol=2)


def test_search_highlights_rows_containing_the_phrase(chromium, classified):
    m, path, _ = classified
    out = run_page(path, """
      await m.search("  Refund ");
      var res = {rows: m.highlightedRows(), drawn: drawnPoints(gd), count: document.getElementById("map-matches").textContent,
                 circled: gd.data[gd.data.length - 1].customdata};
      var input = document.getElementById("map-search");  // typing in the box does the same
      input.value = "row 1"; input.dispatchEvent(new Event("input"));
      await sleep(200);
      res.typed = m.highlightedRows();
      document.getElementById("map-select-matches").click();
      res.selected = m.selectedRows();
      input.value = ""; input.dispatchEvent(new Event("input"));
      await sleep(200);
      res.cleared = drawnPoints(gd).map(function (t) { return t.n; });
      return res;
    """)
    assert out["errors"] == []
    res = out["result"]
    texts = pd.Series(m.texts)
    want = np.flatnonzero(texts.str.lower().str.contains("refund", regex=False)).tolist()
    assert res["rows"] == want and res["circled"] == want and len(want) > 5
    assert res["count"] == f"{len(want)} matches"
    # a circle is drawn on top of each matching row's point, and on no other
    *base, circles = res["drawn"]
    assert circles["name"] == "search matches" and circles["n"] == len(want)
    where = {r: p for t, tr in zip(base, [t for t in m.figure_.data if t.visible][:-1])
             for r, p in zip(tr.customdata, t["pos"])}
    np.testing.assert_allclose(circles["pos"], [where[r] for r in want], atol=0.01)
    typed = np.flatnonzero(texts.str.contains("row 1", regex=False)).tolist()
    assert res["typed"] == typed and res["selected"] == typed  # "select matches" selects them
    assert res["cleared"][-1] == 0 and res["cleared"][:-1] == [t["n"] for t in base]


@pytest.mark.parametrize("render_mode", ["svg", "webgl"])
def test_box_and_lasso_selection_export_exactly_those_rows(chromium, tmp_path, render_mode):
    xy, labels, texts = _clusters()
    path = LabellingMap.from_embeddings(xy, texts, labels, projection=None,
                                        render_mode=render_mode).save(tmp_path / "map.html")
    figure, _ = read_page(path)
    assert {t["type"] for t in figure["data"]} == {"scattergl" if render_mode == "webgl" else "scatter"}
    out = run_page(path, """
      var res = {};
      drag(gd, [[-0.2, -0.2], [1.2, 1.2]]);  // box around cluster a
      await sleep(300);
      res.box = m.selectedRows();
      document.getElementById("map-label").value = "label, with comma";
      res.csv = m.exportCSV(); res.json = m.exportJSON();
      res.count = document.getElementById("map-selected").textContent;
      await Plotly.relayout(gd, {dragmode: "lasso"});
      // lasso: a triangle over cluster b (3..4, 3..4): its points below the diagonal
      drag(gd, [[2.8, 2.8], [4.3, 2.8], [4.3, 4.3], [2.8, 2.8]]);
      await sleep(300);
      res.lasso = m.selectedRows();
      return res;
    """)
    assert out["errors"] == []
    res = out["result"]
    want = list(range(30))
    assert res["box"] == want and res["count"] == "30 selected"
    got = pd.read_csv(io.StringIO(res["csv"]), keep_default_na=False)
    assert list(got.columns) == ["index", "text", "label"]
    assert got["index"].tolist() == want
    assert got["text"].tolist() == [texts[i] for i in want]
    assert set(got["label"]) == {"label, with comma"}
    assert json.loads(res["json"]) == [{"index": i, "text": texts[i], "label": "label, with comma"}
                                       for i in want]
    # the lasso triangle (2.8, 2.8) - (4.3, 2.8) - (4.3, 4.3): points of b with y < x, up to the
    # rounding of a pixel at the edge
    inside = [i for i in range(30, 60) if xy[i, 1] < xy[i, 0]]
    edge = [i for i in range(30, 60) if abs(xy[i, 1] - xy[i, 0]) < 0.02]
    assert set(res["lasso"]) ^ set(inside) <= set(edge)
    assert len(res["lasso"]) > 5


def test_webgl_page_with_many_points_loads_and_selects(chromium, tmp_path):
    rng = np.random.default_rng(0)
    n = 20_000
    X = rng.normal(size=(n, 8))
    texts = [f"text {i}" for i in range(n)]
    labels = np.where(rng.random(n) < 0.01, rng.choice(["x", "y", "z"], n), None)
    m = LabellingMap.from_embeddings(X, texts, labels)
    path = m.save(tmp_path / "big.html")
    xy = np.asarray(m.xy)
    out = run_page(path, """
      drag(gd, [[0, 0], [1.5, 1.5]]); await sleep(500);
      return {n: gd.data.map(function (t) { return t.customdata.length; }), sel: m.selectedRows().length,
              type: gd._fullData[0].type};
    """)
    assert out["errors"] == []
    res = out["result"]
    assert res["type"] == "scattergl"
    assert sum(res["n"]) == n
    assert res["n"][-2] == int(pd.isna(labels).sum())  # unlabelled, then the search trace
    inside = ((xy >= 0) & (xy <= 1.5)).all(axis=1).sum()
    assert abs(res["sel"] - inside) <= 0.01 * inside  # up to points on the box's edge pixels


@pytest.mark.slow
def test_screenshot_of_the_docs_example(chromium, tmp_path, monkeypatch):
    """The picture in docs/bulk-labelling.md: its own example map, searched, with a box selection."""
    mktestdocs = pytest.importorskip("mktestdocs")
    monkeypatch.chdir(tmp_path)  # the example writes map.html
    page = (REPO / "docs" / "bulk-labelling.md").read_text(encoding="utf-8")
    ns: dict = {}
    for block in mktestdocs.grab_code_blocks(page, lang="python"):
        exec(block, ns)
        if isinstance(ns.get("m"), LabellingMap):
            break
    m = ns["m"]
    xy = np.asarray(m.xy)
    doubt = 1 - m.proba.max(axis=1)
    (x0, y0), (x1, y1) = np.quantile(xy[doubt > np.quantile(doubt, 0.7)], [0.15, 0.85], axis=0)
    path = m.save(tmp_path / "map.html")
    driver = f"""await m.search("release"); drag(gd, [[{x0}, {y0}], [{x1}, {y1}]]); await sleep(300);
                 document.getElementById("map-label").value = "new dataset";
                 return m.selectedRows();"""
    out = run_page(path, driver)
    assert out["errors"] == []
    inside = ((xy >= [x0, y0]) & (xy <= [x1, y1])).all(axis=1).sum()
    assert abs(len(out["result"]) - inside) <= 2  # up to points on the edge pixels
    png = tmp_path / "map.png"
    run_page(path, driver, screenshot=png, size=(1200, 700))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if os.environ.get("EMBETTER_PLUG_UPDATE_SCREENSHOTS"):
        shutil.copy(png, REPO / "docs" / "img" / "bulk_labelling_map.png")
