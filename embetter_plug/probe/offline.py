"""probe_layers: one cross-validated probe per layer x part of a 4-D activation array."""

from __future__ import annotations

import warnings
from numbers import Integral
from typing import Any

import numpy as np

from .._constraints import (NON_NEGATIVE_INT, HasMethods, Indices, Selection, StrOptions,
                            validate_params)
from .._utils import logger
from ..layout import layer_positions, select_positions
from ._analyses import analyse, make_plan
from .metrics import FLIPPED, detect_task, needs_every_class, plain, resolve_scoring
from ._splits import fold_class_error
from .results import DUMMY, ProbeResults, warn_if_dummy_wins

__all__ = ["probe_layers", "default_probe"]


def default_probe(task: str = "classification"):
    """The default probe: standardisation, then a strongly regularised linear model.

    ``LogisticRegression(C=0.01)`` for labels (a probe on a few hundred standardised dimensions
    overfits with weaker regularisation, and converges slowly), ``Ridge(alpha=100)`` for numbers.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "regression":
        return make_pipeline(StandardScaler(), Ridge(alpha=100.0))
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=1000))


@validate_params({
    "estimator": [None, HasMethods(["fit"])], "n_jobs": [None, Integral],
    "layers": [Indices("layers")], "parts": [Selection("parts", "part")],
    "task": [StrOptions({"auto", "classification", "regression"})], "dummy": ["boolean"],
    "verbose": ["verbose"], "nested": ["boolean"], "n_permutations": [NON_NEGATIVE_INT],
    "control": ["boolean", "array-like"], "mdl": ["boolean"], "random_state": ["random_state"],
})
def probe_layers(X, y, estimator=None, cv: Any = 5, scoring: Any = None, groups=None,
                 n_jobs: int | None = None, *, layout=None, layers: Any = "all",
                 parts: Any = "all", task: str = "auto", dummy: bool = True,
                 verbose: bool = False, nested: bool = True, n_permutations: int = 0,
                 control: Any = False, mdl: bool = False,
                 random_state: Any = None) -> ProbeResults:
    """Fit one cross-validated probe per layer x part, plus a dummy baseline.

    Every probe sees the same folds, so scores are comparable across layers and parts; each
    probe's scores equal ``sklearn.model_selection.cross_validate`` on ``X[:, layer, part]``.

    Parameters
    ----------
    X : array of shape (n_samples, n_layers, n_parts, hidden)
        Activations, e.g. from ``TransformerActivationEncoder``. A 3-D array is one part.
    y : array of shape (n_samples,), or a DataFrame or dict of such columns
        Labels, or numbers for a regression probe. Several targets (e.g. the levels of a label
        hierarchy) are probed on the same ``X`` one after another, each exactly as a call with
        that column alone (its own task, folds and baseline), and a dict ``{name:
        ProbeResults}`` is returned.
    estimator : sklearn estimator, default=None
        Any classifier or regressor; ``None`` is a standardised ``LogisticRegression(C=0.01)``
        (``Ridge(alpha=100)`` for regression). Cloned for every fold.
    cv : int, splitter or iterable, default=5
        As in ``cross_validate``. With ``groups`` and an int, ``StratifiedGroupKFold``
        (``GroupKFold`` for regression) is used so a group never spans train and test.
    scoring : str, list, dict, callable or None
        ``None`` is accuracy, precision, recall, f1 (macro), matthews, roc_auc and log_loss for
        labels; mse, r2 and spearman for numbers. Any sklearn scorer name works too.
    groups : array of shape (n_samples,), default=None
        Texts of one group stay on one side of every split (checked).
    n_jobs : int, default=None
        Probes fitted in parallel (joblib). Each probe's fits run with one BLAS thread
        (``threadpoolctl``): many small fits gain nothing from BLAS threads but their CPU cost.
    layout : ActivationLayout, default=None
        Names for the axes, for an ``X`` that no longer carries them (``layout=enc.layout_``
        for the encoder's output after ``np.asarray`` or a reload); by default the one the
        encoder's output carries. Without any, the results name layers and parts by position
        (``0, 1, ...`` and ``part0, part1, ...``).
    layers, parts : "all", or a list of model block indices / part names (or part positions)
        Which probes to fit; a negative layer counts back from the last block present.
        ``layers`` are always block indices: on an ``X`` without a layout only ``"all"``
        (every position) is accepted, since which position holds which block is unknown.
    task : {"auto", "classification", "regression"}, default="auto"
        ``auto`` treats float targets with many values as regression.
    dummy : bool, default=True
        Add a ``DummyClassifier(strategy="prior")`` / ``DummyRegressor`` baseline.
    verbose : bool, default=False
        A progress bar over probes.
    nested : bool, default=True
        Also estimate the best probe's score free of selection (nested cross-validation): for
        every fold, the winner is chosen by a cross-validation on the other rows alone (the
        other folds, when the folds partition the rows) and scored on that fold. Stored as
        ``inner:<metric>`` rows; see ``ProbeResults.selection_free``. Costs about
        ``(cv - 1) / 2`` times the plain probes' fits on the primary metric.
    n_permutations : int, default=0
        Permutation baseline per slice: the mean CV score on the primary metric with the labels
        permuted (within groups), on the same folds, this many times, as
        ``sklearn.model_selection.permutation_test_score``. Costs ``n_permutations`` times the
        plain fits. ``ProbeResults.statistics`` gives p-values corrected for the number of
        slices (Holm); with ``S`` slices, reaching p < 0.05 needs ``n_permutations >= 20 S``.
    control : bool or array of shape (n_samples,), default=False
        Probe a control task too (Hewitt & Liang, 2019) with the same probe and folds: each
        *type* gets a random label from ``y``'s distribution, the same wherever it occurs.
        ``True``: identical activation rows (the same text) are a type; an array gives each
        row's type (e.g. its word). Gives ``selectivity`` in ``ProbeResults.statistics``.
    mdl : bool, default=False
        The online codelength of the labels per slice (Voita & Titov, 2020); labels only.
    random_state : int, RandomState or None, default=None
        Seeds the permutations (as ``permutation_test_score``'s own), the control labels and
        the MDL order.

    Returns
    -------
    ProbeResults, or a dict of them (one per target, in order) when ``y`` has several columns

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import probe_layers
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 30)
    >>> X = rng.normal(size=(60, 3, 2, 8))
    >>> X[:, 2, 1, 0] += 3 * y          # only layer 2, part 1 carries the label
    >>> probe_layers(X, y, cv=3).best_
    (2, 'part1')
    >>> coarse = np.tile([0, 1], 30)      # a second label, carried by layer 0, part 0
    >>> X[:, 0, 0, 1] += 3 * coarse
    >>> {k: r.best_ for k, r in probe_layers(X, {"fine": y, "coarse": coarse}, cv=3).items()}
    {'fine': (2, 'part1'), 'coarse': (0, 'part0')}
    """
    targets = _targets(y)
    if targets is not None:  # several labels: one probe run each, on the same activations
        kwargs = dict(layout=layout, layers=layers, parts=parts, task=task, dummy=dummy,
                      verbose=verbose, nested=nested, n_permutations=n_permutations,
                      control=control, mdl=mdl, random_state=random_state)
        return {name: probe_layers(X, col, estimator, cv, scoring, groups, n_jobs, **kwargs)
                for name, col in targets.items()}
    import pandas as pd
    from joblib import Parallel, delayed
    from sklearn.base import clone, is_classifier
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from tqdm.auto import tqdm

    if layout is None:  # the encoder's output carries its own
        layout = getattr(X, "layout", None)
    X4 = _as_4d(X)
    task, y = detect_task(y, task)
    if len(y) != len(X4):
        raise ValueError(f"X has {len(X4)} samples but y has {len(y)}; they must match.")
    layer_names, part_names = _axis_names(X4, layout)
    li = layer_positions(layers, None if layout is None else layer_names, X4.shape[1],
                         owner="probe_layers")
    pi = _select(parts, part_names, "part")
    if estimator is None:
        estimator = default_probe(task)
    n_classes = len(np.unique(y)) if task == "classification" else 0
    scorers = resolve_scoring(scoring, task, n_classes, estimator)
    splits = make_splits(cv, X4, y, groups, task, estimator, scorers)

    if is_classifier(estimator) and task == "regression":
        raise ValueError(f"{type(estimator).__name__} is a classifier but y is a regression target.")

    plan = make_plan(X4, y, task, scorers, splits, groups, estimator, nested=nested,
                     n_permutations=n_permutations, control=control, mdl=mdl,
                     random_state=random_state)
    jobs = [(l, p) for l in li for p in pi]
    logger.info("probing %d layer x part slices over %d folds", len(jobs), len(splits))
    base = DummyClassifier(strategy="prior") if task == "classification" else DummyRegressor()
    if dummy:
        jobs.insert(0, (None, None))

    def job(l, p):  # a task is sent its own slice only (a worker on a cluster gets no more)
        est = base if l is None else estimator
        Xs = X4[:, 0, 0, :1] if l is None else X4[:, l, p]
        return delayed(_probe_task)(clone(est), Xs, y, splits, scorers,
                                    None if l is None else plan)

    it = tqdm(jobs, disable=not verbose, desc="probing", unit="probe")
    scores = Parallel(n_jobs=n_jobs)(job(l, p) for l, p in it)
    rows = []
    for (l, p), (sc, extra) in zip(jobs, scores):
        layer, part = (None, DUMMY) if l is None else (layer_names[l], part_names[p])
        for name in scorers:
            sign = -1.0 if name in FLIPPED else 1.0
            for fold, s in enumerate(sc[f"test_{name}"]):
                rows.append((layer, part, name, fold, sign * float(s)))
        rows += [(layer, part, *row) for row in extra]
    frame = pd.DataFrame(rows, columns=["layer", "part", "metric", "fold", "score"])
    results = ProbeResults(frame, task=task)
    if dummy:
        warn_if_dummy_wins(results)
    return results


#: BLAS threads per probe task (the fits of one probe); parallel probes come from ``n_jobs``
PROBE_BLAS_THREADS = 1


def _targets(y) -> dict | None:
    """``{name: column}`` of several targets (a DataFrame or dict), else None (one target)."""
    if isinstance(y, dict):
        items = list(y.items())
    elif hasattr(y, "columns") and getattr(y, "ndim", 1) == 2:
        items = [(c, y[c].to_numpy()) for c in y.columns]
    else:
        return None
    if not items:
        raise ValueError("y has no columns: give at least one target.")
    names = [str(k) for k, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"y's target names {names} repeat; give each target its own name.")
    return {n: np.asarray(v) for n, (_, v) in zip(names, items)}


def _probe_task(est, X, y, splits, scorers, plan):
    """One probe's cross-validated scores, and the analyses ``plan`` asks for (none for the
    dummy), with one BLAS thread: a probe is many small fits, for which BLAS's own threads cost
    far more CPU than they save (and fight ``n_jobs`` workers for the cores)."""
    from sklearn.base import clone
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=PROBE_BLAS_THREADS, user_api="blas"):
        extra = [] if plan is None else analyse(est, X, y, splits, scorers, plan)
        return _cross_validate(clone(est), X, y, splits, scorers), extra


def _cross_validate(est, X, y, splits, scorers):
    """``cross_validate``; a class never predicted scores 0 precision without a warning each time."""
    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.model_selection import cross_validate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return cross_validate(est, X, y, cv=splits, scoring=scorers, error_score="raise")


def _as_4d(X) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype.kind not in "fiu":
        raise TypeError(f"X must be a numeric activation array, got dtype {X.dtype}.")
    if X.ndim not in (3, 4):
        raise ValueError(
            f"X must be (n_samples, n_layers, n_parts, hidden) activations (or 3-D without the "
            f"part axis), got shape {X.shape}."
        )
    if len(X) < 2:
        raise ValueError(f"X has {len(X)} sample(s); cross-validation needs more.")
    return X[:, :, None, :] if X.ndim == 3 else X


def _axis_names(X4, layout) -> tuple[list[int], list[str]]:
    if layout is None:
        return list(range(X4.shape[1])), [f"part{j}" for j in range(X4.shape[2])]
    layout.check(X4)
    return list(layout.layers), list(layout.parts)


def _select(sel, names: list, what: str) -> list[int]:
    """Positions of the requested layers (block indices) or parts (names or positions)."""
    return select_positions(sel, names, name=f"{what}s", what=what)


def class_count_error(y, n_splits: int, given: str) -> str | None:
    """The start of an error when a class of ``y`` has fewer than ``n_splits`` members, else None.

    Stratified folds then miss that class, and scorers such as ROC-AUC and log-loss fail on them.
    ``given`` names the setting, e.g. ``"cv=5"``.
    """
    values, counts = np.unique(y, return_counts=True)
    rare = [(plain(v), int(n)) for v, n in zip(values, counts) if n < n_splits]
    if not rare:
        return None
    shown = ", ".join(f"{v!r} has {n}" for v, n in rare[:10])
    more = f" (and {len(rare) - 10} more)" if len(rare) > 10 else ""
    return (f"{given} needs at least {n_splits} members of every class, but class "
            f"{shown}{more}")


def make_splits(cv, X4, y, groups, task, estimator, scorers=None) -> list:
    """Materialise the folds once, so every probe and the baseline share them. Labels: every
    fold must train on every class, and (for ``scorers`` such as ROC-AUC, or when not given)
    test on every class too."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold, check_cv

    classifier, given = task == "classification", cv
    if classifier and (cv is None or isinstance(cv, (Integral, StratifiedKFold, StratifiedGroupKFold))):
        n_splits = 5 if cv is None else cv if isinstance(cv, Integral) else cv.n_splits
        message = class_count_error(y, n_splits, f"cv={cv!r}")
        if message:
            numbers = " (or task='regression' for numbers)" if np.asarray(y).dtype.kind in "biuf" else ""
            raise ValueError(f"{message}; use a smaller cv{numbers}, or drop or merge those classes.")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.ndim != 1 or len(groups) != len(y):
            raise ValueError(
                f"groups has {len(groups) if groups.ndim else 0} entries (shape {groups.shape}) "
                f"but there are {len(y)} samples; give one group per sample."
            )
        if isinstance(cv, Integral):
            n_groups = len(np.unique(groups))
            if n_groups < cv:
                raise ValueError(f"cv={cv} folds need at least {cv} groups; groups has {n_groups}.")
            cv = StratifiedGroupKFold(cv) if classifier else GroupKFold(cv)
    splitter = check_cv(cv, y, classifier=classifier)
    splits = list(splitter.split(np.zeros((len(y), 1)), y, groups))
    if groups is not None:
        for k, (tr, te) in enumerate(splits):
            shared = np.intersect1d(groups[tr], groups[te])
            if len(shared):
                raise ValueError(
                    f"fold {k} puts group(s) {shared[:5].tolist()} on both sides; use a group-aware "
                    "splitter (GroupKFold, StratifiedGroupKFold, LeaveOneGroupOut) or an int cv."
                )
    if classifier:
        test = scorers is None or needs_every_class(scorers)
        message = fold_class_error(splits, y, test)
        if message:
            why = (" (the scoring, e.g. ROC-AUC or log-loss, is undefined on a test fold without "
                   "a class)" if test and "test rows" in message else "")
            raise ValueError(f"cv={given!r}: {message}{why}; "
                             f"{_fold_fix(y, groups, len(splits), test)}")
    return splits


def _fold_fix(y, groups, n_splits: int, test: bool) -> str:
    """How to get folds that hold every class: a smaller cv that works, where one does."""
    from sklearn.model_selection import StratifiedGroupKFold

    if groups is None:
        return ("use StratifiedKFold (or an int cv, which stratifies), or drop or merge the "
                "rare classes.")
    works = [k for k in range(n_splits - 1, 1, -1) if fold_class_error(
        list(StratifiedGroupKFold(k).split(y, y, groups)), y, test) is None]
    hint = (f"cv={works[0]} (StratifiedGroupKFold) gives such folds with these groups" if works
            else "no StratifiedGroupKFold of these groups gives such folds")
    return (f"whole groups go to one fold, so groups that hold few classes can leave a fold "
            f"without a class: {hint}; or use groups that mix the classes.")
