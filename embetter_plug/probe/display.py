"""LayerMetricDisplay: a probe metric against layer, one line per part, in scikit-learn's style."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .metrics import metric_range
from ._overlay import draw_statistics
from ._table import ANY, DUMMY

if TYPE_CHECKING:  # pragma: no cover
    from .results import ProbeResults

__all__ = ["LayerMetricDisplay"]


def thinned_ticks(layers, ax, min_gap_inch: float = 0.35) -> np.ndarray:
    """The layers to label: as many as fit at least ``min_gap_inch`` apart on ``ax`` (30 layers
    on a narrow panel would overlap), from the first one on.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from embetter_plug.probe.display import thinned_ticks
    >>> fig, ax = plt.subplots(figsize=(4, 3))
    >>> thinned_ticks(range(30), ax).tolist()
    [0, 4, 8, 12, 16, 20, 24, 28]
    """
    layers = np.asarray(sorted(layers))
    if len(layers) < 2:
        return layers
    inches = ax.get_position().width * ax.figure.get_figwidth()
    gap = (layers[-1] - layers[0]) * min_gap_inch / inches  # in layers
    kept = [layers[0]]
    for layer in layers[1:]:
        if layer - kept[-1] >= gap:
            kept.append(layer)
    return np.asarray(kept)


class LayerMetricDisplay:
    """Plot a probe metric against layer: one line per part with a ±std band, and the baseline.

    Build it with :meth:`from_results`; :meth:`plot` draws on a matplotlib axes.

    Parameters
    ----------
    summary : pandas.DataFrame
        Rows of ``ProbeResults.summary(metric)`` for one metric (probe rows and dummy rows).
    metric : str
        The metric's name, used for the y label.
    series : list of str, default=None
        Columns that name a line; default: the context columns that vary, then ``part``.

    Attributes
    ----------
    lines_ : dict of str -> matplotlib Line2D
        One mean line per series.
    bands_ : dict of str -> matplotlib PolyCollection
        The ±std band of each series.
    baselines_ : dict of str -> matplotlib Line2D
        The dummy baseline of each context (a dashed horizontal line).
    ax_, figure_ : the matplotlib axes and figure drawn on.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from embetter_plug import probe_layers, LayerMetricDisplay
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20)
    >>> X = rng.normal(size=(40, 3, 2, 4)) + y[:, None, None, None]
    >>> disp = LayerMetricDisplay.from_results(probe_layers(X, y, cv=2), metric="accuracy")
    >>> sorted(disp.lines_)
    ['part0', 'part1']
    """

    def __init__(self, summary, metric: str, *, series: list[str] | None = None):
        self.summary = summary
        self.metric = metric
        self.series = series

    @classmethod
    def from_results(cls, results: ProbeResults, metric: str | None = None, *,
                     parts: list[str] | None = None, where: dict[str, Any] | None = None,
                     ax=None, std: bool = True, baseline: bool = True,
                     statistics: bool = True) -> "LayerMetricDisplay":
        """Plot ``metric`` (default: the primary metric) from a ``ProbeResults``.

        ``parts`` keeps only those parts; ``where`` filters context columns, e.g.
        ``{"model": "gpt2", "pooling": "mean"}``. ``statistics`` adds what ``probe_layers``
        computed beyond the plain scores: the selection-free estimate of the best probe (a black
        line, its interval shaded; attribute ``selection_``) and each part's control-task score
        (dotted, in the part's colour; ``controls_``).
        """
        metric = metric or results.primary_metric
        s = results.summary(metric)
        dummy = s["part"] == DUMMY
        for col, value in (where or {}).items():
            if col not in s.columns:
                raise ValueError(f"where: {col!r} is not a column; the results have {results.context}.")
            values = [value] if isinstance(value, str) else list(value)
            # dummy rows marked ANY (e.g. pooling "-") serve every value of that column
            s = s[s[col].isin([str(v) for v in values]) | (dummy & (s[col] == ANY))]
            dummy = s["part"] == DUMMY
        if parts is not None:
            missing = sorted(set(parts) - set(s["part"]))
            if missing:
                raise ValueError(f"parts {missing} are not in the results; available: "
                                 f"{sorted(set(s['part']) - {DUMMY})}.")
            s = s[s["part"].isin([*parts, DUMMY])]
        if s.empty or dummy.all():
            raise ValueError(f"nothing to plot for metric={metric!r} with where={where!r}.")
        varying = [c for c in results.context if s.loc[~dummy, c].nunique() > 1]
        disp = cls(s, metric, series=[*varying, "part"]).plot(ax=ax, std=std, baseline=baseline)
        if statistics:
            draw_statistics(disp, results, metric)
        return disp

    def plot(self, ax=None, *, std: bool = True, baseline: bool = True) -> "LayerMetricDisplay":
        """Draw the lines (and bands, and baselines) on ``ax`` (a new figure when ``None``)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4.2))
        s = self.summary
        series = self.series or ["part"]
        probes, dummies = s[s["part"] != DUMMY], s[s["part"] == DUMMY]
        self.lines_, self.bands_, self.baselines_ = {}, {}, {}
        for key, g in probes.groupby(series, sort=False):
            key = key if isinstance(key, tuple) else (key,)
            label = " | ".join(map(str, key))
            g = g.sort_values("layer")
            x = g["layer"].astype(int).to_numpy()
            m, d = g["mean"].to_numpy(float), g["std"].to_numpy(float)
            (line,) = ax.plot(x, m, marker="o", label=label)
            self.lines_[label] = line
            if std:  # a band never reaches beyond the metric's range (e.g. accuracy 1.0)
                low, high = metric_range(self.metric)
                self.bands_[label] = ax.fill_between(x, np.clip(m - d, low, high),
                                                     np.clip(m + d, low, high),
                                                     color=line.get_color(), alpha=0.2,
                                                     linewidth=0)
        if baseline and not dummies.empty:
            context = [c for c in series if c != "part" and dummies[c].nunique() > 1]
            groups = dummies.groupby(context, sort=False) if context else [((), dummies)]
            for key, g in groups:
                key = key if isinstance(key, tuple) else (key,)
                label = " | ".join([*map(str, key), "dummy baseline"])
                self.baselines_[label] = ax.axhline(float(g["mean"].iloc[0]), color="0.4",
                                                    linestyle="--", linewidth=1, label=label)
        layers = np.unique(probes["layer"].astype(int)) if not probes.empty else []
        ax.set_xticks(thinned_ticks(layers, ax))
        ax.set_xlabel("layer")
        ax.set_ylabel(self.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        self.ax_, self.figure_ = ax, ax.figure
        return self
