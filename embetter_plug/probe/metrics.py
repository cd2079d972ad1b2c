"""Probe targets and metrics: task detection, scorer tables, which way is better.

Metric names follow lm_probe where it has them (``accuracy``, ``precision``, ``recall``, ``f1``,
``matthews``; precision, recall and F1 are macro averages) plus ``roc_auc`` and ``log_loss``;
regression has ``mse``, ``r2`` and ``spearman``. Any scikit-learn scorer name works too.
Losses (``log_loss``, ``mse``) are reported as positive numbers, lower is better.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np

TASKS = ("auto", "classification", "regression")

CLASSIFICATION_METRICS: dict[str, str] = {
    "accuracy": "accuracy",
    "precision": "precision_macro",
    "recall": "recall_macro",
    "f1": "f1_macro",
    "matthews": "matthews_corrcoef",
    "roc_auc": "roc_auc",  # roc_auc_ovr for more than two classes
    "log_loss": "neg_log_loss",
}
REGRESSION_METRICS: dict[str, str] = {"mse": "neg_mean_squared_error", "r2": "r2", "spearman": "spearman"}

#: reported as positive losses: cross_validate's negated scores are flipped back
FLIPPED = {"log_loss", "mse"}
LOWER_IS_BETTER = {"log_loss", "mse", "loss"}
#: metrics that rank probes, most informative first: the first one present picks the best
#: probe and the next ones break its ties. ROC-AUC and macro-F1 stay informative on imbalanced
#: labels, where a majority-class probe ties the dummy baseline on accuracy.
RANKING = ("roc_auc", "f1", "balanced_accuracy", "matthews", "accuracy", "log_loss",
           "r2", "spearman", "mse")


#: the range a metric's value can take (as stored: losses positive); unknown metrics are
#: unbounded. Intervals, plots and the report clip to it.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    **{m: (0.0, 1.0) for m in ("accuracy", "balanced_accuracy", "precision", "recall", "f1",
                                "roc_auc", "average_precision", "jaccard", "top_k_accuracy")},
    "matthews": (-1.0, 1.0), "spearman": (-1.0, 1.0), "r2": (-np.inf, 1.0),
    "log_loss": (0.0, np.inf), "mse": (0.0, np.inf),
}


def metric_range(metric: str) -> tuple[float, float]:
    """``(low, high)`` bounds of ``metric``, e.g. ``(0.0, 1.0)`` for accuracy; ``(-inf, inf)``
    when unknown. Scikit-learn names such as ``f1_macro`` or ``roc_auc_ovr`` map to their family.

    Examples
    --------
    >>> from embetter_plug.probe.metrics import metric_range
    >>> metric_range("accuracy"), metric_range("f1_weighted"), metric_range("r2")
    ((0.0, 1.0), (0.0, 1.0), (-inf, 1.0))
    """
    if metric in METRIC_RANGES:
        return METRIC_RANGES[metric]
    base = metric.split("_")[0]
    family = {"f1": "f1", "precision": "precision", "recall": "recall", "jaccard": "jaccard",
              "roc": "roc_auc", "matthews": "matthews"}.get(base)
    return METRIC_RANGES[family] if family else (-np.inf, np.inf)


#: scikit-learn scorers that are undefined (NaN) or fail on a test fold that lacks a class
_EVERY_CLASS = ("roc_auc", "neg_log_loss", "neg_brier_score", "d2_", "average_precision",
                "top_k_accuracy", "positive_likelihood_ratio", "neg_negative_likelihood_ratio")


def needs_every_class(scorers: dict) -> bool:
    """Whether a scorer of ``scorers`` (from :func:`resolve_scoring`) needs every class in each
    test fold (ROC-AUC, log-loss ...); a callable is not known to, and is not counted.

    Examples
    --------
    >>> needs_every_class({"accuracy": "accuracy"}), needs_every_class({"roc_auc": "roc_auc_ovr"})
    (False, True)
    """
    return any(isinstance(s, str) and s.startswith(_EVERY_CLASS) for s in scorers.values())


def greater_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` (as stored in a results frame) is better."""
    return metric not in LOWER_IS_BETTER


def ranking_metrics(metrics) -> list[str]:
    """``metrics`` in ranking order: those of :data:`RANKING` in its order, then the others as given."""
    metrics = list(dict.fromkeys(metrics))
    if not metrics:
        raise ValueError("no metrics to choose from.")
    known = [m for m in RANKING if m in metrics]
    return known + [m for m in metrics if m not in known]


def primary_metric(metrics) -> str:
    """The metric that picks the best probe: ROC-AUC, else macro-F1, ... (see :data:`RANKING`),
    R² for regression, else the first one given."""
    return ranking_metrics(metrics)[0]


