"""ProbeResults: the tidy table of probe scores, with summaries, the best probe and file I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._utils import logger, warn_user
from ._metrics import greater_is_better, primary_metric, ranking_metrics

__all__ = ["ProbeResults", "DUMMY"]

COLUMNS = ("layer", "part", "metric", "fold", "score")
#: part name of the dummy-baseline rows (their layer is missing)
DUMMY = "dummy"
#: context value of a dummy row that serves every value of that column (e.g. every pooling)
ANY = "-"


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
        """Metric names in the order they appear."""
        return list(dict.fromkeys(self.frame_["metric"]))

    @property
    def primary_metric(self) -> str:
        return primary_metric(self.metrics)

    def summary(self, metric: str | list[str] | None = None):
        """Mean and standard deviation over folds per (context, layer, part, metric).

        Returns a tidy frame with the context columns, then ``layer, part, metric, mean, std,
        n_folds``; dummy rows come first within each context. ``std`` is the sample standard
        deviation (``ddof=1``), as ``pandas`` computes it.
        """
        frame = self.frame_
        if metric is not None:
            wanted = [metric] if isinstance(metric, str) else list(metric)
            self._check_metrics(wanted)
            frame = frame[frame["metric"].isin(wanted)]
        keys = [*self.context, "layer", "part", "metric"]
        out = (frame.groupby(keys, sort=False, dropna=False)["score"]
               .agg(mean="mean", std="std", n_folds="count").reset_index())
        out["std"] = out["std"].fillna(0.0)
        return out

    def _check_metrics(self, wanted) -> None:
        unknown = [m for m in wanted if m not in self.metrics]
        if unknown:
            raise ValueError(f"metric(s) {unknown} are not in the results; available: {self.metrics}.")

    def best(self, metric: str | None = None) -> dict[str, Any]:
        """The best probe (not the dummy): its context, layer, part, and ``metric``'s mean and std.

        Probes are ranked by ``metric`` (default: the primary metric, ROC-AUC for labels when
        scored, else macro-F1, ...; R² for numbers), ties broken by the next metrics in that
        order (see ``embetter_plug.probe._metrics.RANKING``), then by row order. The row also
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

    def _warn_if_dummy_wins(self) -> None:
        """Log and warn (``UserWarning``) when the best probe does not beat the dummy baseline."""
        row = self.best()
        if not row["beats_dummy"]:
            message = no_better_than_dummy(row)
            logger.info(message)  # as a warning too; logging it at WARNING would print it twice
            warn_user(message, UserWarning)

    @property
    def best_(self) -> tuple[int, str]:
        row = self.best()
        return row["layer"], row["part"]

    def table(self, metrics: list[str] | None = None, *, digits: int = 3, mark_best: bool = True):
        """A wide table of ``mean ± std`` strings per (context, layer, part), best marked ``*``."""
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
        if mark_best:
            best = self.best()
            is_best = np.ones(len(wide), dtype=bool)
            for k in keys:
                is_best &= wide[k].astype(str).to_numpy() == str(best[k])
            wide.insert(len(keys), "best", np.where(is_best, "*", ""))
        return pd.DataFrame(wide)

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

    def to_html(self, path, *, title: str | None = None) -> Path:
        """Write the interactive, self-contained HTML report; see ``write_report``."""
        from .report import write_report

        return write_report(self, path, title=title)

    def __repr__(self) -> str:
        n = self.frame_.loc[self.frame_["part"] != DUMMY, [*self.context, "layer", "part"]].drop_duplicates()
        return (f"ProbeResults({len(n)} probes, metrics={self.metrics}, "
                f"context={self.context}, rows={len(self.frame_)})")
