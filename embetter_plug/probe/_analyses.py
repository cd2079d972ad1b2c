"""The optional analyses of ``probe_layers`` on one slice: inner CV for the nested estimate,
permutation baselines, the control task and the MDL online code.

Each returns tidy ``(metric, fold, score)`` rows under the prefixed metric names of
:mod:`embetter_plug.probe.stats`; scores follow the frame's convention (losses positive).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics import FLIPPED, needs_every_class
from ._splits import fold_class_error
from .stats import CONTROL, INNER, MDL_BITS, MDL_UNIFORM, PERM


@dataclass
class Plan:
    """What to compute beyond the plain CV scores (built once by ``probe_layers``)."""

    primary: str  # the metric that picks the winner and that permutations test
    inner: list | None = None  # per outer fold, inner (train, test) pairs; None: no nested CV
    n_permutations: int = 0
    perm_seed: int = 0
    groups: Any = None
    control_y: Any = None  # control-task labels, or None
    mdl: bool = False
    mdl_seed: int = 0


def inner_splits(splits, y, groups, classifier: bool, test: bool = True) -> list[list[tuple]]:
    """For every outer fold, the (train, test) pairs of a CV on the rows outside its test fold.

    When the outer test folds partition the rows (k-fold, k >= 3), the inner folds are the other
    outer folds, so a fit on "all but folds j and k" serves both outer folds j and k. Otherwise
    a 3-fold split (stratified, group-aware where the outer one is) of each training side.
    None when there are too few rows, or (labels) an inner fold would lack a class (in its
    test rows too with ``test``: the primary metric needs them all).
    """
    out = _inner_splits(splits, y, groups, classifier)
    if out is not None and classifier and any(fold_class_error(pairs, y, test) for pairs in out):
        return None  # an inner fold without a class cannot be scored
    return out


def _inner_splits(splits, y, groups, classifier: bool) -> list[list[tuple]] | None:
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    n = len(y)
    tests = [np.asarray(te) for _, te in splits]
    every = np.sort(np.concatenate(tests))
    if len(splits) >= 3 and np.array_equal(every, np.arange(n)):
        return [[(np.setdiff1d(tr, tests[j]), tests[j]) for j in range(len(splits)) if j != k]
                for k, (tr, _) in enumerate(splits)]
    out = []
    for tr, _ in splits:
        tr = np.asarray(tr)
        g = None if groups is None else np.asarray(groups)[tr]
        k = min(3, len(tr) if g is None else len(np.unique(g)))
        if classifier:
            k = min(k, int(np.unique(y[tr], return_counts=True)[1].min()))
        if k < 2:
            return None
        if g is not None:
            cv = StratifiedGroupKFold(k) if classifier else GroupKFold(k)
        else:
            cv = StratifiedKFold(k) if classifier else KFold(k)
        out.append([(tr[a], tr[b]) for a, b in cv.split(np.zeros((len(tr), 1)), y[tr], g)])
    return out


def make_plan(X4, y, task: str, scorers: dict, splits, groups, estimator, *, nested, n_permutations,
              control, mdl, random_state) -> Plan:
    """Check the analysis options (before any probe is fitted) and say what to compute."""
    from numbers import Integral

    from .._utils import logger, seed_from_random_state
    from .metrics import primary_metric
    from .control import control_labels, row_types

    for name, value in (("nested", nested), ("mdl", mdl)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r}.")
    if (not isinstance(n_permutations, Integral) or isinstance(n_permutations, bool)
            or n_permutations < 0):
        raise ValueError(f"n_permutations must be a non-negative integer (0: no permutation "
                         f"test), got {n_permutations!r}.")
    if mdl and task != "classification":
        raise ValueError("mdl=True codes labels: it needs a classification target, but y is a "
                         "regression target.")
    if mdl and not hasattr(estimator, "predict_proba"):
        raise TypeError(f"mdl=True needs a probe with predict_proba; {type(estimator).__name__} "
                        "has none.")
    seed = (int(random_state) if isinstance(random_state, Integral)
            else seed_from_random_state(random_state))
    plan = Plan(primary=primary_metric(list(scorers)), n_permutations=int(n_permutations),
                perm_seed=seed, groups=None if groups is None else np.asarray(groups),
                mdl=bool(mdl), mdl_seed=seed)
    if control is not False and control is not None:
        types = row_types(X4) if control is True else np.asarray(control)
        plan.control_y = control_labels(y, types, seed)
    if nested:
        plan.inner = inner_splits(splits, y, plan.groups, task == "classification",
                                  needs_every_class({plan.primary: scorers[plan.primary]}))
        if plan.inner is None:
            logger.warning("no selection-free estimate: the training rows of a fold are too few "
                           "for an inner cross-validation, or an inner fold would lack a class; "
                           "use a larger cv or more rows (or groups that mix the classes).")
    return plan


def _sign(name: str) -> float:
    return -1.0 if name in FLIPPED else 1.0


def _scorer(scoring):
    from sklearn.metrics import get_scorer

    return get_scorer(scoring) if isinstance(scoring, str) else scoring


def inner_rows(est, Xs, y, inner, name: str, scoring) -> list[tuple]:
    """``inner:<name>`` per outer fold: the mean score of the inner folds; each distinct
    training set is fitted once."""
    from sklearn.base import clone

    scorer, sign = _scorer(scoring), _sign(name)
    jobs: dict[bytes, tuple[np.ndarray, list]] = {}
    for k, pairs in enumerate(inner):
        for tr, te in pairs:
            jobs.setdefault(np.asarray(tr).tobytes(), (tr, []))[1].append((k, te))
    per_fold: dict[int, list[float]] = {k: [] for k in range(len(inner))}
    for tr, uses in jobs.values():
        model = clone(est).fit(Xs[tr], y[tr])
        for k, te in uses:
            per_fold[k].append(sign * float(scorer(model, Xs[te], y[te])))
    return [(INNER + name, k, float(np.mean(v))) for k, v in per_fold.items()]


def permuted(y, groups, n_permutations: int, seed: int):
    """The permuted label vectors, drawn as ``permutation_test_score`` draws them (within groups
    when given) from ``np.random.RandomState(seed)``."""
    rs = np.random.RandomState(seed)
    for _ in range(n_permutations):
        if groups is None:
            idx = rs.permutation(len(y))
        else:
            idx = np.arange(len(groups))
            for g in np.unique(groups):
                mask = groups == g
                idx[mask] = rs.permutation(idx[mask])
        yield y[idx]


def permutation_rows(est, Xs, y, splits, name: str, scoring, plan: Plan) -> list[tuple]:
    """``perm:<name>`` per permutation: the mean CV score on the same folds, labels permuted."""
    from sklearn.base import clone

    scorer, sign = _scorer(scoring), _sign(name)
    rows = []
    for i, yp in enumerate(permuted(y, plan.groups, plan.n_permutations, plan.perm_seed)):
        s = [scorer(clone(est).fit(Xs[tr], yp[tr]), Xs[te], yp[te]) for tr, te in splits]
        rows.append((PERM + name, i, sign * float(np.mean(s))))
    return rows


def control_rows(est, Xs, splits, scorers, plan: Plan) -> list[tuple]:
    """``control:<metric>`` per fold: the same probe and folds on the control labels (a fold
    whose control labels miss a class, or where the probe fails, scores NaN)."""
    from sklearn.base import clone
    from sklearn.model_selection import cross_validate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = cross_validate(clone(est), Xs, plan.control_y, cv=splits, scoring=scorers,
                            error_score=np.nan)
    return [(CONTROL + name, fold, _sign(name) * float(s))
            for name in scorers for fold, s in enumerate(sc[f"test_{name}"])]


def mdl_rows(est, Xs, y, plan: Plan) -> list[tuple]:
    from .mdl import online_codelength

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small early blocks: convergence warnings
        bits, uniform = online_codelength(est, Xs, y, random_state=plan.mdl_seed)
    return [(MDL_BITS, 0, bits), (MDL_UNIFORM, 0, uniform)]


def analyse(est, Xs, y, splits, scorers, plan: Plan) -> list[tuple]:
    """Every analysis the plan asks for, on one slice."""
    from sklearn.exceptions import UndefinedMetricWarning

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if plan.inner is not None:
            rows += inner_rows(est, Xs, y, plan.inner, plan.primary, scorers[plan.primary])
        if plan.n_permutations:
            rows += permutation_rows(est, Xs, y, splits, plan.primary, scorers[plan.primary],
                                     plan)
    if plan.control_y is not None:
        rows += control_rows(est, Xs, splits, scorers, plan)
    if plan.mdl:
        rows += mdl_rows(est, Xs, y, plan)
    return rows