def _spearman(y_true, y_pred) -> float:
    from scipy.stats import spearmanr

    if np.ptp(np.asarray(y_pred, dtype=float)) == 0:
        return 0.0  # a constant prediction carries no ranking (e.g. the dummy baseline)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(y_true, y_pred).statistic)


def spearman_scorer() -> Callable:
    """A scorer: Spearman rank correlation of predictions and targets (0 for constant predictions)."""
    from sklearn.metrics import make_scorer

    return make_scorer(_spearman)


def plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (for messages); anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _missing(y: np.ndarray) -> np.ndarray:
    """Mask of missing targets: NaN in a float array; None, NaN or NA among objects (strings)."""
    if y.dtype.kind == "f":
        return np.isnan(y)
    if y.dtype == object:
        import pandas as pd

        return np.asarray(pd.isna(y), dtype=bool)
    return np.zeros(len(y), dtype=bool)


def detect_task(y, task: str = "auto", *, max_classes: int | None = None) -> tuple[str, np.ndarray]:
    """Return ``(task, y)`` with ``y`` as an array; raise clear errors for unusable targets.

    ``task="auto"`` is regression for non-integer numbers; with ``max_classes``, also for
    numbers (integers included) with more than ``max_classes`` distinct values.
    """
    from sklearn.utils.multiclass import type_of_target

    if task not in TASKS:
        raise ValueError(f"task={task!r} is not valid; use one of {list(TASKS)}.")
    if y is None:
        raise ValueError("y is None: probing needs a target (labels or numbers), one per sample.")
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one target per sample), got shape {y.shape}.")
    missing = _missing(y)
    if missing.any():
        raise ValueError(f"y has {int(missing.sum())} missing (NaN or None) value(s) at position(s) "
                         f"{np.flatnonzero(missing)[:10].tolist()}; drop or fill them.")
    if task == "regression":
        if y.dtype.kind not in "biuf":
            try:
                y = y.astype(float)
            except (TypeError, ValueError):
                raise ValueError(
                    f"task='regression' needs a numeric target, but y holds {y.dtype} values "
                    f"such as {y[:3].tolist()}; use task='classification' for labels."
                ) from None
        return task, y.astype(float)
    kind = type_of_target(y, input_name="y")
    if task == "auto":
        many = (max_classes is not None and y.dtype.kind in "biuf"
                and len(np.unique(y)) > max_classes)
        task = "regression" if kind == "continuous" or many else "classification"
        if task == "regression":
            return task, y.astype(float)
    if kind not in ("binary", "multiclass"):
        raise ValueError(
            f"y looks {kind!r}, which is not a classification target; pass task='regression' "
            "for numbers, or give discrete labels."
        )
    n_classes = len(np.unique(y))
    if n_classes < 2:
        raise ValueError(
            f"y has a single class ({plain(np.unique(y)[0])!r}); a probe needs at least two classes."
        )
    return task, y


def resolve_scoring(scoring: Any, task: str, n_classes: int, estimator) -> dict[str, Any]:
    """Map ``scoring`` (None, a name, a list of names, a dict or a callable) to ``{name: scorer}``.

    Scorers are sklearn scorer names or callables, ready for ``cross_validate``.
    """
    from sklearn.metrics import get_scorer, get_scorer_names

    table = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if scoring is None:
        names = list(table)
        if task == "classification":
            has_proba = hasattr(estimator, "predict_proba")
            if not has_proba:
                names.remove("log_loss")
                if not hasattr(estimator, "decision_function"):
                    names.remove("roc_auc")
        scoring = names
    if callable(scoring) and not isinstance(scoring, str):
        return {"score": scoring}
    if isinstance(scoring, str):
        scoring = [scoring]
    if isinstance(scoring, dict):
        return dict(scoring)
    out: dict[str, Any] = {}
    ours = {**CLASSIFICATION_METRICS, **REGRESSION_METRICS}
    for name in scoring:
        if not isinstance(name, str):
            raise TypeError(f"scoring entry {name!r} is not a metric name.")
        sk = ours.get(name, name)
        if sk == "spearman":
            out[name] = spearman_scorer()
            continue
        if sk == "roc_auc" and n_classes > 2:
            sk = "roc_auc_ovr"
        try:
            get_scorer(sk)
        except ValueError:
            raise ValueError(
                f"unknown metric {name!r}; use one of {sorted(ours)} or a scikit-learn scorer "
                f"name (e.g. {sorted(get_scorer_names())[:5]} ...)."
            ) from None
        out[name] = sk
    return out
