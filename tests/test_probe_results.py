"""ProbeResults (summary, best, table, files), LayerMetricDisplay and the HTML report."""

from __future__ import annotations

import re
import shutil
import subprocess

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from embetter_plug import LayerMetricDisplay, ProbeResults, probe_layers  # noqa: E402
from embetter_plug.probe import write_report  # noqa: E402
from embetter_plug.probe.report import report_rows  # noqa: E402


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    X = rng.normal(size=(80, 3, 2, 5))
    X[:, 1, 0, 0] += 2 * y
    X[:, 2, 1, :] += 0.5 * y[:, None]
    return probe_layers(X, y, cv=4)


def test_frame_is_tidy(results):
    f = results.frame_
    assert list(f.columns) == ["layer", "part", "metric", "fold", "score"]
    assert results.metrics == ["accuracy", "precision", "recall", "f1", "matthews", "roc_auc",
                               "log_loss"]
    # 6 probes + dummy, 7 metrics, 4 folds; and the inner CV score of each probe per fold
    assert len(f) == 7 * 7 * 4 + 6 * 4
    assert set(f["metric"]) - set(results.metrics) == {"inner:roc_auc"}
    assert (f.loc[f["metric"] == "log_loss", "score"] > 0).all()


def test_summary_is_mean_and_std_over_folds(results):
    s = results.summary()
    f = results.frame_
    for row in s.sample(10, random_state=0).itertuples():
        sel = f[(f["part"] == row.part) & (f["metric"] == row.metric)
                & ((f["layer"] == row.layer) if not pd.isna(row.layer) else f["layer"].isna())]
        scores = sel["score"].to_numpy()
        assert row.mean == pytest.approx(np.mean(scores))
        assert row.std == pytest.approx(np.std(scores, ddof=1))
        assert row.n_folds == 4


def test_best_and_table(results):
    s = results.summary("roc_auc")  # the primary metric for labels
    s = s[s["part"] != "dummy"]
    top = s.loc[s["mean"].idxmax()]
    assert results.best_ == (int(top["layer"]), top["part"]) == (1, "part0")
    # lower is better for losses
    ll = results.summary("log_loss")
    ll = ll[ll["part"] != "dummy"]
    low = ll.loc[ll["mean"].idxmin()]
    assert results.best("log_loss")["layer"] == int(low["layer"])
    t = results.table(["accuracy", "f1"])
    assert list(t.columns) == ["layer", "part", "best", "accuracy", "f1"]
    marked = t[t["best"] == "*"]
    assert len(marked) == 1 and marked.iloc[0]["layer"] == "1" and marked.iloc[0]["part"] == "part0"
    acc = results.summary("accuracy").set_index(["layer", "part"]).loc[(1, "part0")]
    assert marked.iloc[0]["accuracy"] == f"{acc['mean']:.3f} ± {acc['std']:.3f}"
    assert t.iloc[0]["part"] == "dummy" and t.iloc[0]["layer"] == "-"
    with pytest.raises(ValueError, match="not in the results"):
        results.table(["mse"])


def _table(scores: dict, **context) -> ProbeResults:
    """A results frame from ``{(layer, part): {metric: [fold scores]}}``; layer None is the dummy."""
    rows = [(layer, part, metric, fold, v) for (layer, part), by_metric in scores.items()
            for metric, folds in by_metric.items() for fold, v in enumerate(folds)]
    frame = pd.DataFrame(rows, columns=["layer", "part", "metric", "fold", "score"])
    return ProbeResults(frame.assign(**context))


# imbalanced labels (87/13): the C=0.01 probe on layer 0 mlp_out predicts the majority class, so
# it ties the dummy on accuracy and comes first in row order; layer 1 attn_out ranks the texts
# far better but misclassifies a few more at the 0.5 threshold
IMBALANCED = {
    (None, "dummy"): {"accuracy": [0.867, 0.867], "f1": [0.464, 0.464], "roc_auc": [0.5, 0.5]},
    (0, "mlp_out"): {"accuracy": [0.867, 0.867], "f1": [0.464, 0.464], "roc_auc": [0.60, 0.67]},
    (1, "attn_out"): {"accuracy": [0.85, 0.867], "f1": [0.73, 0.74], "roc_auc": [0.91, 0.93]},
    (1, "resid_post"): {"accuracy": [0.85, 0.85], "f1": [0.70, 0.70], "roc_auc": [0.90, 0.90]},
}


