"""One text's attention pattern in the probe report: the numbers, the CLI choice, the browser."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest

from embetter_plug import TransformerActivationEncoder, probe_layers
from embetter_plug.attention.patterns import attention_patterns
from embetter_plug.cli import main
from embetter_plug.testing import make_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")
TEXTS = ["a first text here", "b and c", "a second, longer text with more words in it",
         "short one", "another text", "the last one <here> & there"] * 2


def section(path) -> list[dict]:
    page = open(path, encoding="utf-8").read()
    found = re.search(r'<script type="application/json" id="pattern-data">(.*?)</script>', page,
                      re.S)
    return None if found is None else json.loads(found.group(1))


def assert_view_equals(view, pattern):
    assert view["text"] == pattern.text and view["tokens"] == list(pattern.tokens)
    assert view["layers"] == list(pattern.layers) and view["heads"] == list(pattern.heads)
    np.testing.assert_allclose(np.asarray(view["pattern"]), pattern.pattern, atol=5.1e-5)


@pytest.fixture(scope="module")
def gpt2_results(tmp_path_factory):
    model, tok = make_tiny_model("gpt2")
    enc = TransformerActivationEncoder(model, tok, layers=[0, 2], parts="attn_result",
                                       heads=[0, 1])
    X = enc.fit_transform(TEXTS)
    return model, tok, probe_layers(X, np.arange(len(TEXTS)) % 2, cv=2, layout=enc.layout_)


def test_report_section_holds_attention_patterns_of_the_text(gpt2_results, tmp_path):
    model, tok, res = gpt2_results
    pattern = attention_patterns(model, tok, [TEXTS[-1]], layers=[0, 2])[0]
    page = res.to_html(tmp_path / "report.html", patterns=pattern)
    (view,) = section(page)
    assert_view_equals(view, pattern)
    text = page.read_text()
    assert "<here>" not in text  # the text and tokens stay data, escaped in the page
    assert 'src="http' not in text and "<link" not in text  # self-contained
    # every row of the shown pattern is a softmax over the real tokens
    np.testing.assert_allclose(np.asarray(view["pattern"]).sum(-1), 1.0, atol=1e-3)
    # several models: one entry each, labelled
    bert, btok = make_tiny_model("bert")
    other = attention_patterns(bert, btok, [TEXTS[-1]], heads=[1, 3])[0]
    two = section(res.to_html(tmp_path / "two.html", patterns={"gpt2": pattern, "bert": other}))
    assert [v["label"] for v in two] == ["gpt2", "bert"]
    assert_view_equals(two[1], other)
    assert section(res.to_html(tmp_path / "none.html")) is None
    with pytest.raises(TypeError, match="AttentionPattern"):
        res.to_html(tmp_path / "bad.html", patterns=[pattern])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from embetter_plug.testing import save_tiny_model

    root = tmp_path_factory.mktemp("report_patterns")
    df = pd.DataFrame({"text": TEXTS, "label": np.arange(len(TEXTS)) % 2})
    df.to_csv(root / "d.csv", index=False)
    return {"gpt2": str(save_tiny_model("gpt2", root / "gpt2")),
            "bert": str(save_tiny_model("bert", root / "bert")), "csv": str(root / "d.csv")}


def _probe(saved, out, *extra):
    return main(["probe", "--data", saved["csv"], "--cv", "2", "--layers", "0,2",
                 "--out", str(out), "--quiet", *extra])


def _reference(folder, text):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder)
    return attention_patterns(model, AutoTokenizer.from_pretrained(folder), [text],
                              layers=[0, 2], max_length=64)[0]


def test_cli_shows_the_pattern_when_parts_read_heads_or_when_asked(saved, tmp_path, capsys):
    # per-head parts: the first row's pattern for each model, without being asked
    assert _probe(saved, tmp_path / "a", "--model", saved["gpt2"], "--model", saved["bert"],
                  "--parts", "attn_result", "--heads", "0,1") == 0
    views = section(tmp_path / "a" / "report.html")
    assert [v["label"] for v in views] == ["gpt2", "bert"]
    for view, name in zip(views, ["gpt2", "bert"]):
        assert_view_equals(view, _reference(saved[name], TEXTS[0]))
    # residual parts: none unless a row is named
    assert _probe(saved, tmp_path / "b", "--model", saved["gpt2"]) == 0
    assert section(tmp_path / "b" / "report.html") is None
    assert _probe(saved, tmp_path / "c", "--model", saved["gpt2"], "--pattern-text", "5") == 0
    (view,) = section(tmp_path / "c" / "report.html")
    assert_view_equals(view, _reference(saved["gpt2"], TEXTS[5]))


def test_cli_pattern_row_errors_before_a_model_loads(saved, tmp_path, capsys, monkeypatch):
    from embetter_plug import TransformerActivationEncoder as Enc

    monkeypatch.setattr(Enc, "fit", lambda *a, **k: pytest.fail("a model was loaded"))
    assert _probe(saved, tmp_path / "e", "--model", saved["gpt2"], "--pattern-text", "12") == 2
    assert "--pattern-text 12:" in capsys.readouterr().err.replace("\n", " ")
    with pytest.raises(SystemExit):
        _probe(saved, tmp_path / "f", "--pattern-text", "first")
    assert "use a row number" in capsys.readouterr().err


def test_cli_pattern_choice():
    from embetter_plug.cli._heads import pattern_text

    texts = ["zero", "one", "two"]
    assert pattern_text(texts, "auto", "attn_z", None) == "zero"
    assert pattern_text(texts, "auto", "resid_post,blocks.{l}.attn.hook_result", None) == "zero"
    assert pattern_text(texts, "auto", "attn_entropy", None) == "zero"  # metrics read heads
    assert pattern_text(texts, "auto", "resid_post,attn_out", None) is None
    assert pattern_text(texts, "none", "attn_z", None) is None
    assert pattern_text(texts, 2, "resid_post", None) == "two"


def test_cli_notes_a_model_that_cannot_give_patterns(capsys):
    from embetter_plug.cli._heads import pattern_of

    model, tok = make_tiny_model("llama")
    flash = copy.deepcopy(model)
    flash.config._attn_implementation = "flash_attention_2"  # refused before a forward
    # no flash kernel here, so the model cannot run: fit without the check's forward
    enc = TransformerActivationEncoder(flash, tok, layers=[0], verify=False).fit()
    assert pattern_of(enc, "some text", "tiny") is None
    assert "tiny: no attention pattern in the report" in capsys.readouterr().out
    assert pattern_of(TransformerActivationEncoder(model, tok, layers=[1]).fit(), "some text",
                      "tiny").pattern.shape[:2] == (1, 4)


def test_report_pattern_view_switches_layer_and_head_in_chromium(gpt2_results, tmp_path):
    from map_chromium import require_chromium, run_page

    require_chromium()
    model, tok, res = gpt2_results
    bert, btok = make_tiny_model("bert")
    pats = {"gpt2": attention_patterns(model, tok, [TEXTS[2]], layers=[0, 2])[0],
            "bert": attention_patterns(bert, btok, [TEXTS[2]], layers=[1])[0]}
    page = res.to_html(tmp_path / "report.html", patterns=pats)
    driver = """
      const grid = () => document.getElementById('pattern-grid');
      const cells = () => Array.from(grid().querySelectorAll('tr')).slice(1).map(
        tr => Array.from(tr.querySelectorAll('td')).map(td => +td.dataset.w));
      const set = (id, v) => { const s = document.getElementById('pattern-' + id);
        s.value = String(v); s.dispatchEvent(new Event('change')); };
      const shown = [];
      shown.push([grid().dataset.shown, cells()]);
      set('layer', 1); shown.push([grid().dataset.shown, cells()]);
      set('head', 3); shown.push([grid().dataset.shown, cells()]);
      set('model', 1); shown.push([grid().dataset.shown, cells()]);
      return {shown: shown, keys: grid().querySelectorAll('th.key').length,
              text: document.getElementById('pattern-text').textContent,
              chart: document.querySelectorAll('#chart svg .series').length};
    """
    got = run_page(page, driver)
    assert got["errors"] == []
    r = got["result"]
    want = [("gpt2", 0, 0), ("gpt2", 2, 0), ("gpt2", 2, 3), ("bert", 1, 0)]
    assert [s for s, _ in r["shown"]] == [f"{m}|{layer}|{h}" for m, layer, h in want]
    for (_, grid), (m, layer, h) in zip(r["shown"], want):
        p = pats[m]
        np.testing.assert_allclose(grid, p.pattern[p.layers.index(layer), h], atol=5.1e-5)
    assert not np.allclose(r["shown"][0][1], r["shown"][1][1])  # switching changed the view
    assert r["keys"] == len(pats["bert"].tokens) and r["text"] == TEXTS[2]
    assert r["chart"] > 0  # the report's own chart still draws
