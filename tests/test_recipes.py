"""select_recipe and `embetter-plug train` / `predict`: recipes compared on training rows only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from embetter_plug import TransformerActivationEncoder, load_model
from embetter_plug.recipes import Recipe, plan_recipes, select_recipe
from embetter_plug.recipes import select as select_mod
from embetter_plug.testing import make_tiny_model, save_tiny_model

TEXTS = ["good film", "great film", "lovely film", "fine acting",
         "bad film", "awful film", "poor film", "dull acting"] * 5
Y = np.array((["pos"] * 4 + ["neg"] * 4) * 5)


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("bert", seed=4)


def test_planted_best_recipe_is_picked(tiny):
    """A recipe that cannot beat chance next to one that separates the classes: the latter wins,
    and its accuracy is scikit-learn's own cross_val_predict on the same activations and folds."""
    model, tok = tiny
    recipes = [Recipe("chance", "most frequent class", layers=[2],
                      head=lambda: DummyClassifier(strategy="most_frequent")),
               Recipe("planted", "LR on the last layer", layers=[2],
                      head=lambda: LogisticRegression(C=10.0, max_iter=1000))]
    sel = select_recipe(TEXTS, Y, model=model, tokenizer=tok, cv=2, budget=5, recipes=recipes)
    assert sel.best == "planted" and sel.scheme == "cv"
    enc = TransformerActivationEncoder(model, tok, layers=[2], dtype="float32", device="cpu")
    X = np.asarray(enc.fit_transform(TEXTS))[:, 0, 0, :]
    folds = StratifiedKFold(2, shuffle=True, random_state=0)
    want = np.mean(cross_val_predict(LogisticRegression(C=10.0, max_iter=1000), X, Y, cv=folds) == Y)
    got = sel.results.set_index("recipe")
    assert got.loc["planted", "accuracy"] == pytest.approx(want)
    assert got.loc["chance", "accuracy"] == pytest.approx(0.5)
    assert got.loc["planted", "low"] < want <= got.loc["planted", "high"]
    assert (sel.pipeline.predict(TEXTS) == LogisticRegression(C=10.0, max_iter=1000)
            .fit(X, Y).predict(X)).all()


def test_default_recipes_run_and_refit(tiny):
    model, tok = tiny
    sel = select_recipe(TEXTS, Y, model=model, tokenizer=tok, cv=2, budget=5,
                        tuner_params={"max_epochs": 1})
    assert list(sel.results["recipe"]) == ["embedding_lr", "layers_lr", "plug_classifier",
                                           "fine_tune"]
    assert (sel.results["status"] == "scored").all()
    assert set(sel.pipeline.predict(TEXTS)) <= {"pos", "neg"}


def _cost(value):
    return lambda **_: value


def test_plan_falls_back_to_a_split_then_skips_the_dearest():
    recipes = [Recipe("cheap", "", layers=[0], cost=_cost(10.0)),
               Recipe("dear", "", layers=[0], cost=_cost(100.0))]
    kw = dict(n=100, cv=5, d=8, k=2, tokens=0.0, sec_per_token=0.0)
    assert plan_recipes(recipes, 1000, **kw)[0] == "cv"        # 5 x 110 + 100 refit
    scheme, est, skipped = plan_recipes(recipes, 300, **kw)    # 110 + 100 refit
    assert scheme == "split" and set(est) == {"cheap", "dear"} and not skipped
    scheme, est, skipped = plan_recipes(recipes, 50, **kw)
    assert set(est) == {"cheap"} and "dear" in skipped
    with pytest.raises(ValueError, match="too small for any recipe"):
        plan_recipes(recipes, 5, **kw)


@pytest.mark.parametrize("texts, y, kw, match", [
    (TEXTS, ["pos"] * len(TEXTS), {}, "single class"),
    (TEXTS, Y[:-1], {}, "one label per text"),
    (TEXTS[:6], Y[:6], {"cv": 2}, "needs at least 4 per class"),
    (TEXTS, Y, {"budget": 1e-6}, "too small for any recipe"),
])
def test_bad_inputs_fail_before_training(tiny, monkeypatch, texts, y, kw, match):
    model, tok = tiny
    for name in ("_score_frozen", "_score_tuner", "_refit"):
        monkeypatch.setattr(select_mod, name, lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=match):
        select_recipe(texts, y, model=model, tokenizer=tok, **{"cv": 2, **kw})


def test_cli_train_predict_round_trip_and_resume(tmp_path, monkeypatch, capsys):
    from embetter_plug.cli import main

    folder = save_tiny_model("bert", tmp_path / "tiny", seed=4)
    pd.DataFrame({"text": TEXTS, "label": Y}).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": TEXTS[:6]}).to_csv(tmp_path / "new.csv", index=False)
    run = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "train.csv"), "--model", str(folder), "--cv", "2",
            "--epochs", "1", "--budget", "5", "--out", str(run), "--quiet"]
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "best:" in shown and "fine_tune" in shown
    results = pd.read_csv(run / "results.csv")
    assert len(results) == 4 and (run / "recipes.png").is_file()
    assert not list(run.rglob("*.pkl")) and not list(run.rglob("*.joblib"))
    assert main(["predict", "--model", str(run / "best_pipeline"), "--data",
                 str(tmp_path / "new.csv"), "--out", str(tmp_path / "pred.csv")]) == 0
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert (pred["prediction"] == load_model(run / "best_pipeline").predict(TEXTS[:6])).all()
    # the same command again resumes: no recipe is scored again
    for name in ("_score_frozen", "_score_tuner"):
        monkeypatch.setattr(select_mod, name, lambda *a, **k: pytest.fail("scored again"))
    assert main(argv) == 0
    assert "resuming" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(run / "results.csv")[["recipe", "accuracy"]],
                                  results[["recipe", "accuracy"]])


def test_cli_train_refuses_a_budget_too_small(tmp_path, capsys):
    from embetter_plug.cli import main

    folder = save_tiny_model("bert", tmp_path / "tiny", seed=4)
    pd.DataFrame({"text": TEXTS, "label": Y}).to_csv(tmp_path / "train.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--model", str(folder),
                 "--budget", "0.00001", "--cv", "2", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 2
    assert "too small for any recipe" in capsys.readouterr().err


def test_recipe_combine_is_the_poolers_and_pool_its_deprecated_name():
    from embetter_plug.recipes.select import _score_frozen

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4, 1, 6))
    y = np.where(X[:, [1, 3], 0, 0].max(1) > 0.3, "a", "b")
    folds = list(StratifiedKFold(2, shuffle=True, random_state=0).split(X[:, 0, 0], y))
    recipe = Recipe("max", "", layers=[1, 3], combine="max",
                    head=lambda: LogisticRegression(max_iter=1000))
    want = np.empty(len(y), dtype=object)
    Xr = X[:, [1, 3], 0].max(1)
    for train, test in folds:
        want[test] = LogisticRegression(max_iter=1000).fit(Xr[train], y[train]).predict(Xr[test])
    np.testing.assert_array_equal(_score_frozen(recipe, X, y, folds), want)
    with pytest.warns(FutureWarning, match=r"`pool` was renamed `combine`.*combine='max'"):
        old = Recipe("max", "", layers=[1, 3], pool="max",
                     head=lambda: LogisticRegression(max_iter=1000))
    assert old.combine == "max" and old.pool is None
    np.testing.assert_array_equal(_score_frozen(old, X, y, folds), want)