def test_best_ranks_by_roc_auc_not_accuracy_on_imbalanced_labels():
    res = _table(IMBALANCED)
    acc = res.summary("accuracy")
    acc = acc[acc["part"] != "dummy"]
    old = acc.sort_values("mean", ascending=False, kind="stable").iloc[0]
    assert (old["layer"], old["part"]) == (0, "mlp_out")  # what accuracy-then-row-order picks
    best = res.best()
    assert res.primary_metric == "roc_auc" and res.best_ == (1, "attn_out")
    assert best["metric"] == "roc_auc" and best["mean"] == pytest.approx(0.92)
    assert best["dummy"] == pytest.approx(0.5) and best["beats_dummy"]
    # another metric can still be asked for; its ties fall back on the ranking order
    assert (res.best("accuracy")["layer"], res.best("accuracy")["part"]) == (0, "mlp_out")
    assert res.best("f1")["part"] == "attn_out"
    t = res.table(["accuracy", "roc_auc"])
    assert t.loc[t["best"] == "*", "part"].tolist() == ["attn_out"]


def test_ties_are_broken_by_the_next_metric():
    tied = {(None, "dummy"): {"roc_auc": [0.5, 0.5], "f1": [0.4, 0.4], "accuracy": [0.6, 0.6]},
            (0, "resid_post"): {"roc_auc": [0.8, 0.9], "f1": [0.70, 0.70], "accuracy": [0.9, 0.9]},
            (3, "resid_post"): {"roc_auc": [0.9, 0.8], "f1": [0.75, 0.75], "accuracy": [0.8, 0.8]}}
    res = _table(tied)
    assert res.best_ == (3, "resid_post")  # equal ROC-AUC, higher macro-F1 (lower accuracy)
    regression = {(None, "dummy"): {"mse": [1.0, 1.0], "r2": [0.0, 0.0], "spearman": [0.0, 0.0]},
                  (0, "part0"): {"mse": [0.5, 0.5], "r2": [0.4, 0.6], "spearman": [0.6, 0.6]},
                  (1, "part0"): {"mse": [0.4, 0.4], "r2": [0.5, 0.5], "spearman": [0.7, 0.7]}}
    res = _table(regression)
    assert res.primary_metric == "r2" and res.best_ == (1, "part0")


def test_no_probe_better_than_the_dummy_warns():
    res = _table({k: v for k, v in IMBALANCED.items() if k[1] in ("dummy", "mlp_out")})
    assert res.best("accuracy")["beats_dummy"] is False  # ties the dummy
    assert res.best()["beats_dummy"] is True
    y = np.array([0] * 26 + [1] * 4)
    with pytest.warns(UserWarning, match="no probe beats the dummy baseline on roc_auc"):
        out = probe_layers(np.zeros((30, 2, 1, 3)), y, cv=2)  # constant activations
    assert out.best()["mean"] == out.best()["dummy"] == 0.5
    # per context: each model is compared with the dummy that serves it (pooling "-")
    two = ProbeResults.concat([_table(IMBALANCED, model="a", pooling="mean"),
                               _table(IMBALANCED, model="b", pooling="mean")]).frame_
    two.loc[two["part"] == "dummy", "pooling"] = "-"
    two.loc[(two["part"] == "dummy") & (two["model"] == "b"), "score"] = 0.0
    two = ProbeResults(two)
    assert two.best()["model"] == "a" and two.best()["dummy"] == pytest.approx(0.5)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_round_trip(results, tmp_path, suffix):
    path = tmp_path / f"res{suffix}"
    (results.to_csv if suffix == ".csv" else results.to_parquet)(path)
    back = ProbeResults.read(path)
    pd.testing.assert_frame_equal(back.frame_, results.frame_, check_dtype=False)
    assert back.best_ == results.best_
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ProbeResults.read(tmp_path / "missing.csv")


def test_context_and_concat(results):
    both = ProbeResults.concat([results.with_context(model="a"),
                                results.with_context(model="b")])
    assert both.context == ["model"]
    assert len(both.frame_) == 2 * len(results.frame_)
    table = both.table()
    assert set(table["model"]) == {"a", "b", "-"}  # "-": the selection-free row, over both
    assert table.loc[table["model"] == "-", "part"].tolist() == ["selection-free"]
    assert len(both.summary()) == 2 * len(results.summary())
    with pytest.raises(ValueError, match="core column"):
        results.with_context(layer=1)
    with pytest.raises(ValueError, match="needs the columns"):
        ProbeResults(pd.DataFrame({"layer": [0]}))


