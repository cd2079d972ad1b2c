"""Folds without a class: refused before any probe is fitted, and an undefined (NaN) fold score
never makes a probe significant."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_validate

from conftest import blocks_by_position
from embetter_plug import ProbeResults, probe_layers
from embetter_plug.probe.stats import permutation_pvalue


class _NeverFit(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        raise AssertionError("a probe was fitted before the folds were checked")

    def predict_proba(self, X):  # pragma: no cover - never reached
        raise AssertionError


def _pure_groups(n_groups_per_class, rows=10, seed=0):
    """Noise, and groups that each hold one class only."""
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_groups_per_class)])
    groups = np.repeat(np.arange(len(labels)), rows)
    y = np.repeat(labels, rows)
    X = np.random.default_rng(seed).normal(size=(len(y), 2, 1, 8))
    return X, y, groups


def _folds_without_a_class(y, groups, k):
    """(fold, side) pairs of StratifiedGroupKFold(k) that lack a class, from sklearn itself."""
    out = []
    for f, (tr, te) in enumerate(StratifiedGroupKFold(k).split(y, y, groups)):
        out += [(f, side) for side, rows in (("training", tr), ("test", te))
                if len(np.unique(y[rows])) < len(np.unique(y))]
    return out


def test_class_pure_groups_with_a_fold_of_one_class_are_refused_before_fitting():
    # the reported case: 4 grouped folds on class-pure groups; ROC-AUC is NaN on two folds, and
    # the NaN used to make noise "significant" (p = 1/(n+1), beats_chance True)
    X, y, groups = _pure_groups([3, 3])
    bad = _folds_without_a_class(y, groups, 4)
    assert bad, "the fixture must give a fold without a class"
    with pytest.raises(ValueError) as err:
        probe_layers(X, y, _NeverFit(), groups=groups, cv=4, n_permutations=40, random_state=0,
                     scoring=["roc_auc", "accuracy"])
    message = str(err.value)
    assert "cv=4" in message
    for fold, side in bad:
        assert f"fold {fold}'s {side} rows have no class" in message
    # the fix it names works: the smaller cv gives folds with every class on both sides
    assert "cv=3 (StratifiedGroupKFold)" in message
    assert not _folds_without_a_class(y, groups, 3)
    res = probe_layers(X, y, LogisticRegression(), groups=groups, cv=3, scoring=["roc_auc"],
                       nested=False)
    assert np.isfinite(res.frame_["score"]).all()


def test_training_side_without_a_class_is_a_clear_error_not_sklearns():
    # one class in one group: the fold that tests that group trains on one class, which used to
    # end in a raw error from log_loss / predict_proba
    X, y, groups = _pure_groups([1, 5])
    assert (0, "training") in _folds_without_a_class(y, groups, 4)
    with pytest.raises(ValueError, match=r"fold 0's training rows have no class \[0\]"):
        probe_layers(X, y, groups=groups, cv=4)


def test_explicit_splits_without_a_class_are_refused():
    X, y, _ = _pure_groups([3, 3])
    order = np.argsort(y, kind="stable")  # unshuffled halves: each test side holds one class
    splits = [(order[30:], order[:30]), (order[:30], order[30:])]
    with pytest.raises(ValueError, match="fold 0's test rows have no class \\[1\\]"):
        probe_layers(X, y, _NeverFit(), cv=splits)


def test_inner_fold_without_a_class_skips_the_nested_estimate_with_a_warning(caplog):
    # 2 grouped folds: the inner 3-fold CV of a training side (4 pure groups) puts one group in a
    # fold, so it lacks a class; the plain scores are still sklearn's own
    X, y, groups = _pure_groups([4, 4])
    with caplog.at_level(logging.WARNING, logger="embetter_plug"):
        res = probe_layers(X, y, LogisticRegression(), groups=groups, cv=2, layers=[1],
                           layout=blocks_by_position(X),
                           scoring=["roc_auc"], dummy=False)
    assert "no selection-free estimate" in caplog.text
    assert res.selection_free("roc_auc") is None
    ref = cross_validate(LogisticRegression(), X[:, 1, 0], y, groups=groups,
                         cv=StratifiedGroupKFold(2), scoring="roc_auc")
    np.testing.assert_allclose(res.frame_.sort_values("fold")["score"], ref["test_score"])


def test_permutation_pvalue_of_an_undefined_score_is_nan():
    assert math.isnan(permutation_pvalue(float("nan"), [0.1, 0.2, 0.3]))
    assert math.isnan(permutation_pvalue(0.9, [0.1, float("nan"), 0.3]))
    assert permutation_pvalue(0.25, [0.1, 0.2, 0.3]) == pytest.approx(2 / 4)


def test_a_nan_fold_never_makes_a_probe_significant():
    # a results frame (e.g. from older runs or an outside splitter) with ROC-AUC undefined on
    # one fold: a 0.35 probe on noise must not come out significant
    rng = np.random.default_rng(0)
    rows = [(0, "part0", "roc_auc", f, s) for f, s in enumerate([0.35, 0.3, np.nan, 0.4])]
    rows += [(0, "part0", "perm:roc_auc", i, s) for i, s in enumerate(rng.uniform(0.4, 0.6, 40))]
    rows += [(None, "dummy", "roc_auc", f, 0.5) for f in range(4)]
    res = ProbeResults(pd.DataFrame(rows, columns=["layer", "part", "metric", "fold", "score"]),
                       task="classification")
    st = res.statistics("roc_auc")
    assert st["p_value"].isna().all() and not st["significant"].any()
    verdict = res.verdict()
    assert verdict["beats_chance"] is False and "no p-value" in verdict["message"]


def test_test_folds_of_one_class_are_fine_for_metrics_defined_on_them():
    # leave-one-out tests on one row: accuracy is defined there (and equals sklearn's own),
    # ROC-AUC is not, so the default scoring is refused
    from sklearn.model_selection import LeaveOneOut

    X, y, _ = _pure_groups([2, 2], rows=5)
    res = probe_layers(X, y, LogisticRegression(), cv=LeaveOneOut(), scoring="accuracy",
                       layers=[0], layout=blocks_by_position(X), dummy=False, nested=False)
    ref = cross_validate(LogisticRegression(), X[:, 0, 0], y, cv=LeaveOneOut(), scoring="accuracy")
    np.testing.assert_allclose(res.frame_.sort_values("fold")["score"], ref["test_score"])
    with pytest.raises(ValueError, match=r"test rows have no class .*undefined on a test fold"):
        probe_layers(X, y, _NeverFit(), cv=LeaveOneOut())
