"""The HTML pages (probe report, attention patterns, labelling map) and the commands that write
them: user text is never read as a template placeholder or as plotly markup, text UTF-8 cannot
hold is refused before the work (or shown replaced, for file names), and a failed write leaves
no page behind."""

from __future__ import annotations

import html
import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from embetter_plug import LabellingMap, probe_layers
from embetter_plug.attention.patterns import AttentionPattern
from embetter_plug.cli import main
from embetter_plug.probe import write_report

LINK = '<a href="https://example.com/x">click</a>'


def _block(page: str, name: str):
    return json.loads(re.search(rf'<script type="application/json" id="{name}">(.*?)</script>',
                                page, re.S).group(1))


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    return probe_layers(rng.normal(size=(40, 2, 1, 4)) + y[:, None, None, None], y, cv=2,
                        nested=False)


def _pattern():
    p = np.full((1, 1, 3, 3), 1 / 3)
    return AttentionPattern("a b c", ["a", "b", "c"], (0,), (0,), p)


def test_placeholders_in_a_report_title_stay_text(results, tmp_path):
    title = "runs of __DATA__ and __TITLE__ and __STYLE__"
    page = write_report(results, tmp_path / "r.html", title=title).read_text(encoding="utf-8")
    assert f"<title>{title}</title>" in page and f"<h1>{title}</h1>" in page
    data = _block(page, "data")  # the data block is intact, and only there
    assert len(data["rows"]) == len(results.summary())  # one per probe and metric
    assert page.count('"rows":') == 1


def test_placeholders_in_a_pattern_title_stay_text(tmp_path):
    title = "x __SECTION__ y __STYLE__ z __DATA__"
    page = _pattern().to_html(tmp_path / "p.html", title=title).read_text(encoding="utf-8")
    assert f"<title>{title}</title>" in page
    assert _block(page, "pattern-data")[0]["tokens"] == ["a", "b", "c"]
    assert page.count('id="pattern-data"') == 1


@pytest.mark.parametrize("write", ["report", "pattern"])
def test_a_lone_surrogate_in_a_title_is_refused_and_leaves_no_page(results, tmp_path, write):
    path = tmp_path / "page.html"
    with pytest.raises(ValueError, match=r"title: .*'\\ud800' at position 4, which UTF-8 cannot"):
        if write == "report":
            write_report(results, path, title="bad \ud800 title")
        else:
            _pattern().to_html(path, title="bad \ud800 title")
    assert not path.exists()


class _NoProjection:
    def fit_transform(self, X):
        raise AssertionError("projected before the texts were checked")


def test_map_refuses_unwritable_texts_before_projecting(tmp_path):
    pytest.importorskip("plotly")
    X = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(ValueError, match=r"texts\[2\]: .* which UTF-8 cannot encode"):
        LabellingMap.from_embeddings(X, ["a", "b", "c \udcff", "d"], projection=_NoProjection())
    with pytest.raises(ValueError, match=r"labels\[1\]: "):
        LabellingMap.from_embeddings(X, list("abcd"), ["x", "y\ud800", None, "x"],
                                     projection=_NoProjection())


def test_map_labels_and_title_are_text_not_plotly_markup(tmp_path):
    pytest.importorskip("plotly")
    X = np.random.default_rng(0).normal(size=(6, 3))
    labels = [LINK, LINK, "a & b", "a & b", None, "<b>bold</b>"]
    m = LabellingMap.from_embeddings(X, list("uvwxyz"), labels, title=f"title {LINK}")
    page = m.save(tmp_path / "map.html").read_text(encoding="utf-8")
    figure = _block(page, "map-figure")
    names = [t["name"] for t in figure["data"] if t.get("showlegend", True) is not False]
    want = [html.escape(v, quote=False) for v in (LINK, "<b>bold</b>", "a & b", "unlabelled")]
    assert sorted(names) == sorted(want)
    assert "<a" not in json.dumps(figure) and "<b>" not in json.dumps(figure)
    assert figure["layout"]["title"]["text"] == "title " + html.escape(LINK, quote=False)
    # the page's own data keeps the labels as they are (exported unchanged)
    assert _block(page, "map-data")["labels"] == labels


def test_a_failed_page_write_leaves_the_old_page(tmp_path):
    from embetter_plug._pages import write_page

    path = tmp_path / "p.html"
    path.write_text("old page", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot be written"):
        write_page(path, "new \udcff page")
    assert path.read_text(encoding="utf-8") == "old page"
    assert os.listdir(tmp_path) == ["p.html"]


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    from embetter_plug import load_builtin_dataset
    from embetter_plug.testing import save_tiny_model

    root = tmp_path_factory.mktemp("pages_cli")
    model = save_tiny_model("gpt2", root / "gpt2")
    df = load_builtin_dataset("train")
    df = pd.concat([df[df.label == 1].iloc[:12], df[df.label == 0].iloc[:12]])
    csv = os.path.join(os.fsencode(root), b"texts_\xff.csv")  # a name that is not UTF-8
    try:
        df.to_csv(os.fsdecode(csv), index=False)
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take file names that are not UTF-8")
    return {"root": root, "model": str(model), "csv": os.fsdecode(csv), "df": df}


def test_probe_on_a_csv_whose_name_is_not_utf8(cli_setup, tmp_path):
    out = tmp_path / "out"
    code = main(["probe", "--data", cli_setup["csv"], "--model", cli_setup["model"],
                 "--layers", "0", "--cv", "2", "--max-length", "32", "--out", str(out)])
    assert code == 0
    assert set(pd.read_csv(out / "results.csv")["dataset"]) == {"texts_\ufffd"}
    assert "<title>Probes on texts_\ufffd</title>" in (out / "report.html").read_text("utf-8")


def test_map_on_a_csv_whose_name_is_not_utf8(cli_setup, tmp_path):
    pytest.importorskip("plotly")
    out = tmp_path / "map.html"
    code = main(["map", "--data", cli_setup["csv"], "--model", cli_setup["model"],
                 "--layers", "0", "--max-length", "32", "--out", str(out)])
    assert code == 0
    page = out.read_text(encoding="utf-8")
    assert "<title>texts_\ufffd</title>" in page
    assert _block(page, "map-data")["texts"] == cli_setup["df"]["text"].tolist()
