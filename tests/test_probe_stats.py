"""Probing you can believe: the selection-free estimate, permutation baselines, control tasks,
MDL and intervals, each checked against scikit-learn or a hand computation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import t as student
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (GridSearchCV, StratifiedKFold, cross_validate,
                                     permutation_test_score)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from conftest import blocks_by_position
from embetter_plug import probe_layers
from embetter_plug.probe.control import control_labels, row_types
from embetter_plug.probe.mdl import block_ends, online_codelength
from embetter_plug.probe.stats import bonferroni, corrected_interval, holm

FAST = LogisticRegression(C=1.0)


def _noise(n, seed, L=3, P=2, H=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, L, P, H)), rng.permutation(np.repeat([0, 1], n // 2))


def _planted(n=100, seed=0, L=2, P=1, H=5, layer=1, part=0, strength=1.5):
    X, y = _noise(n, seed, L, P, H)
    X[:, layer, part, 0] += strength * (2 * y - 1)
    return X, y


# ------------------------------------------------------------------ pure noise
@pytest.mark.parametrize("n, seed", [(60, 0), (60, 1), (150, 2), (150, 3)])
def test_noise_selection_free_estimate_is_at_chance_and_the_warning_fires(n, seed):
    X, y = _noise(n, seed)
    with pytest.warns(UserWarning, match="selection-free estimate of the best probe"):
        res = probe_layers(X, y, cv=5)
    sf = res.selection_free()
    assert sf["metric"] == "roc_auc" and sf["n_folds"] == 5
    assert sf["low"] <= 0.5 <= sf["high"]
    assert sf["beats_dummy"] is False and res.verdict()["beats_chance"] is False
    # the selection-free score is that of the chosen probe on each fold
    f = res.frame_
    for k, (chosen, score) in enumerate(zip(sf["chosen"], sf["scores"])):
        hit = (f["metric"] == "roc_auc") & (f["fold"] == k) & (f["part"] == chosen["part"])
        hit &= f["layer"].astype(str) == chosen["layer"]
        assert f.loc[hit, "score"].item() == pytest.approx(score)


@pytest.mark.parametrize("seed", [0, 1])
def test_noise_permutation_p_values_are_not_significant_after_correction(seed):
    X, y = _noise(60, seed, L=2, P=1)
    with pytest.warns(UserWarning, match="permutation p-value is below 0.05 after Holm"):
        res = probe_layers(X, y, FAST, cv=3, n_permutations=49, random_state=seed,
                           scoring="roc_auc")
    st = res.statistics()
    # 2 probes, 49 permutations: the smallest reachable Holm p-value is 2/50 = 0.04
    assert (st["p_holm"] >= 0.05).all() and not st["significant"].any()
    np.testing.assert_allclose(st["p_holm"], holm(st["p_value"]))


# ------------------------------------------------------------- planted signal
def test_planted_signal_is_found_significant_and_selective():
    X, y = _planted(seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the signal is real
        res = probe_layers(X, y, FAST, cv=3, n_permutations=49, control=True, random_state=0,
                           scoring=["accuracy", "roc_auc"])
    assert res.best_ == (1, "part0")
    sf = res.selection_free()
    assert sf["low"] > 0.5 and all(c == {"layer": "1", "part": "part0"} for c in sf["chosen"])
    st = res.statistics().set_index(["layer", "part"])
    assert st.loc[(1, "part0"), "p_holm"] == pytest.approx(2 / 50)
    assert st.loc[(1, "part0"), "significant"] and not st.loc[(0, "part0"), "significant"]
    # each text is its own type: the control labels are random, so the probe is at chance on them
    assert st.loc[(1, "part0"), "selectivity"] > 0.3
    assert abs(st.loc[(1, "part0"), "control"] - 0.5) < 0.15
    v = res.verdict()
    assert v["beats_chance"] and v["basis"] == "permutation"


def test_a_signal_only_memorisation_can_learn_has_selectivity_near_zero():
    """Labels tied to word identity: rows are occurrences of 20 word types, each type with its
    own random label. A probe scores high by memorising types, and as high on the control task."""
    rng = np.random.default_rng(0)
    types = rng.integers(0, 20, size=240)
    emb = rng.normal(size=(20, 32))
    y = rng.permutation(np.repeat([0, 1], 10))[types]
    X = (emb[types] + 0.1 * rng.normal(size=(240, 32)))[:, None, None, :]
    res = probe_layers(X, y, LogisticRegression(C=10.0), cv=5, control=types,
                       scoring="accuracy", random_state=0)
    st = res.statistics().iloc[0]
    assert st["mean"] > 0.9 and st["control"] > 0.85
    assert abs(st["selectivity"]) < 0.1


def test_control_labels_are_consistent_per_type_and_drawn_from_y():
    y = np.array([0, 0, 0, 1] * 50)
    types = np.arange(200) % 37
    c = control_labels(y, types, random_state=1)
    for t in range(37):
        assert len(set(c[types == t])) == 1
    assert set(c) <= {0, 1}
    np.testing.assert_array_equal(c, control_labels(y, types, random_state=1))
    assert row_types(np.array([[1, 2], [1, 2], [3, 4]])).tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="one per sample"):
        control_labels(y, types[:10])


# --------------------------------------------------------- against scikit-learn
def test_permutation_scores_equal_permutation_test_score():
    X, y = _planted(n=60, seed=1, strength=0.6)
    splits = list(StratifiedKFold(4).split(X[:, 0, 0], y))
    res = probe_layers(X, y, FAST, cv=splits, n_permutations=15, random_state=7,
                       scoring="roc_auc", nested=False)
    for layer in (0, 1):
        score, null, p = permutation_test_score(clone(FAST), X[:, layer, 0], y, cv=splits,
                                                n_permutations=15, random_state=7,
                                                scoring="roc_auc")
        f = res.frame_[res.frame_["layer"] == layer]
        np.testing.assert_allclose(f[f["metric"] == "perm:roc_auc"].sort_values("fold")["score"],
                                   null, rtol=1e-12)
        st = res.statistics().set_index("layer").loc[layer]
        assert st["mean"] == pytest.approx(score) and st["p_value"] == pytest.approx(p)


def test_permutations_with_groups_equal_permutation_test_score():
    X, y = _planted(n=60, seed=2, strength=0.6)
    groups = np.arange(60) // 3
    res = probe_layers(X, y, FAST, cv=3, groups=groups, n_permutations=8, random_state=3,
                       scoring="accuracy", nested=False, layers=[1], layout=blocks_by_position(X))
    from sklearn.model_selection import StratifiedGroupKFold

    splits = list(StratifiedGroupKFold(3).split(X[:, 1, 0], y, groups))
    _, null, p = permutation_test_score(clone(FAST), X[:, 1, 0], y, groups=groups, cv=splits,
                                        n_permutations=8, random_state=3, scoring="accuracy")
    f = res.frame_
    np.testing.assert_allclose(f[f["metric"] == "perm:accuracy"]["score"], null)
    assert res.statistics()["p_value"].item() == pytest.approx(p)


def _take(A, where):
    return A[:, where]


def test_selection_free_estimate_equals_nested_grid_search():
    """For every fold, GridSearchCV over the slices with the other folds as its inner CV, refitted
    on the training side and scored on the fold: scikit-learn's own nested cross-validation."""
    X, y = _planted(n=80, seed=5, L=3, P=2, strength=0.5)
    res = probe_layers(X, y, FAST, cv=4, scoring=["roc_auc", "accuracy"])
    splits = list(StratifiedKFold(4).split(X[:, 0, 0], y))
    flat = X.reshape(len(X), -1)
    cols = np.arange(flat.shape[1]).reshape(X.shape[1:])
    grid = [cols[layer, part] for layer in range(3) for part in range(2)]
    pipe = make_pipeline(FunctionTransformer(_take, kw_args={"where": grid[0]}), clone(FAST))
    sf = res.selection_free()
    sf_acc = res.selection_free("accuracy")
    for k, (tr, te) in enumerate(splits):
        pos = {r: i for i, r in enumerate(tr)}
        inner = [(np.array([pos[r] for r in tr if r not in set(splits[j][1])]),
                  np.array([pos[r] for r in splits[j][1]])) for j in range(4) if j != k]
        gs = GridSearchCV(pipe, {"functiontransformer__kw_args": [{"where": g} for g in grid]},
                          cv=inner, scoring={"roc_auc": "roc_auc", "accuracy": "accuracy"},
                          refit="roc_auc").fit(flat[tr], y[tr])
        assert sf["scores"][k] == pytest.approx(gs.score(flat[te], y[te]))
        assert sf_acc["scores"][k] == pytest.approx(gs.best_estimator_.score(flat[te], y[te]))