def test_display_lines_bands_and_baseline(results):
    fig, ax = plt.subplots()
    disp = LayerMetricDisplay.from_results(results, metric="accuracy", ax=ax)
    assert disp.ax_ is ax and sorted(disp.lines_) == ["part0", "part1"]
    s = results.summary("accuracy")
    for part, line in disp.lines_.items():
        ref = s[s["part"] == part].sort_values("layer")
        np.testing.assert_allclose(line.get_xdata(), ref["layer"].astype(int))
        np.testing.assert_allclose(line.get_ydata(), ref["mean"])
        verts = disp.bands_[part].get_paths()[0].vertices[:, 1]
        lo, hi = (ref["mean"] - ref["std"]).to_numpy(), (ref["mean"] + ref["std"]).to_numpy()
        assert verts.min() == pytest.approx(lo.min()) and verts.max() == pytest.approx(hi.max())
    (base,) = disp.baselines_.values()
    dummy = s.loc[s["part"] == "dummy", "mean"].iloc[0]
    assert base.get_ydata()[0] == pytest.approx(dummy)
    assert ax.get_ylabel() == "accuracy"
    plt.close(fig)


def test_display_filters_and_errors(results):
    both = ProbeResults.concat([results.with_context(model="a"), results.with_context(model="b")])
    disp = LayerMetricDisplay.from_results(both, "f1", parts=["part1"])
    assert sorted(disp.lines_) == ["a | part1", "b | part1"] and len(disp.baselines_) == 2
    one = LayerMetricDisplay.from_results(both, "f1", where={"model": "b"})
    assert sorted(one.lines_) == ["part0", "part1"]
    with pytest.raises(ValueError, match="not in the results"):
        LayerMetricDisplay.from_results(results, parts=["mlp_out"])
    with pytest.raises(ValueError, match="is not a column"):
        LayerMetricDisplay.from_results(results, where={"pooling": "mean"})
    plt.close("all")


def test_report_rows_split_pooling_from_part():
    frame = pd.DataFrame({"layer": [pd.NA, 0, 0], "part": ["dummy", "mlp_out@mean", "mlp_out@pos0.5"],
                          "metric": "accuracy", "fold": 0, "score": [0.5, 0.7, 0.8]})
    rows = report_rows(ProbeResults(frame))
    assert [(r["part"], r["pooling"], r["layer"]) for r in rows] == [
        ("dummy", "-", None), ("mlp_out", "mean", 0), ("mlp_out", "pos0.5", 0)]


