"""ProbeResults: the tidy table of probe scores, with summaries, the best probe and file I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._utils import logger, warn_user
from .metrics import greater_is_better, primary_metric, ranking_metrics
from ._table import ANY, DUMMY  # noqa: F401  (ANY: part of this module's names)
from .stats import SELECTED, is_special

__all__ = ["ProbeResults", "DUMMY"]

COLUMNS = ("layer", "part", "metric", "fold", "score")


#: start of the warning given when the best probe does not beat the dummy baseline
NO_BETTER = "no probe beats the dummy baseline"


def no_better_than_dummy(best: dict) -> str:
    """The warning for a best probe (a :meth:`ProbeResults.best` row) that ties or trails the dummy."""
    return (f"{NO_BETTER} on {best['metric']}: the best, layer "
            f"{best['layer']} {best['part']}, scores {best['mean']:.3f} against the dummy's "
            f"{best['dummy']:.3f}. The activations may not carry the labels, or the probe needs "
            "more rows or weaker regularisation.")


class ProbeResults:
    """Cross-validated probe scores in one tidy frame.

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``layer, part, metric, fold, score``, one row per probe, metric and fold. The
        dummy baseline has ``part="dummy"`` and a missing layer. Extra columns (e.g. ``dataset``,
        ``model``, ``pooling``) describe where the scores come from; summaries group by them.
    task : {"classification", "regression"} or None
        Recorded for reference; ``None`` when unknown.

    Attributes
    ----------
    frame_ : pandas.DataFrame
        The tidy scores (losses such as ``log_loss`` and ``mse`` as positive numbers).
    best_ : tuple of (int, str)
        ``(layer, part)`` of the best probe: see :meth:`best`.

    Notes
    -----
    Besides the plain scores, the frame can hold what the analyses of ``probe_layers`` computed,
    under prefixed metric names (``inner:``, ``perm:``, ``control:``, ``mdl:``; see
    ``embetter_plug.probe.stats``); :attr:`metrics` leaves them out, and
    :meth:`selection_free`, :meth:`statistics`, :meth:`compare` and :meth:`verdict` read them.

    Examples
    --------
    >>> import pandas as pd
    >>> from embetter_plug import ProbeResults
    >>> frame = pd.DataFrame({"layer": [0, 0, 1, 1], "part": ["resid_post"] * 4,
    ...                       "metric": ["accuracy"] * 4, "fold": [0, 1, 0, 1],
    ...                       "score": [0.6, 0.7, 0.9, 0.8]})
    >>> ProbeResults(frame).best_
    (1, 'resid_post')
    """

    def __init__(self, frame, *, task: str | None = None):
        import pandas as pd

        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(
                f"a results frame needs the columns {list(COLUMNS)}; {missing} are missing "
                f"(got {list(frame.columns)})."
            )
        frame = frame.reset_index(drop=True).copy()
        frame["layer"] = pd.to_numeric(frame["layer"]).astype("Int64")
        frame["fold"] = pd.to_numeric(frame["fold"]).astype(int)
        frame["score"] = pd.to_numeric(frame["score"]).astype(float)
        for col in ("part", "metric", *self._context_of(frame)):
            frame[col] = frame[col].astype(str)
        self.frame_ = frame
        self.task = task

    # ---------------------------------------------------------------- views
    @staticmethod
    def _context_of(frame) -> list[str]:
        return [c for c in frame.columns if c not in COLUMNS]

    @property
    def context(self) -> list[str]:
        """Extra columns that say where the scores come from (e.g. ``model``, ``pooling``)."""
        return self._context_of(self.frame_)

    @property
    def metrics(self) -> list[str]:
        """Metric names in the order they appear (not the analyses' ``inner:``, ``perm:``,
        ``control:`` and ``mdl:`` rows)."""
        return [m for m in dict.fromkeys(self.frame_["metric"]) if not is_special(m)]

    @property
    def primary_metric(self) -> str:
        return primary_metric(self.metrics)

    def summary(self, metric: str | list[str] | None = None, *, confidence: float | None = None):
        """Mean and standard deviation over folds per (context, layer, part, metric).

        Returns a tidy frame with the context columns, then ``layer, part, metric, mean, std,
        n_folds``; dummy rows come first within each context. ``std`` is the sample standard
        deviation (``ddof=1``), as ``pandas`` computes it. With ``confidence`` (e.g. 0.95), also
        ``ci_low`` and ``ci_high``: the corrected resampled t interval of the mean over folds
        (``embetter_plug.probe.stats.corrected_interval``). ``metric=None`` is every metric
        (not the analyses' rows, which can be named explicitly).
        """
        from .stats import clip, corrected_interval

        frame = self.frame_
        wanted = self.metrics if metric is None else [metric] if isinstance(metric, str) else list(metric)
        self._check_metrics(wanted)
        frame = frame[frame["metric"].isin(wanted)]
        keys = [*self.context, "layer", "part", "metric"]
        grouped = frame.groupby(keys, sort=False, dropna=False)["score"]
        out = grouped.agg(mean="mean", std="std", n_folds="count").reset_index()
        out["std"] = out["std"].fillna(0.0)
        if confidence is not None:
            ci = [clip(m, *corrected_interval(v.to_numpy(), confidence)[1:])
                  for (*_, m), v in grouped]
            out["ci_low"] = [c[0] for c in ci]
            out["ci_high"] = [c[1] for c in ci]
        return out

    def _check_metrics(self, wanted) -> None:
        present = list(dict.fromkeys(self.frame_["metric"]))
        unknown = [m for m in wanted if m not in present]
        if unknown:
            raise ValueError(f"metric(s) {unknown} are not in the results; available: {self.metrics}.")

    def best(self, metric: str | None = None) -> dict[str, Any]:
        """The best probe (not the dummy): its context, layer, part, and ``metric``'s mean and std.

        Probes are ranked by ``metric`` (default: the primary metric, ROC-AUC for labels when
        scored, else macro-F1, ...; R² for numbers), ties broken by the next metrics in that
        order (see ``embetter_plug.probe.metrics.RANKING``), then by row order. The row also
        holds ``metric``, ``dummy`` (the dummy baseline's mean on that metric, NaN without one)
        and ``beats_dummy`` (whether the best probe is better than that baseline).
        """
        import pandas as pd

        order = ranking_metrics(self.metrics)
        if metric is not None:
            self._check_metrics([metric])
            order = [metric, *(m for m in order if m != metric)]
        keys = [*self.context, "layer", "part"]
        s = self.summary(order)
        dummies, s = s[s["part"] == DUMMY], s[s["part"] != DUMMY]
        if s.empty:
            raise ValueError("the results hold no probe rows besides the dummy baseline.")
        rows = s[keys].drop_duplicates()
        wide = s.set_index([*keys, "metric"])["mean"].unstack("metric")
        wide = wide.reindex(pd.MultiIndex.from_frame(rows))
        # np.lexsort is stable and sorts by its last key first; NaN (unscored) ranks last
        sort_keys = []
        for m in reversed(order):
            v = wide[m].to_numpy(dtype=float).round(12)
            sort_keys.append(np.where(np.isnan(v), np.inf, -v if greater_is_better(m) else v))
        top = rows.iloc[np.lexsort(sort_keys)[0]].to_dict()
        first = s[s["metric"] == order[0]]
        hit = np.ones(len(first), dtype=bool)
        for k in keys:
            hit &= first[k].astype(str).to_numpy() == str(top[k])
        row = first[hit].iloc[0].to_dict()
        row["layer"] = int(row["layer"])
        row["dummy"] = self._dummy_mean(dummies[dummies["metric"] == order[0]], row)
        better = row["mean"] > row["dummy"] if greater_is_better(order[0]) else row["mean"] < row["dummy"]
        row["beats_dummy"] = bool(better) if not np.isnan(row["dummy"]) else True
        return row

    def _dummy_mean(self, dummies, row) -> float:
        """The mean of the dummy rows serving ``row``'s context (NaN when there are none)."""
        hit = np.ones(len(dummies), dtype=bool)
        for c in self.context:
            values = dummies[c].astype(str).to_numpy()
            hit &= (values == str(row[c])) | (values == ANY)
        return float(dummies["mean"].to_numpy()[hit][0]) if hit.any() else float("nan")

    # ------------------------------------------------------------ statistics
    def selection_free(self, metric: str | None = None, *,
                       confidence: float = 0.95) -> dict[str, Any] | None:
        """The best probe's score estimated on rows that did not choose it (nested CV).

        For every fold, the probe with the best inner cross-validated primary metric on the
        other rows alone is scored on that fold (``probe_layers(nested=True)``, the default,
        stores what it needs). Selection runs over every probe in the results, across context
        columns too (as :meth:`best` does). Returns ``metric``, ``mean``, ``std``, ``low`` and
        ``high`` (the corrected t interval at ``confidence``), ``scores`` and ``chosen`` per
        fold, ``dummy`` (the baseline's mean, NaN without one) and ``beats_dummy`` (the interval
        lies above it); None when the results hold no inner scores.
        """
        from .stats import selection_free

        metric = metric or self.primary_metric
        self._check_metrics([metric])
        out = selection_free(self.frame_[self.frame_["part"] != DUMMY], self.context, metric,
                             self.primary_metric, confidence)
        if out is None:
            return None
        dummies = self.summary(metric)
        dummies = dummies[dummies["part"] == DUMMY]
        out["dummy"] = self._dummy_mean(dummies, out["chosen"][0])
        above = out["low"] > out["dummy"] if greater_is_better(metric) else out["high"] < out["dummy"]
        out["beats_dummy"] = bool(above) if not np.isnan(out["dummy"]) else True
        return out

    def statistics(self, metric: str | None = None, *, alpha: float = 0.05,
                   correction: str = "holm", confidence: float = 0.95):
        """Per probe: ``mean``, ``ci_low``, ``ci_high`` of ``metric`` (default: the primary one),
        and what ``probe_layers`` computed: ``p_value`` (permutation) with ``p_holm`` (or
        ``p_bonferroni``) corrected over all probes tested and ``significant`` (below
        ``alpha``); ``control`` and ``selectivity`` (task minus control score); ``mdl_bits``,
        ``uniform_bits`` and ``compression`` (uniform over online codelength)."""
        from .stats import slice_statistics

        metric = metric or self.primary_metric
        self._check_metrics([metric])
        return slice_statistics(self, metric, alpha=alpha, correction=correction,
                                confidence=confidence)

    def compare(self, a: dict | tuple, b: dict | tuple, metric: str | None = None, *,
                confidence: float = 0.95) -> dict[str, float]:
        """Is probe ``a`` better than probe ``b``? The paired fold-wise difference ``a - b``
        of ``metric``, its corrected resampled t interval and two-sided p-value (Nadeau &
        Bengio, 2003). A probe is ``(layer, part)`` or a dict that also names its context."""
        from .stats import corrected_ttest

        metric = metric or self.primary_metric
        self._check_metrics([metric])
        return corrected_ttest(self._folds(a, metric), self._folds(b, metric), confidence)

    def _folds(self, probe, metric: str) -> np.ndarray:
        want = dict(probe) if isinstance(probe, dict) else dict(zip(("layer", "part"), probe))
        f = self.frame_[self.frame_["metric"] == metric]
        hit = np.ones(len(f), dtype=bool)
        for k, v in want.items():
            if k not in f.columns:
                raise ValueError(f"{k!r} is not a column of the results; they have {list(f.columns)}.")
            hit &= f[k].astype(str).to_numpy() == str(v)
        g = f[hit]
        if g.empty or g[[*self.context, "layer", "part"]].astype(str).drop_duplicates().shape[0] != 1:
            raise ValueError(f"{probe!r} does not name exactly one probe with {metric!r} scores; "
                             "give (layer, part), or a dict with the context columns too.")
        return g.sort_values("fold")["score"].to_numpy(float)

    def near_best(self, metric: str | None = None, *, alpha: float = 0.05):
        """The probes that cannot be told apart from the best: every probe's paired fold-wise
        difference to :meth:`best` (as :meth:`compare`), with ``diff``, ``p_value`` and
        ``near_best`` (not significant at ``alpha``; the best itself included)."""
        from .stats import near_best

        metric = metric or self.primary_metric
        self._check_metrics([metric])
        return near_best(self.frame_, self.context, metric, self.best(metric), alpha=alpha)

    def verdict(self, *, alpha: float = 0.05, correction: str = "holm") -> dict[str, Any]:
        """Does any probe beat chance? ``beats_chance``, ``basis`` and ``message``.

        The basis is the strongest test the results allow: permutation p-values corrected for
        the number of probes when present; else the selection-free estimate's interval against
        the dummy baseline; else the best probe's (selected, optimistic) mean against it.
        """
        metric = self.primary_metric
        stats = self.statistics(metric, alpha=alpha, correction=correction)
        if "p_value" in stats.columns:
            p = stats[f"p_{correction}"]
            n_perm, n = int(stats["n_permutations"].max()), int(p.notna().sum())
            ok = bool((p < alpha).any())
            floor = min(1.0, n / (n_perm + 1))
            hint = (f" With {n_perm} permutations no p-value can go below {floor:.3f} after "
                    f"correction; use at least {int(np.ceil(n / alpha))}."
                    if floor >= alpha and n else "")
            if p.isna().any():
                hint += (f" {int(p.isna().sum())} probe(s) have no p-value: {metric} is undefined "
                         "(NaN) on a fold of theirs, so they are not counted as significant.")
            return {"beats_chance": ok, "basis": "permutation", "message": (
                f"{NO_BETTER} on {metric}: no probe's permutation p-value is below {alpha} after "
                f"{correction.capitalize()} correction over {n} probes (smallest "
                f"{p.min():.3f}).{hint}")}
        sf = self.selection_free(metric)
        if sf is not None and not np.isnan(sf["dummy"]):
            return {"beats_chance": sf["beats_dummy"], "basis": "selection-free", "message": (
                f"{NO_BETTER} on {metric}: the selection-free estimate of the best probe (nested "
                f"CV) is {sf['mean']:.3f} [{sf['confidence']:.0%} CI {sf['low']:.3f}, "
                f"{sf['high']:.3f}] against the dummy's {sf['dummy']:.3f}. The activations may "
                "not carry the labels, or the probe needs more rows or weaker regularisation"
                + (f"; with {sf['n_folds']} folds the interval is wide: use cv=5 or more."
                   if sf["n_folds"] < 5 else "."))}
        row = self.best()
        return {"beats_chance": row["beats_dummy"], "basis": "best", "message": no_better_than_dummy(row)}

    @property
    def best_(self) -> tuple[int, str]:
        row = self.best()
        return row["layer"], row["part"]

    def table(self, metrics: list[str] | None = None, *, digits: int = 3, mark_best: bool = True):
        """A wide table of ``mean ± std`` strings per (context, layer, part), best marked ``*``
        and the probes within noise of it ``~`` (see :meth:`near_best`).

        A DataFrame that prints whole (every row and column, not cut to ``...``)."""
        import pandas as pd

        metrics = list(metrics) if metrics is not None else self.metrics
        self._check_metrics(metrics)
        s = self.summary(metrics)
        s["cell"] = [f"{m:.{digits}f} ± {d:.{digits}f}" for m, d in zip(s["mean"], s["std"])]
        keys = [*self.context, "layer", "part"]
        cells: dict[tuple, dict[str, str]] = {}
        for *key, metric, cell in zip(*(s[c] for c in [*keys, "metric", "cell"])):
            cells.setdefault(tuple(key), {})[metric] = cell
        wide = pd.DataFrame([{**dict(zip(keys, k)), **v} for k, v in cells.items()],
                            columns=[*keys, *metrics])
        wide["layer"] = [("-" if pd.isna(v) else str(int(v))) for v in wide["layer"]]
        if self.context:  # group rows by context, in order of first appearance
            ranks = {c: wide[c].map({v: i for i, v in enumerate(dict.fromkeys(wide[c]))})
                     for c in self.context}
            order = pd.DataFrame(ranks).sort_values(self.context, kind="stable").index
            wide = wide.loc[order].reset_index(drop=True)
        if mark_best:  # * the best; ~ within noise of it (a paired comparison over the folds)
            best, near = self.best(), self.near_best()
            near = set(map(tuple, near.loc[near["near_best"], keys].astype(str).to_numpy()))
            is_best = np.ones(len(wide), dtype=bool)
            for k in keys:
                is_best &= wide[k].astype(str).to_numpy() == str(best[k])
            is_near = [tuple(r) in near for r in wide[keys].astype(str).to_numpy()]
            wide.insert(len(keys), "best", np.where(is_best, "*", np.where(is_near, "~", "")))
        from ._table import ProbeTable

        return ProbeTable(self._with_statistics(pd.DataFrame(wide), metrics, keys, digits))

    def _with_statistics(self, wide, metrics, keys, digits: int):
        """The table's analysis columns (selectivity, corrected p, compression, where computed)
        and its selection-free row (after the dummy rows)."""
        import pandas as pd

        stats = self.statistics()
        columns = {"selectivity": "selectivity", "p_holm": "p (holm)", "compression": "compression"}
        if not stats.empty:
            stats = stats.assign(layer=[str(int(v)) for v in stats["layer"]])
            index = pd.MultiIndex.from_frame(wide[keys].astype(str))
            lookup = stats.astype({k: str for k in keys}).set_index(keys)
            for col, label in columns.items():
                if col in lookup.columns:
                    values = lookup[col].reindex(index).to_numpy(dtype=float)
                    fmt = "{:.3g}" if col.startswith("p_") else f"{{:.{digits}f}}"
                    wide[label] = ["" if np.isnan(v) else fmt.format(v) for v in values]
        sf = {m: self.selection_free(m) for m in metrics}
        if any(v is None for v in sf.values()):
            return wide
        row = {**dict.fromkeys(wide.columns, ""), **dict.fromkeys(keys, ANY), "part": SELECTED}
        for c in self.context:  # a context shared by every probe is the selection's too
            values = set(wide.loc[wide["part"] != DUMMY, c])
            row[c] = values.pop() if len(values) == 1 else ANY
        row.update({m: f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" for m, v in sf.items()})
        dummies = (wide["part"] == DUMMY).to_numpy().nonzero()[0]
        at = int(dummies[0]) + 1 if len(dummies) else 0
        top = pd.DataFrame([row], columns=wide.columns)
        return pd.concat([wide.iloc[:at], top, wide.iloc[at:]], ignore_index=True)

    # ------------------------------------------------------------ combining
    def with_context(self, **columns: Any) -> "ProbeResults":
        """A copy with constant context columns added, e.g. ``model="gpt2"``."""
        frame = self.frame_.copy()
        for k, v in columns.items():
            if k in COLUMNS:
                raise ValueError(f"{k!r} is a core column; pick another context name.")
            frame.insert(0, k, str(v))
        return ProbeResults(frame, task=self.task)

    @classmethod
    def concat(cls, results: list["ProbeResults"]) -> "ProbeResults":
        """Stack several results (e.g. one per model) into one."""
        import pandas as pd

        if not results:
            raise ValueError("nothing to concatenate: give at least one ProbeResults.")
        tasks = {r.task for r in results}
        return cls(pd.concat([r.frame_ for r in results], ignore_index=True),
                   task=tasks.pop() if len(tasks) == 1 else None)

    # ----------------------------------------------------------------- I/O
    def to_csv(self, path, **kwargs) -> None:
        """Write the tidy frame as CSV (dummy rows have an empty layer)."""
        self.frame_.to_csv(path, index=False, **kwargs)

    def to_parquet(self, path, **kwargs) -> None:
        """Write the tidy frame as Parquet (needs ``pyarrow``)."""
        self.frame_.to_parquet(path, index=False, **kwargs)

    @classmethod
    def read(cls, path) -> "ProbeResults":
        """Read a results file written by ``to_csv`` or ``to_parquet`` (chosen by suffix)."""
        import pandas as pd

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"results file {str(path)!r} does not exist.")
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, keep_default_na=False, na_values={"layer": [""]})
        return cls(frame)

    # ------------------------------------------------------------- pictures
    def plot(self, metric: str | None = None, *, ax=None, **kwargs):
        """Shortcut for ``LayerMetricDisplay.from_results(self, metric, ax=ax)``."""
        from .display import LayerMetricDisplay

        return LayerMetricDisplay.from_results(self, metric, ax=ax, **kwargs)

    def to_html(self, path, *, title: str | None = None, patterns=None,
                image_attention=None) -> Path:
        """Write the interactive, self-contained HTML report (with ``patterns``, one text's
        attention patterns too; with ``image_attention``, where on a picture a text looks);
        see ``write_report``."""
        from ._report_page import write_single

        return write_single(self, path, title=title, patterns=patterns,
                            image_attention=image_attention)

    def __repr__(self) -> str:
        n = self.frame_.loc[self.frame_["part"] != DUMMY, [*self.context, "layer", "part"]].drop_duplicates()
        return (f"ProbeResults({len(n)} probes, metrics={self.metrics}, "
                f"context={self.context}, rows={len(self.frame_)})")


def warn_if_dummy_wins(results: ProbeResults) -> None:
    """Log and warn (``UserWarning``) when no probe of ``results`` beats chance (see
    :meth:`ProbeResults.verdict`)."""
    verdict = results.verdict()
    if not verdict["beats_chance"]:
        logger.info(verdict["message"])  # a warning too; logging it at WARNING prints it twice
        warn_user(verdict["message"], UserWarning)