def test_plain_scores_still_equal_cross_validate():
    X, y = _planted(n=60, seed=6)
    res = probe_layers(X, y, FAST, cv=3, control=True, n_permutations=2, random_state=0,
                       scoring="accuracy")
    ref = cross_validate(clone(FAST), X[:, 1, 0], y, cv=3)["test_score"]
    f = res.frame_
    got = f[(f["layer"] == 1) & (f["metric"] == "accuracy")].sort_values("fold")["score"]
    np.testing.assert_allclose(got, ref)
    assert res.metrics == ["accuracy"]


# ---------------------------------------------------------------------- MDL
def test_mdl_equals_a_hand_computation_of_the_online_code():
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2] * 10)
    X = rng.normal(size=(30, 3)) + y[:, None]
    est = LogisticRegression(C=0.5)
    bits, uniform = online_codelength(est, X, y, fractions=(0.1, 0.3, 0.6, 1.0), shuffle=False)
    # blocks end at 3 (10%; it holds all three classes), 9, 18 and 30 rows
    assert block_ends(y, (0.1, 0.3, 0.6, 1.0)) == [3, 9, 18, 30]
    hand = 3 * math.log2(3)
    for start, stop in [(3, 9), (9, 18), (18, 30)]:
        model = clone(est).fit(X[:start], y[:start])
        p = model.predict_proba(X[start:stop])
        hand += sum(-math.log2(p[i, y[start + i]]) for i in range(stop - start))
    assert bits == pytest.approx(hand) and uniform == pytest.approx(30 * math.log2(3))


