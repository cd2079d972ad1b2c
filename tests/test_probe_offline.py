"""probe_layers: scores equal scikit-learn's own cross_validate; planted signal; groups; errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import make_scorer
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, cross_validate

from conftest import blocks_by_position
from embetter_plug import probe_layers
from embetter_plug.layout import ActivationLayout
from embetter_plug.probe import default_probe


def _planted(n=120, L=4, P=3, H=6, layer=2, part=1, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(size=(n, L, P, H)).astype(np.float32)
    X[:, layer, part, 0] += 2.5 * (2 * y - 1)
    return X, y


def _scores(res, layer, part, metric):
    f = res.frame_
    rows = f[(f["layer"] == layer) & (f["part"] == part) & (f["metric"] == metric)]
    return rows.sort_values("fold")["score"].to_numpy()


def test_scores_equal_sklearn_cross_validate():
    X, y = _planted(n=90)
    y = np.random.default_rng(1).permutation(y)  # not sorted: folds matter
    X[:, 1, 2, :2] += y[:, None]
    est = LogisticRegression(C=0.5, max_iter=500)
    res = probe_layers(X, y, est, cv=4, layout=blocks_by_position(X), layers=[1, 3], parts=[0, 2])
    scoring = {"accuracy": "accuracy", "f1": "f1_macro", "roc_auc": "roc_auc",
               "log_loss": "neg_log_loss", "matthews": "matthews_corrcoef",
               "precision": "precision_macro", "recall": "recall_macro"}
    for layer in (1, 3):
        for p in (0, 2):
            ref = cross_validate(clone(est), X[:, layer, p], y, cv=4, scoring=scoring)
            for name, sk in scoring.items():
                sign = -1 if sk.startswith("neg_") else 1
                np.testing.assert_allclose(_scores(res, layer, f"part{p}", name),
                                           sign * ref[f"test_{name}"], rtol=1e-10, atol=1e-12)
    assert set(res.frame_["layer"].dropna()) == {1, 3}
    assert set(res.frame_["part"]) == {"part0", "part2", "dummy"}


def test_default_probe_and_lda_equal_cross_validate_multiclass():
    rng = np.random.default_rng(3)
    y = np.tile(["a", "b", "c"], 30)
    X = rng.normal(size=(90, 2, 1, 5))
    X[:, 1, 0, 0] += (y == "b") * 2.0
    for est in (None, LinearDiscriminantAnalysis()):
        res = probe_layers(X, y, est, cv=3, scoring=["accuracy", "roc_auc"])
        ref_est = default_probe() if est is None else est
        ref = cross_validate(clone(ref_est), X[:, 1, 0], y, cv=3,
                             scoring={"accuracy": "accuracy", "roc_auc": "roc_auc_ovr"})
        np.testing.assert_allclose(_scores(res, 1, "part0", "accuracy"), ref["test_accuracy"])
        np.testing.assert_allclose(_scores(res, 1, "part0", "roc_auc"), ref["test_roc_auc"])


def test_planted_signal_is_best_and_dummy_at_chance():
    X, y = _planted()
    res = probe_layers(X, y, cv=5)
    assert res.best_ == (2, "part1")
    s = res.summary("accuracy").set_index(["layer", "part"])["mean"]
    assert s[(2, "part1")] > 0.95
    dummy = res.frame_[(res.frame_["part"] == "dummy")]
    acc = dummy[dummy["metric"] == "accuracy"]["score"].to_numpy()
    ref = cross_validate(DummyClassifier(strategy="prior"), X[:, 0, 0], y, cv=5)["test_score"]
    np.testing.assert_allclose(acc, ref)
    np.testing.assert_allclose(acc, 0.5)  # balanced classes: chance
    auc = dummy[dummy["metric"] == "roc_auc"]["score"].to_numpy()
    np.testing.assert_allclose(auc, 0.5)
    assert dummy["layer"].isna().all()


def test_layout_names_layers_and_parts():
    X, y = _planted(L=3, P=2, layer=1, part=1)
    lay = ActivationLayout(layers=(0, 4, 7), parts=("resid_post", "mlp_out"), hidden_size=6)
    res = probe_layers(X, y, cv=3, layout=lay, layers=[4, -1], parts=["mlp_out"])
    assert res.best_ == (4, "mlp_out")
    assert sorted(res.frame_["layer"].dropna().unique()) == [4, 7]


def _regression_data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3, 2, 5))
    target = X[:, 2, 0, 0] * 3 + rng.normal(scale=0.3, size=n)
    return X, target


@pytest.mark.parametrize("task", ["auto", "regression"])
def test_regression_mse_r2_spearman_equal_sklearn(task):
    X, t = _regression_data()
    res = probe_layers(X, t, Ridge(alpha=1.0), cv=4, task=task)
    assert res.task == "regression" and res.metrics == ["mse", "r2", "spearman"]
    sp = make_scorer(lambda a, b: spearmanr(a, b).statistic)
    ref = cross_validate(Ridge(alpha=1.0), X[:, 2, 0], t, cv=4,
                         scoring={"mse": "neg_mean_squared_error", "r2": "r2", "sp": sp})
    np.testing.assert_allclose(_scores(res, 2, "part0", "mse"), -ref["test_mse"])
    np.testing.assert_allclose(_scores(res, 2, "part0", "r2"), ref["test_r2"])
    np.testing.assert_allclose(_scores(res, 2, "part0", "spearman"), ref["test_sp"])
    assert res.best_ == (2, "part0")
    dummy = res.summary("r2").query("part == 'dummy'")["mean"].iloc[0]
    assert dummy <= 0.0  # predicting the training mean explains nothing out of fold


def test_integer_target_stated_as_regression():
    X, t = _regression_data()
    ti = np.round(t * 3).astype(int)  # many integer values: looks multiclass unless stated
    res = probe_layers(X, ti, Ridge(), cv=3, task="regression", layout=blocks_by_position(X),
                      layers=[2], parts=[0])
    assert res.metrics == ["mse", "r2", "spearman"]


def test_groups_never_span_a_split_and_equal_sklearn():
    X, y = _planted(n=120)
    groups = np.arange(120) // 4
    res = probe_layers(X, y, LogisticRegression(), cv=3, groups=groups, layout=blocks_by_position(X),
                      layers=[2], parts=[1],
                       scoring="accuracy")
    ref = cross_validate(LogisticRegression(), X[:, 2, 1], y, groups=groups,
                         cv=StratifiedGroupKFold(3))
    np.testing.assert_allclose(_scores(res, 2, "part1", "accuracy"), ref["test_score"])
    # a group-aware splitter object is used as given
    res2 = probe_layers(X, y, LogisticRegression(), cv=GroupKFold(3), groups=groups,
                       layout=blocks_by_position(X), layers=[2],
                        parts=[1], scoring="accuracy")
    ref2 = cross_validate(LogisticRegression(), X[:, 2, 1], y, groups=groups, cv=GroupKFold(3))
    np.testing.assert_allclose(_scores(res2, 2, "part1", "accuracy"), ref2["test_score"])


def test_splitter_that_ignores_groups_is_refused():
    X, y = _planted(n=40)
    with pytest.raises(ValueError, match="both sides"), pytest.warns(UserWarning, match="ignored"):
        probe_layers(X, y, cv=KFold(4, shuffle=True, random_state=0), groups=np.arange(40) // 2)


def test_n_jobs_gives_the_same_scores():
    X, y = _planted(n=60, L=2, P=2, layer=1, part=0)
    a = probe_layers(X, y, cv=3).frame_
    b = probe_layers(X, y, cv=3, n_jobs=2).frame_
    np.testing.assert_allclose(a["score"], b["score"])


@pytest.mark.parametrize("kwargs, y, match", [
    ({}, np.zeros(40, dtype=int), "single class"),
    ({"task": "regression"}, np.array(["pos", "neg"] * 20, dtype=object), "numeric target"),
    ({"layers": [9], "layout": ActivationLayout((0, 1, 2, 5), ("a", "b", "c"), 4)},
     np.repeat([0, 1], 20), r"block 9 is not in the input; it holds blocks \[0, 1, 2, 5\]"),
    ({"layers": [1]}, np.repeat([0, 1], 20), r"layers=\[1\] are model block indices.*no layout"),
    ({"parts": ["mlp_out"]}, np.repeat([0, 1], 20), "part 'mlp_out' is not in the input"),
    ({"groups": np.arange(39)}, np.repeat([0, 1], 20), "groups has 39 entries"),
    ({}, np.repeat([0, 1], 19), "X has 40 samples but y has 38"),
    ({"task": "guess"}, np.repeat([0, 1], 20),
     r"'task' parameter of probe_layers must be a str among \{.*'regression'.*\}\. Got 'guess'"),
    ({"scoring": ["accuracy", "nonsense"]}, np.repeat([0, 1], 20), "unknown metric 'nonsense'"),
    ({}, np.r_[np.repeat([0.0, 1.0], 19), np.nan, 1.0], "missing"),
    ({}, None, "needs a target"),
    ({}, np.zeros(40), r"single class \(0\.0\);"),  # a plain value, not np.float64(0.0)
])
def test_bad_input_errors(kwargs, y, match):
    X = np.random.default_rng(0).normal(size=(40, 4, 3, 4))
    with pytest.raises(ValueError, match=match):
        probe_layers(X, y, cv=2, **kwargs)


@pytest.mark.parametrize("cv", [3, None, "stratified"])
def test_a_class_smaller_than_cv_is_an_error_before_any_probe(cv, monkeypatch):
    import embetter_plug.probe.offline as offline
    from sklearn.model_selection import StratifiedKFold

    monkeypatch.setattr(offline, "_cross_validate", lambda *a: pytest.fail("a probe was fitted"))
    y = np.array(["a"] * 20 + ["b"] * 18 + ["c"] * 2)  # "c" cannot be in every fold
    X = np.random.default_rng(0).normal(size=(40, 2, 1, 4))
    cv = StratifiedKFold(4) if cv == "stratified" else cv
    n = 5 if cv is None else getattr(cv, "n_splits", cv)
    with pytest.raises(ValueError, match=f"needs at least {n} members of every class, but class "
                                         "'c' has 2; use a smaller cv"):
        probe_layers(X, y, cv=cv)


def test_bad_array_shape_and_classifier_on_numbers():
    y = np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match="n_samples, n_layers, n_parts, hidden"):
        probe_layers(np.zeros((20, 4)), y)
    for shape in ((1, 2, 2, 4), (1, 2, 4)):  # one sample, with or without the part axis
        with pytest.raises(ValueError, match="cross-validation needs more"):
            probe_layers(np.zeros(shape), [0])
    with pytest.raises(TypeError, match="numeric activation array"):
        probe_layers(np.array([["a"] * 3] * 20)[:, :, None, None], y)
    X, t = _regression_data(n=20)
    with pytest.raises(ValueError, match="classifier but y is a regression target"):
        probe_layers(X, t, LogisticRegression(), cv=2)
