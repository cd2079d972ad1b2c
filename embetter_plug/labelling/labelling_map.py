"""LabellingMap: texts as points of a 2-D map of their embedding, to select and label in bulk."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._constraints import HasMethods, StrOptions, validate_params, validate_values
from ._inputs import PROJECTIONS, check_classifier_output, check_embedding, check_labels, project
from .page import iframe_html, page_html, require_plotly
from .._pages import check_writable, plotly_text, write_page
from .._utils import check_texts

__all__ = ["LabellingMap"]

COLOR_MODES = ("label", "prediction", "uncertainty")
RENDER_MODES = ("auto", "webgl", "svg")
# what from_embeddings (and from_estimator, passing them on) accept
_MAP_CONSTRAINTS = {
    "projection": [StrOptions(set(PROJECTIONS)), HasMethods(["fit_transform"]), None],
    "random_state": ["random_state"], "color_by": [StrOptions(set(COLOR_MODES)), None],
    "render_mode": [StrOptions(set(RENDER_MODES))], "title": [None, str],
}
WEBGL_FROM = 1000  # "auto" draws with WebGL from this many points on
UNLABELLED = "unlabelled"
UNLABELLED_COLOR = "#b3b3b3"
SEARCH_TRACE = "search matches"


class LabellingMap:
    """A map of texts for bulk labelling: each text a point of a 2-D projection of its embedding.

    The page (:meth:`save`, or inline in a notebook) works offline from one HTML file: hover
    shows a point's text and label; colour by label, by a classifier's prediction or by its
    uncertainty (``1 - max probability``: the region of doubt); a search box highlights the
    texts that contain a phrase; box or lasso selection (plotly's toolbar) picks rows, which
    download with a label you type as CSV or JSON (columns ``index``, ``text``, ``label``; the
    index is the row's position in ``texts``).

    Build it with :meth:`from_embeddings` or :meth:`from_estimator`; the constructor takes
    coordinates that are already 2-D. Needs plotly (``pip install 'embetter_plug[map]'``).

    Parameters
    ----------
    xy : array of shape (n, 2)
        The points' coordinates.
    texts : list of str
        One text per point.
    labels : array-like of length n, default=None
        Known labels; ``None``, NaN and empty strings mark unlabelled rows.
    proba : array of shape (n, n_classes), default=None
        A classifier's probabilities, for the prediction and uncertainty colourings.
    classes : array-like of length n_classes, default=None
        The classes of ``proba``'s columns (required with ``proba``).
    predictions : array-like of length n, default=None
        A classifier's predictions when it gives no probabilities (prediction colouring only).
    axis_titles : tuple of str, default=("1", "2")
        Titles of the two axes.

    Attributes
    ----------
    figure_ : plotly.graph_objects.Figure
        The figure the page draws: one trace per class and colouring (each point's ``customdata``
        is its row), and a last, empty trace where the page's search circles its matches; the
        page fills in the hover texts.
    color_modes_ : list of str
        The colourings offered: ``"label"``, and ``"prediction"``/``"uncertainty"`` when there
        is a classifier.
    projection_ : fitted estimator or None
        The projection fitted by ``from_embeddings`` (e.g. a ``PCA``); None otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import LabellingMap
    >>> X = np.random.default_rng(0).normal(size=(6, 5))
    >>> texts = ["good", "great", "fine", "bad", "awful", "meh"]
    >>> m = LabellingMap.from_embeddings(X, texts, labels=["pos", "pos", None, "neg", "neg", ""])
    >>> [t.name for t in m.figure_.data]
    ['neg', 'pos', 'unlabelled', 'search matches']
    >>> m.save("labelling_map.html").name
    'labelling_map.html'
    """

    def __init__(self, xy, texts: Sequence[str], *, labels=None, proba=None, classes=None,
                 predictions=None, axis_titles: tuple[str, str] = ("1", "2")):
        self.xy = xy
        self.texts = texts
        self.labels = labels
        self.proba = proba
        self.classes = classes
        self.predictions = predictions
        self.axis_titles = axis_titles

    # ------------------------------------------------------------------ builders
    @classmethod
    @validate_params(_MAP_CONSTRAINTS)
    def from_embeddings(cls, X, texts: Sequence[str], labels=None, *, proba=None, classes=None,
                        predictions=None, projection: Any = "pca", random_state: Any = 0,
                        color_by: str | None = None, render_mode: str = "auto",
                        title: str | None = None) -> "LabellingMap":
        """Project ``X`` (one row per text) to 2-D and draw the map.

        Parameters
        ----------
        X : array of shape (n, n_features)
            Any embedding: a ``LayerPooler`` output, a tuner's output, sentence embeddings. Rows
            of a higher-dimensional array (e.g. raw ``(n, layer, part, hidden)`` activations) are
            read as flat vectors, as the tuners read them.
        texts, labels, proba, classes, predictions
            As in the constructor.
        projection : {"pca", "tsne", "umap"}, estimator or None, default="pca"
            ``"pca"`` is scikit-learn's ``PCA(n_components=2)``; ``"tsne"`` its ``TSNE``;
            ``"umap"`` needs the ``umap-learn`` package. Any estimator with ``fit_transform``
            giving two columns works too. None uses ``X`` as it is (it must have two columns).
        random_state : int, RandomState or None, default=0
            Seed of the projection.
        color_by, render_mode, title
            As in :meth:`plot`.
        """
        require_plotly()
        texts = check_texts(texts, name="texts")
        X = check_embedding(X, len(texts))
        labels = check_labels(labels, len(texts), "labels")
        proba, classes, predictions = check_classifier_output(proba, classes, predictions, len(texts))
        _check_writable(texts, labels, title, classes, predictions)
        xy, fitted, titles = project(X, projection, random_state)
        disp = cls(xy, texts, labels=labels, proba=proba, classes=classes, predictions=predictions,
                   axis_titles=titles)
        disp.projection_ = fitted
        return disp.plot(color_by=color_by, render_mode=render_mode, title=title)

    @classmethod
    def from_estimator(cls, estimator, X, labels=None, *, texts: Sequence[str] | None = None,
                       **kwargs) -> "LabellingMap":
        """Draw the map of what a fitted estimator makes of ``X``.

        A ``Pipeline`` ending in a classifier is mapped in the space its last step reads (the
        output of the steps before it: e.g. a tuner's), coloured by the classifier's
        ``predict_proba`` (or ``predict``); a pipeline or estimator ending in a transformer (e.g.
        a tuner) is mapped in its ``transform`` output.

        Parameters
        ----------
        estimator : fitted estimator or Pipeline
        X : list of str or array-like
            The estimator's input: texts for a pipeline that starts with an encoder.
        labels : array-like, default=None
            Known labels (``None``/NaN/empty for unlabelled rows).
        texts : list of str, default=None
            The texts shown for the rows; default: ``X`` itself, which must then be texts.
        **kwargs
            Passed on to :meth:`from_embeddings` (``projection``, ``color_by``, ...).
        """
        from sklearn.base import is_classifier
        from sklearn.pipeline import Pipeline
        from sklearn.utils.validation import check_is_fitted

        require_plotly()
        validate_values(_MAP_CONSTRAINTS, {k: v for k, v in kwargs.items() if k in _MAP_CONSTRAINTS},
                        "LabellingMap.from_estimator")
        check_is_fitted(estimator)
        if texts is None:
            try:
                texts = check_texts(X, name="X")
            except (TypeError, ValueError) as exc:
                raise TypeError(f"X is not a list of texts ({exc}); pass the texts to show with "
                                "texts=.") from None
        texts = check_texts(texts, name="texts")
        if len(X) != len(texts):
            raise ValueError(f"X has {len(X)} rows but texts has {len(texts)}; give one text per row.")
        _check_writable(texts, check_labels(labels, len(texts), "labels"), kwargs.get("title"))
        head, last = (estimator[:-1], estimator[-1]) if isinstance(estimator, Pipeline) else (None, estimator)
        if not (hasattr(last, "predict_proba") or is_classifier(last) or hasattr(last, "transform")):
            raise TypeError(f"the last step ({type(last).__name__}) is neither a classifier nor a "
                            "transformer; end the pipeline with a classifier (predict_proba or "
                            "predict) or a transformer such as a tuner.")
        Z = head.transform(X) if head is not None and len(head.steps) else X
        if hasattr(last, "predict_proba") and hasattr(last, "classes_"):
            kwargs.update(proba=np.asarray(last.predict_proba(Z)), classes=last.classes_)
        elif is_classifier(last):
            kwargs.update(predictions=np.asarray(last.predict(Z)))
        else:
            Z = last.transform(Z)
        return cls.from_embeddings(np.asarray(Z), texts, labels, **kwargs)

    # ------------------------------------------------------------------ drawing
    @validate_params({k: _MAP_CONSTRAINTS[k] for k in ("color_by", "render_mode", "title")})
    def plot(self, *, color_by: str | None = None, render_mode: str = "auto",
             title: str | None = None, marker_size: float | None = None) -> "LabellingMap":
        """Build :attr:`figure_`.

        Parameters
        ----------
        color_by : {"label", "prediction", "uncertainty"}, default=None
            The colouring shown first (the page's dropdown switches); default: ``"uncertainty"``
            when there are probabilities, else ``"label"``.
        render_mode : {"auto", "webgl", "svg"}, default="auto"
            WebGL (plotly's ``scattergl``) draws many points at once (100,000 and more); SVG
            draws each point as a page element. ``"auto"`` uses WebGL from 1,000 points on.
        title : str, default=None
            The page's title.
        marker_size : float, default=None
            Point size; default: smaller as there are more points.
        """
        go = require_plotly().graph_objects
        xy = np.asarray(self.xy, dtype=np.float32)
        if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
            raise ValueError(f"xy must be finite coordinates of shape (n, 2), got shape {xy.shape}.")
        n = len(xy)
        texts = check_texts(self.texts, name="texts")
        if len(texts) != n:
            raise ValueError(f"xy has {n} rows but texts has {len(texts)}; give one text per row.")
        labels = check_labels(self.labels, n, "labels") or [None] * n
        proba, classes, predictions = check_classifier_output(self.proba, self.classes,
                                                               self.predictions, n)
        _check_writable(texts, labels, title, classes, predictions)
        modes = ["label"] + (["prediction"] if predictions is not None else []) + \
            (["uncertainty"] if proba is not None else [])
        color_by = color_by or ("uncertainty" if proba is not None else "label")
        if color_by not in modes:
            raise ValueError(f"color_by={color_by!r} needs a classifier's output; this map offers {modes}.")
        webgl = render_mode == "webgl" or (render_mode == "auto" and n >= WEBGL_FROM)
        Scatter = go.Scattergl if webgl else go.Scatter
        size = marker_size or float(np.clip(10 - 1.5 * np.log10(max(n, 1)), 3, 8))
        order = _class_order(labels, classes, predictions)
        colors = dict(zip(order, _palette(len(order))))
        traces, group = [], []

        def add(mode, rows, name, marker, **extra):  # a label is text, never plotly markup
            traces.append(Scatter(
                x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=plotly_text(name),
                customdata=rows.tolist(),
                hovertemplate="%{text}<extra></extra>", marker={"size": size, "opacity": 0.8, **marker},
                visible=mode == color_by, **extra))
            group.append(mode)

        lab = np.array([UNLABELLED if v is None else v for v in labels], dtype=object)
        for c in [*order, UNLABELLED]:
            rows = np.flatnonzero(lab == c)
            if len(rows):
                add("label", rows, c, {"color": colors.get(c, UNLABELLED_COLOR)})
        if predictions is not None:
            for c in order:
                rows = np.flatnonzero(predictions == c)
                if len(rows):
                    add("prediction", rows, f"predicted {c}", {"color": colors[c]})
        if proba is not None:
            doubt = 1 - proba.max(axis=1)
            add("uncertainty", np.arange(n), "uncertainty", {
                "color": doubt.astype(np.float32), "colorscale": "Plasma", "cmin": 0,
                "cmax": 1 - 1 / proba.shape[1], "showscale": True,
                "colorbar": {"title": {"text": "uncertainty<br>1 − max p"}}}, showlegend=False)
        # the page's search draws its matches here, on top, in every colouring
        traces.append(Scatter(x=[], y=[], mode="markers", name=SEARCH_TRACE, customdata=[], visible=True,
                              hovertemplate="%{text}<extra></extra>", showlegend=False,
                              marker={"size": 2 * size, "color": "rgba(0,0,0,0)",
                                      "line": {"width": 1.5, "color": "#111"}}))
        group.append(None)
        layout = {"dragmode": "select",
                  "hovermode": "closest", "legend": {"itemsizing": "constant"},
                  "xaxis": {"title": {"text": plotly_text(self.axis_titles[0])}, "zeroline": False},
                  "yaxis": {"title": {"text": plotly_text(self.axis_titles[1])}, "zeroline": False},
                  "margin": {"l": 50, "r": 20, "t": 60 if title else 40, "b": 40},
                  "template": "plotly_white"}
        if len(modes) > 1:  # top right, above the plot: the title keeps the top left
            layout["updatemenus"] = [{
                "type": "dropdown", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom",
                "active": modes.index(color_by), "buttons": [
                    {"label": f"colour by {m}", "method": "restyle",
                     "args": [{"visible": [g in (m, None) for g in group]}]} for m in modes]}]
        if title:
            layout["title"] = {"text": plotly_text(title), "x": 0, "xanchor": "left",
                               "xref": "paper"}
        fig = go.Figure(traces, layout)
        hover_text = _hover_texts(texts, labels, predictions, proba)
        for trace in fig.data:
            trace.text = [hover_text[i] for i in trace.customdata]
        self.figure_, self.color_modes_, self.title_ = fig, modes, title or "Labelling map"
        self._page_data = {
            "texts": texts, "labels": labels, "xy": base64.b64encode(xy.astype("<f4").tobytes()).decode(),
            "predictions": None if predictions is None else predictions.tolist(),
            "confidence": None if proba is None else [round(float(p), 4) for p in proba.max(axis=1)],
        }
        if not hasattr(self, "projection_"):
            self.projection_ = None
        return self

    # ------------------------------------------------------------------ output
    def to_html(self) -> str:
        """The self-contained page as a string."""
        self._check_plotted()
        return page_html(self.figure_, self._page_data, title=self.title_, search_trace=SEARCH_TRACE,
                         config={"displaylogo": False, "scrollZoom": True, "responsive": True})

    def save(self, path) -> Path:
        """Write the page to ``path`` (its folder must exist) and return the path."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"path {str(path)!r} is a folder; give a file name such as "
                                    f"{str(path / 'map.html')!r}.")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"the folder of {str(path)!r} does not exist; create "
                                    f"{str(path.parent)!r} first or choose another path.")
        return write_page(path, self.to_html(), what="the map")

    def _repr_html_(self) -> str:
        return iframe_html(self.to_html())

    def _check_plotted(self) -> None:
        if not hasattr(self, "figure_"):
            raise AttributeError("this map has no figure yet; call plot() first (from_embeddings "
                                 "and from_estimator do).")


# ---------------------------------------------------------------------- drawing helpers
def _class_order(labels, classes, predictions) -> list[str]:
    """Classes first in the classifier's order, then other labels sorted (numbers by value)."""
    seen = list(classes) if classes is not None else []
    rest = {v for v in (labels or []) if v is not None}
    if predictions is not None:
        rest |= set(predictions.tolist())
    rest -= set(seen)

    def key(v):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    return seen + sorted(rest, key=key)


def _palette(k: int) -> list[str]:
    from plotly.colors import qualitative as q

    colors = list(q.Plotly) + list(q.Alphabet)
    return [colors[i % len(colors)] for i in range(k)]


def _check_writable(texts, labels, title, classes=None, predictions=None) -> None:
    """Everything the page will hold must be text UTF-8 can write: checked before the
    projection (a lone surrogate would otherwise fail the write after all the work)."""
    check_writable(texts, "texts")
    check_writable(labels or [], "labels")
    if title is not None:
        check_writable(str(title), "title")
    for name, values in (("classes", classes), ("predictions", predictions)):
        if values is not None:
            check_writable([str(v) for v in values], name)


def _hover_texts(texts, labels, predictions, proba) -> list[str]:
    """Plain hover texts for the Python figure (the page builds wrapped, escaped ones)."""
    import html

    out = []
    for i, t in enumerate(texts):
        label = UNLABELLED if labels[i] is None else html.escape(labels[i])
        h = f"{html.escape(t[:400])}<br>label: {label}"
        if predictions is not None:
            h += f"<br>predicted: {html.escape(predictions[i])}"
            if proba is not None:
                h += f" ({proba[i].max():.2f})"
        out.append(h)
    return out