def test_mdl_is_lower_for_the_planted_slice():
    X, y = _planted(n=120, seed=1, L=3, P=1, strength=1.5)
    res = probe_layers(X, y, FAST, cv=3, mdl=True, random_state=0, scoring="accuracy",
                       nested=False)
    st = res.statistics().set_index("layer")
    assert st["mdl_bits"].idxmin() == 1 and st.loc[1, "compression"] > 1.3
    assert (st.drop(index=1)["compression"] < 1.1).all()
    assert (st["uniform_bits"] == 120).all()
    ref = online_codelength(FAST, X[:, 1, 0], y, random_state=0)
    assert st.loc[1, "mdl_bits"] == pytest.approx(ref[0])
    with pytest.raises(ValueError, match="classification"):
        probe_layers(X, np.linspace(0, 1, 120), mdl=True)


# ------------------------------------------------------------------ intervals
def test_intervals_and_comparisons_equal_the_corrected_t_formula():
    s = np.array([0.8, 0.9, 0.85, 0.95, 0.9])
    mean, low, high = corrected_interval(s)
    half = student.ppf(0.975, 4) * s.std(ddof=1) * math.sqrt(1 / 5 + 1 / 4)
    assert (low, high) == pytest.approx((s.mean() - half, s.mean() + half))
    X, y = _planted(n=100, seed=3, L=2, P=1, strength=0.8)
    res = probe_layers(X, y, FAST, cv=5, scoring="roc_auc")
    f = res.frame_[res.frame_["metric"] == "roc_auc"]
    a = f[f["layer"] == 1].sort_values("fold")["score"].to_numpy()
    b = f[f["layer"] == 0].sort_values("fold")["score"].to_numpy()
    c = res.compare((1, "part0"), (0, "part0"))
    d = a - b
    se = d.std(ddof=1) * math.sqrt(1 / 5 + 1 / 4)
    assert c["diff"] == pytest.approx(d.mean())
    assert c["p_value"] == pytest.approx(2 * student.sf(abs(d.mean() / se), 4))
    assert c["low"] > 0 and c["p_value"] < 0.05
    summ = res.summary("roc_auc", confidence=0.9).set_index("layer")
    assert summ.loc[1, "ci_low"] == pytest.approx(min(corrected_interval(a, 0.9)[1], 1.0))
    with pytest.raises(ValueError, match="exactly one probe"):
        res.compare((7, "part0"), (0, "part0"))