def test_report_is_self_contained(results, tmp_path):
    page = write_report(results.with_context(model="m</script>"), tmp_path / "r.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<script src" not in page
    assert page.count("</script>") == 2  # the data cannot close its script element early


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _render(path, fragment: str) -> str:
    exe = _chromium()
    if exe is None:
        pytest.skip("headless Chromium is not installed (Debian package 'chromium')")
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"file://{path}#{fragment}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_report_renders_in_headless_chromium(results, tmp_path):
    both = ProbeResults.concat([results.with_context(model="small", pooling="mean"),
                                results.with_context(model="big", pooling="mean")])
    path = write_report(both, tmp_path / "report.html", title="t")
    dom = _render(path, "model=big&metric=f1")
    assert 'data-rendered="dataset=-&amp;model=big&amp;pooling=mean&amp;metric=f1"' in dom
    series = re.findall(r'<g class="series" data-part="([^"]+)" data-n="(\d+)" data-means="([^"]+)"', dom)
    s = results.summary("f1")
    assert [p for p, _, _ in series] == ["part0", "part1"]
    for part, n, means in series:
        ref = s[s["part"] == part].sort_values("layer")["mean"].to_numpy()
        assert int(n) == 3
        np.testing.assert_allclose([float(v) for v in means.split()], ref, atol=1e-6)
    base = float(re.search(r'<line class="baseline" data-value="([^"]+)"', dom).group(1))
    assert base == pytest.approx(s.loc[s["part"] == "dummy", "mean"].iloc[0], abs=1e-6)
    best = results.best("f1")
    assert re.search(rf'<tr class="best" data-key="{best["layer"]}\|{best["part"]}"', dom)
    # ties on the chosen metric are broken as ProbeResults.best breaks them
    tied = {(None, "dummy"): {"roc_auc": [0.5, 0.5], "f1": [0.4, 0.4], "accuracy": [0.6, 0.6]},
            (0, "resid_post"): {"roc_auc": [0.8, 0.9], "f1": [0.70, 0.70], "accuracy": [0.9, 0.9]},
            (3, "resid_post"): {"roc_auc": [0.9, 0.8], "f1": [0.75, 0.75], "accuracy": [0.8, 0.8]}}
    dom_tied = _render(write_report(_table(tied), tmp_path / "tied.html"), "metric=roc_auc")
    assert re.search(r'<tr class="best" data-key="3\|resid_post"', dom_tied)
    # another choice in the address gives another chart
    dom2 = _render(path, "metric=log_loss")
    m2 = re.findall(r'data-part="part0" data-n="3" data-means="([^"]+)"', dom2)
    ref2 = results.summary("log_loss").query("part == 'part0'").sort_values("layer")["mean"]
    np.testing.assert_allclose([float(v) for v in m2[0].split()], ref2, atol=1e-6)


def test_report_and_plot_show_the_statistics(tmp_path):
    """The selection-free line and headline, the warning, and the statistics columns."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    X = rng.normal(size=(60, 2, 2, 4))
    X[:, 1, 0, 0] += 2 * y
    res = probe_layers(X, y, LogisticRegression(), cv=3, control=True, mdl=True,
                       scoring=["accuracy", "roc_auc"], random_state=0)
    sf = res.selection_free()
    disp = LayerMetricDisplay.from_results(res)
    assert disp.selection_.get_ydata()[0] == pytest.approx(sf["mean"])
    ctrl = res.summary("control:roc_auc").query("part == 'part0'").sort_values("layer")
    np.testing.assert_allclose(disp.controls_["part0"].get_ydata(), ctrl["mean"])
    assert disp.controls_["part0"].get_color() == disp.lines_["part0"].get_color()
    plt.close(disp.figure_)
    rows = report_rows(res)
    st = res.statistics().set_index(["layer", "part"])
    row = next(r for r in rows if r["layer"] == 1 and r["part"] == "part0")
    assert row["selectivity"] == pytest.approx(st.loc[(1, "part0"), "selectivity"])
    assert row["compression"] == pytest.approx(st.loc[(1, "part0"), "compression"])
    path = write_report(res, tmp_path / "stats.html")
    try:
        dom = _render(path, "metric=roc_auc")
    except pytest.skip.Exception:
        return
    line = float(re.search(r'<line class="selection" data-value="([^"]+)"', dom).group(1))
    assert line == pytest.approx(sf["mean"], abs=1e-6)
    assert "Best probe, selection-free" in dom and "<th>selectivity</th>" in dom


def test_table_prints_every_row_and_column():
    """pandas cuts frames over 60 rows (and wide ones) to `...`; the probe table prints whole."""
    rng = np.random.default_rng(0)
    metrics = ["accuracy", "f1", "roc_auc", "balanced_accuracy", "matthews", "log_loss"]
    frame = pd.DataFrame([{"model": "a-model-with-a-long-name", "pooling": "mean", "layer": l,
                           "part": f"part_{p}", "metric": m, "fold": f, "score": rng.uniform()}
                          for l in range(40) for p in range(2) for m in metrics for f in range(2)])
    table = ProbeResults(frame).table()
    assert len(table) == 80
    with pd.option_context("display.width", 80):
        text, html = repr(table), table._repr_html_()
    assert "..." not in text and "…" not in html and "..." not in html
    lines = text.splitlines()
    assert len(lines) == 81  # the header, then one line per probe
    for col in table.columns:
        assert col in lines[0]
    for (_, row), line in zip(table.iterrows(), lines[1:]):
        assert line.split()[1:] == " ".join(map(str, row)).split()


def test_report_shows_per_head_probes_as_a_layer_by_head_heatmap(tmp_path):
    """Twelve heads are twelve unreadable lines: the report adds the layer x head heatmap the
    command line draws, of the primary metric's mean per layer and head."""
    import base64

    from embetter_plug.layout import ActivationLayout
    from embetter_plug.probe.heads import head_tables

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    X = rng.normal(size=(60, 2, 12, 3))
    X[:, 1, 5, 0] += 2 * y
    layout = ActivationLayout(layers=(0, 1), parts=tuple(f"attn_result.h{h}" for h in range(12)),
                              hidden_size=3)
    res = probe_layers(X, y, cv=3, layout=layout, nested=False)
    (name, table), = head_tables(res).items()
    s = res.summary("roc_auc")
    s = s[s["part"] != "dummy"]
    expected = s.assign(head=s["part"].str.split(".h").str[1].astype(int)).pivot(
        index="layer", columns="head", values="mean")
    np.testing.assert_allclose(table.to_numpy(float), expected.to_numpy(float))
    assert table.to_numpy(float).argmax() == 12 + 5  # layer 1, head 5
    page = write_report(res, tmp_path / "r.html").read_text()
    m = re.search(r'<section id="heads"><h2>Per head: roc_auc per layer \(rows\) x head '
                  r'\(columns\)</h2><img alt="[^"]*" src="data:image/png;base64,([^"]+)">', page)
    assert m and base64.b64decode(m.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.index('id="heads"') < page.index('id="tablewrap"')
    plain = probe_layers(X[:, :, :2], y, cv=3, nested=False)  # no per-head parts: no section
    assert 'id="heads"' not in write_report(plain, tmp_path / "p.html").read_text()
