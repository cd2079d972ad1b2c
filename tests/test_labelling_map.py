"""LabellingMap in Python: projection, colours, estimators, the saved page, bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from map_chromium import read_page
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

pytest.importorskip("plotly")

from embetter_plug import FeedForwardTuner, LabellingMap  # noqa: E402


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = np.repeat(["spam", "ham", "eggs"], 20)
    X = rng.normal(size=(60, 6)) + 3 * (y[:, None] == np.array(["spam", "ham", "eggs", "x", "x", "x"]))
    texts = [f"text number {i}" for i in range(60)]
    return X, y, texts


def _rows(fig, name):
    (trace,) = [t for t in fig.data if t.name == name]
    return trace


def test_projection_equals_scikit_learn_pca(data, tmp_path):
    X, y, texts = data
    m = LabellingMap.from_embeddings(X, texts, y)
    ref = PCA(n_components=2, random_state=0).fit_transform(X)
    np.testing.assert_allclose(m.xy, ref, rtol=1e-5, atol=1e-5)
    assert m.projection_.explained_variance_ratio_[0] > m.projection_.explained_variance_ratio_[1]
    # the saved page carries the same coordinates, row by row
    figure, page = read_page(m.save(tmp_path / "m.html"))
    np.testing.assert_allclose(page["xy"], ref, rtol=1e-5, atol=1e-5)
    for trace in figure["data"]:
        rows = np.asarray(trace["customdata"], dtype=int)
        np.testing.assert_allclose(trace["x"], ref[rows, 0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(trace["y"], ref[rows, 1], rtol=1e-5, atol=1e-5)
    assert page["texts"] == texts and page["labels"] == list(y)


def test_other_projections(data):
    X, y, texts = data
    m = LabellingMap.from_embeddings(X, texts, y, projection="tsne", random_state=3)
    ref = TSNE(n_components=2, perplexity=min(30.0, 59 / 3), init="pca", random_state=3).fit_transform(X)
    np.testing.assert_allclose(m.xy, ref, rtol=1e-4, atol=1e-4)
    m2 = LabellingMap.from_embeddings(X, texts, projection=make_pipeline(StandardScaler(), PCA(2)))
    np.testing.assert_allclose(m2.xy, PCA(2).fit_transform(StandardScaler().fit_transform(X)),
                               rtol=1e-5, atol=1e-5)
    m3 = LabellingMap.from_embeddings(X[:, :2], texts, projection=None)
    np.testing.assert_allclose(m3.xy, X[:, :2], rtol=1e-6)
    # raw (n, layer, part, hidden) activations: each row read as one flat vector
    X4 = X.reshape(60, 1, 2, 3)
    np.testing.assert_allclose(LabellingMap.from_embeddings(X4, texts).xy,
                               PCA(2, random_state=0).fit_transform(X), rtol=1e-5, atol=1e-5)
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install umap-learn"):
            LabellingMap.from_embeddings(X, texts, projection="umap")


def test_colours_follow_labels_string_labels_and_unlabelled_rows(data):
    X, y, texts = data
    labels = y.astype(object)
    labels[::4] = None
    labels[1] = np.nan
    labels[2] = "  "
    m = LabellingMap.from_embeddings(X, texts, labels)
    fig = m.figure_
    assert [t.name for t in fig.data] == ["eggs", "ham", "spam", "unlabelled", "search matches"]
    assert len(fig.data[-1].customdata) == 0  # the page's search fills it
    missing = {0, 1, 2} | set(range(0, 60, 4))
    assert sorted(_rows(fig, "unlabelled").customdata) == sorted(missing)
    for name in ("eggs", "ham", "spam"):
        assert sorted(_rows(fig, name).customdata) == [i for i in range(60)
                                                       if i not in missing and y[i] == name]
    colours = [t.marker.color for t in fig.data[:-1]]
    assert len(set(colours)) == 4 and all(isinstance(c, str) for c in colours)
    assert m.color_modes_ == ["label"] and "updatemenus" not in fig.layout.to_plotly_json()
    # numbers as labels: ordered by value, named as text
    m2 = LabellingMap.from_embeddings(X, texts, np.tile([10, 2, 1], 20))
    assert [t.name for t in m2.figure_.data][:-1] == ["1", "2", "10"]
    # no labels at all: one grey trace
    (only, _) = LabellingMap.from_embeddings(X, texts).figure_.data
    assert only.name == "unlabelled" and len(only.customdata) == 60


def test_colours_follow_the_classifiers_probabilities(data):
    X, y, texts = data
    clf = LogisticRegression(max_iter=500).fit(X[::2], y[::2])
    proba = clf.predict_proba(X)
    m = LabellingMap.from_embeddings(X, texts, np.where(np.arange(60) % 2 == 0, y, None),
                                     proba=proba, classes=clf.classes_)
    fig = m.figure_
    assert m.color_modes_ == ["label", "prediction", "uncertainty"]
    assert [t.visible for t in fig.data if t.name == "uncertainty"] == [True]  # the default view
    pred = clf.classes_[proba.argmax(axis=1)]
    for c in clf.classes_:
        trace = _rows(fig, f"predicted {c}")
        assert sorted(trace.customdata) == np.flatnonzero(pred == c).tolist()
        assert trace.marker.color == _rows(fig, c).marker.color  # same colour as the label
    u = _rows(fig, "uncertainty")
    np.testing.assert_allclose(np.asarray(u.marker.color), 1 - proba.max(axis=1)[list(u.customdata)], atol=1e-6)
    assert (u.marker.cmin, u.marker.cmax) == (0, pytest.approx(2 / 3))
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["colour by label", "colour by prediction", "colour by uncertainty"]
    for b, mode in zip(buttons, ["label", "prediction", "uncertainty"]):
        groups = ["uncertainty" if t.name == "uncertainty" else "prediction"
                  if t.name.startswith("predicted") else "label" for t in fig.data[:-1]]
        assert b.args[0]["visible"] == [g == mode for g in groups] + [True]  # + search matches


def test_from_estimator_with_a_tuner_or_a_classifier(data):
    X, y, texts = data
    tuner = FeedForwardTuner(hidden_dim=8, n_epochs=5, random_state=0).fit(X, y)
    m = LabellingMap.from_estimator(make_pipeline(StandardScaler().fit(X), tuner), X, y, texts=texts)
    ref = PCA(2, random_state=0).fit_transform(tuner.transform(StandardScaler().fit(X).transform(X)))
    np.testing.assert_allclose(m.xy, ref, rtol=1e-4, atol=1e-4)
    assert m.color_modes_ == ["label"]
    pipe = make_pipeline(FeedForwardTuner(hidden_dim=8, n_epochs=5, random_state=0),
                         LogisticRegression(max_iter=500)).fit(X, y)
    m = LabellingMap.from_estimator(pipe, X, texts=texts)
    ref = PCA(2, random_state=0).fit_transform(pipe[:-1].transform(X))  # the tuned space
    np.testing.assert_allclose(m.xy, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(m.proba, pipe.predict_proba(X), atol=1e-6)
    assert list(m.classes) == list(pipe.classes_)
    # a bare classifier reads X itself; one without predict_proba colours by its predictions
    from sklearn.svm import LinearSVC

    svc = LinearSVC().fit(X, y)
    m = LabellingMap.from_estimator(svc, X, texts=texts)
    assert m.color_modes_ == ["label", "prediction"] and m.proba is None
    np.testing.assert_allclose(m.xy, PCA(2, random_state=0).fit_transform(X), rtol=1e-5, atol=1e-5)


def test_from_estimator_on_texts(texts):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import FunctionTransformer

    y = np.arange(len(texts)) % 2
    pipe = make_pipeline(TfidfVectorizer(), FunctionTransformer(lambda a: a.toarray()),
                         LogisticRegression()).fit(texts, y)
    m = LabellingMap.from_estimator(pipe, texts, y)
    assert list(m.texts) == texts
    np.testing.assert_allclose(m.proba, pipe.predict_proba(texts), atol=1e-6)
    with pytest.raises(TypeError, match="pass the texts to show with texts="):
        LabellingMap.from_estimator(pipe, np.zeros((3, 2)))
    # mismatched lengths are refused before the pipeline transforms anything
    calls = []
    spy = make_pipeline(FunctionTransformer(lambda a: calls.append(1) or a), LogisticRegression())
    spy.fit(np.eye(4), [0, 1, 0, 1])
    calls.clear()
    with pytest.raises(ValueError, match="X has 4 rows but texts has 3"):
        LabellingMap.from_estimator(spy, np.eye(4), texts=["a", "b", "c"])
    assert calls == []


class _Recorder:
    """A projection that records whether it was asked to work."""

    calls = 0

    def fit_transform(self, X):  # pragma: no cover - must not run in the error tests
        type(self).calls += 1
        return X[:, :2]

    def get_params(self, deep=True):
        return {}

    def set_params(self, **params):
        return self


@pytest.mark.parametrize("make, match", [
    (lambda X, t: (X[:-1], t), "X has 59 rows but texts has 60"),
    (lambda X, t: (X[:, 0], t), "X must be 2-D .* got a 1-D array of shape \\(60,\\)"),
    (lambda X, t: (np.where(np.arange(60)[:, None] == 7, np.nan, X), t),
     "NaN or infinite values in 1 row\\(s\\) at positions \\[7\\]"),
    (lambda X, t: (X, t + ["extra"]), "X has 60 rows but texts has 61"),
])
def test_bad_input_is_refused_before_any_work(data, make, match):
    X, y, texts = data
    Xb, tb = make(X, texts)
    _Recorder.calls = 0
    with pytest.raises(ValueError, match=match):
        LabellingMap.from_embeddings(Xb, tb, projection=_Recorder())
    assert _Recorder.calls == 0


def test_other_bad_arguments(data):
    X, y, texts = data
    with pytest.raises(ValueError, match="labels has 3 values but there are 60 texts"):
        LabellingMap.from_embeddings(X, texts, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"^The 'projection' parameter of LabellingMap.from_embeddings must be a str among "
                                         r"\{.*'pca'.*\}, an object implementing 'fit_transform' or None\. "
                                         r"Got 'svd' instead"):
        LabellingMap.from_embeddings(X, texts, projection="svd")
    with pytest.raises(ValueError, match="classes must name proba's 2 columns"):
        LabellingMap.from_embeddings(X, texts, proba=np.full((60, 2), 0.5))
    with pytest.raises(ValueError, match="color_by='prediction' needs a classifier's output"):
        LabellingMap.from_embeddings(X, texts, color_by="prediction")
    with pytest.raises(ValueError, match=r"'projection' parameter of LabellingMap.from_estimator must be a "
                                         r"str among \{.*'tsne'.*\}.* Got 'svd'"):  # before transform
        LabellingMap.from_estimator(LogisticRegression().fit(X, y), X, texts=texts, projection="svd")
    with pytest.raises(TypeError, match="texts must contain only strings"):
        LabellingMap.from_embeddings(X, [1] * 60)
    with pytest.raises(ValueError, match=r"'render_mode' parameter of LabellingMap.from_embeddings must be a str "
                                         r"among \{.*'webgl'.*\}\. Got 'canvas' instead"):
        LabellingMap.from_embeddings(X, texts, render_mode="canvas")


def test_save_refuses_a_missing_folder_before_rendering(data, tmp_path, monkeypatch):
    X, y, texts = data
    m = LabellingMap.from_embeddings(X, texts, y)
    monkeypatch.setattr(LabellingMap, "to_html", lambda self: pytest.fail("rendered"))
    with pytest.raises(FileNotFoundError, match="does not exist; create .*nowhere"):
        m.save(tmp_path / "nowhere" / "map.html")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        m.save(tmp_path)


def test_missing_plotly_gives_the_install_line(data, monkeypatch):
    X, y, texts = data
    monkeypatch.setitem(sys.modules, "plotly", None)
    with pytest.raises(ImportError, match=r"pip install 'embetter_plug\[map\]'"):
        LabellingMap.from_embeddings(X, texts, y)


def test_page_is_self_contained_and_escapes_texts(data, tmp_path):
    X, y, texts = data
    texts = list(texts)
    texts[3] = "</script><script>alert(1)</script> & <!-- x"
    path = LabellingMap.from_embeddings(X, texts, y).save(tmp_path / "m.html")
    page = path.read_text(encoding="utf-8")
    assert "<script src" not in page and "<link" not in page
    assert page.count("</script>") == 5  # plotly.js, figure, data, options, glue
    assert "alert(1)" in page and "<script>alert" not in page
    figure, data_ = read_page(path)
    assert data_["texts"][3] == texts[3]
    assert all("text" not in t for t in figure["data"])  # each text is stored once, in the data
    html = LabellingMap.from_embeddings(X, texts, y)._repr_html_()
    assert html.startswith("<iframe srcdoc=") and "&lt;/script&gt;" in html


def test_the_colour_menu_leaves_the_title_free(data):
    """The title sits at the top left, the colour drop-down at the top right, both above the plot
    (the drop-down used to sit at the top left, over the title)."""
    X, y, texts = data
    proba = np.tile([0.2, 0.3, 0.5], (60, 1))
    m = LabellingMap.from_embeddings(X, texts, y, proba=proba, classes=["eggs", "ham", "spam"],
                                     title="A long title for the labelling map of these rows")
    layout = m.figure_.layout
    assert len(m.color_modes_) > 1 and len(layout.updatemenus) == 1
    menu, title = layout.updatemenus[0], layout.title
    template_x = layout.template.layout.title.x
    title_x = title.x if title.x is not None else (template_x if template_x is not None else 0.5)
    title_anchor = title.xanchor if title.xanchor not in (None, "auto") else "left"
    # in paper coordinates the title covers [title_x, ...) and the menu (..., menu.x]
    assert (title_x, title_anchor, title.xref) == (0, "left", "paper")
    assert (menu.x, menu.xanchor) == (1, "right") and menu.y >= 1 and menu.yanchor == "bottom"
    assert layout.margin.t >= 60