def test_holm_and_bonferroni_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 times 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09, 0.5
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, 0.5])
    np.testing.assert_allclose(bonferroni(p), [0.04, 0.16, 0.12, 1.0])


def test_table_shows_the_selection_free_row_and_the_statistics():
    X, y = _planted(n=60, seed=0)
    res = probe_layers(X, y, FAST, cv=3, control=True, mdl=True, n_permutations=3,
                       random_state=0, scoring=["accuracy", "roc_auc"])
    table = res.table()
    assert table["part"].tolist()[:2] == ["dummy", "selection-free"]
    assert {"selectivity", "p (holm)", "compression"} <= set(table.columns)
    sf = res.selection_free("accuracy")
    assert table.loc[1, "accuracy"] == f"{sf['mean']:.3f} ± {sf['std']:.3f}"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"n_permutations": -1}, ValueError,
     r"'n_permutations' parameter of probe_layers must be an int in the range \[0, inf\)\. "
     r"Got -1 instead"),
    ({"nested": "yes"}, TypeError,
     r"'nested' parameter of probe_layers must be an instance of 'bool' or an instance of "
     r"'numpy.bool'\. Got 'yes' instead"),
    ({"control": np.zeros(3)}, ValueError, "one per sample"),
])
def test_bad_analysis_options_fail_before_fitting(kwargs, error, match):
    X, y = _noise(20, 0)
    with pytest.raises(error, match=match):
        probe_layers(X, y, cv=2, **kwargs)


def test_selection_free_for_regression_and_for_folds_that_do_not_partition():
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import ShuffleSplit

    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 3, 1, 4))
    target = X[:, 2, 0, 0] * 2 + 0.3 * rng.normal(size=90)
    res = probe_layers(X, target, Ridge(), cv=4, task="regression")
    sf = res.selection_free()
    assert sf["metric"] == "r2" and sf["low"] > 0.5
    assert all(c["layer"] == "2" for c in sf["chosen"])
    # ShuffleSplit folds overlap: each training side gets its own inner 3-fold CV
    y = (target > 0).astype(int)
    res = probe_layers(X, y, FAST, cv=ShuffleSplit(3, test_size=0.3, random_state=0),
                       scoring="roc_auc")
    inner = res.frame_[res.frame_["metric"] == "inner:roc_auc"]
    assert len(inner) == 3 * 3 and res.selection_free()["low"] > 0.5


def _flat_frame(seed=0, k=5, worse=0.2):
    """Six probes (layers 0-2 x parts a, b) with the same signal: fold scores share a fold effect
    and differ by small noise; layer 2 of part b is clearly worse."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    fold = rng.normal(0.9, 0.02, size=k)
    rows = []
    for layer in range(3):
        for part in ("a", "b"):
            drop = worse if (layer, part) == (2, "b") else 0.0
            for f, s in enumerate(fold + rng.normal(0, 0.01, size=k) - drop):
                rows.append({"layer": layer, "part": part, "metric": "roc_auc", "fold": f,
                             "score": s})
    rows += [{"layer": None, "part": "dummy", "metric": "roc_auc", "fold": f, "score": 0.5}
             for f in range(k)]
    return pd.DataFrame(rows)


def test_near_best_is_the_corrected_paired_t_test_against_the_best():
    from embetter_plug import ProbeResults

    frame = _flat_frame()
    res = ProbeResults(frame)
    best = res.best()
    near = res.near_best()
    ref = frame[(frame.layer == best["layer"]) & (frame.part == best["part"])]["score"].to_numpy()
    for _, row in near.iterrows():
        s = frame[(frame.layer == int(row["layer"])) & (frame.part == row["part"])]["score"]
        d = s.to_numpy() - ref
        k = len(d)
        se = d.std(ddof=1) * math.sqrt(1 / k + 1 / (k - 1))
        p = 1.0 if se == 0 else 2 * student.sf(abs(d.mean() / se), k - 1)
        assert row["p_value"] == pytest.approx(p, rel=1e-9, abs=1e-12)
        assert row["near_best"] == bool(p >= 0.05)
    marked = near.loc[near["near_best"], ["layer", "part"]].astype(str).agg(" ".join, axis=1)
    assert set(marked) == {"0 a", "0 b", "1 a", "1 b", "2 a"}  # all but the worse probe
    table = res.table(["roc_auc"])
    mark = dict(zip(table["layer"] + " " + table["part"], table["best"]))
    assert mark[f"{best['layer']} {best['part']}"] == "*" and mark["2 b"] == ""
    assert sorted(v for k, v in mark.items() if k not in ("2 b", "- dummy")) == sorted(
        ["*"] + ["~"] * 4)


def test_flat_result_reads_within_noise_of_the_best(capsys):
    """The command line's best line says in words which probes cannot be told apart from it."""
    from embetter_plug import ProbeResults
    from embetter_plug.cli.probe import _print_table

    frame = _flat_frame(worse=0.0)  # every probe the same
    _print_table(ProbeResults(frame).with_context(dataset="d"), "classification")
    out = capsys.readouterr().out
    assert "layers 0-2, all parts, are within noise of the best (marked ~" in out
    best_line = next(l for l in out.splitlines() if l.startswith("best:"))
    assert "within noise" in best_line and "warning" not in out
    _print_table(ProbeResults(_flat_frame()).with_context(dataset="d"), "classification")
    assert "; all probes but layer 2 b are within noise of the best (marked ~" in capsys.readouterr().out
    apart = ProbeResults(_flat_frame().assign(score=lambda f: np.where(
        (f.layer == 0) & (f.part == "a"), f.score + 0.05, f.score - 0.1 * f.layer.fillna(0))))
    _print_table(apart.with_context(dataset="d"), "classification")
    out = capsys.readouterr().out
    assert "best: layer 0 a" in out and "no other probe is within noise of it" in out


class _RecordingProbe(LogisticRegression):
    """A logistic regression that records the BLAS thread counts it is fitted under."""

    seen: list = []

    def fit(self, X, y, sample_weight=None):
        from threadpoolctl import threadpool_info

        type(self).seen.append([i["num_threads"] for i in threadpool_info()
                                if i["user_api"] == "blas"])
        return super().fit(X, y, sample_weight)


def test_probe_fits_run_with_one_blas_thread():
    """Many small fits: BLAS threads only add CPU time, so each probe runs with one; the caller's
    own setting is back afterwards. Scores are those of cross_validate, unchanged."""
    from threadpoolctl import threadpool_info, threadpool_limits

    X, y = _noise(40, 0)
    X[:, 1, 0, 0] += 2 * y
    _RecordingProbe.seen = []
    with threadpool_limits(limits=2, user_api="blas"):
        res = probe_layers(X, y, _RecordingProbe(), cv=2, nested=False, layers=[1], parts=[0],
                           layout=blocks_by_position(X))
        after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert _RecordingProbe.seen and all(n == [1] * len(n) for n in _RecordingProbe.seen)
    assert after and all(n == 2 for n in after)
    ref = cross_validate(_RecordingProbe(), X[:, 1, 0], y, cv=StratifiedKFold(2),
                         scoring="accuracy")["test_score"]
    got = res.frame_.query("metric == 'accuracy' and part != 'dummy'").sort_values("fold")
    np.testing.assert_allclose(got["score"], ref)


def test_cli_sets_passive_openmp_waiting_unless_the_user_did(monkeypatch, capsys):
    from embetter_plug.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    main([])
    assert __import__("os").environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main([])
    assert __import__("os").environ["OMP_WAIT_POLICY"] == "ACTIVE"
