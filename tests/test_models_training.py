"""Training behaviour: early stopping restores the best epoch, validation rows come from fit's
data only, determinism, grid search over input width and module params, cross-validation,
saving and loading."""

from __future__ import annotations

import json
import pickle

import logging

import joblib
import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, cross_val_predict, cross_validate
from sklearn.pipeline import Pipeline
from skorch.callbacks import Callback, EpochScoring

from conftest import blocks_by_position
from embetter_plug import (LayerPooler, PlugClassifier, PlugContrastiveCNN, PlugRegressor,
                           load_model, save_model)

FAST = dict(n_jobs=1, random_state=0, device="cpu")


def noisy(n=200, shape=(2, 2, 8), seed=0, noise=1.5, classes=(0, 1)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, *shape)).astype(np.float32)
    score = X.reshape(n, -1)[:, 0] + noise * rng.normal(size=n)
    y = np.asarray(classes)[(score > 0).astype(int)]
    return X, y


class Recorder(Callback):
    """Keeps every epoch's weights and the rows skorch validated on."""

    def initialize(self):
        self.states, self.valid_X, self.train_n = {}, None, None
        return self

    def on_epoch_end(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        epoch = net.history[-1, "epoch"]
        self.states[epoch] = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}
        if dataset_valid is not None:
            self.valid_X = np.stack([np.asarray(dataset_valid[i][0]) for i in range(len(dataset_valid))])
            self.train_n = len(dataset_train)


def test_early_stopping_restores_the_best_validation_epoch():
    X, y = noisy()
    rec = Recorder()
    clf = PlugClassifier(max_epochs=25, lr=2e-2, batch_size=32, patience=25, callbacks=[rec],
                         lr_scheduler=None, **FAST).fit(X, y)
    hist = clf.net_.history
    aucs = np.array(hist[:, "valid_auc"])
    best = int(np.argmax(aucs)) + 1  # first epoch reaching the maximum
    assert clf.best_epoch_ == best < clf.n_epochs_ == 25  # training went on past the best epoch
    module = clf.net_.module_
    weights = dict(module.named_parameters())  # learned weights (batch-norm buffers are refreshed)
    for k, v in weights.items():
        torch.testing.assert_close(v.detach(), rec.states[best][k], rtol=0, atol=0)
    assert any(not torch.equal(v.detach(), rec.states[25][k]) for k, v in weights.items())
    # that epoch's state (with its buffers) scores the best AUC on the validation rows
    module.load_state_dict(rec.states[best])
    idx = clf.validation_indices_
    auc = roc_auc_score(y[idx] == clf.classes_[1], clf.predict_proba(X[idx])[:, 1])
    assert auc == pytest.approx(aucs.max(), abs=1e-6)


def test_early_stopping_stops_after_patience():
    X, y = noisy(seed=1)
    clf = PlugClassifier(max_epochs=60, lr=2e-2, batch_size=32, patience=3, **FAST).fit(X, y)
    aucs = np.array(clf.net_.history[:, "valid_auc"])
    assert clf.n_epochs_ < 60 and clf.n_epochs_ - clf.best_epoch_ == 3
    assert aucs[clf.best_epoch_ - 1] == aucs.max()


class ValidScores(Callback):
    """Scores the validation rows at each epoch end from the module's raw output (logits)."""

    def initialize(self):
        self.scores = []
        return self

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        rows = [dataset_valid[i] for i in range(len(dataset_valid))]
        Xv = np.stack([np.asarray(r[0]) for r in rows])
        yv = np.array([int(r[1]) for r in rows])
        with torch.no_grad():
            out = net.forward(Xv, training=False)
        proba = softmax((out[0] if isinstance(out, tuple) else out).double().numpy(), axis=1)
        self.scores.append({"accuracy": accuracy_score(yv, proba.argmax(1)),
                            "f1": f1_score(yv, proba.argmax(1)), "roc_auc": roc_auc_score(yv, proba[:, 1])})


@pytest.mark.parametrize("Est", [PlugClassifier, PlugContrastiveCNN])
def test_skorch_scoring_callbacks_score_the_classes(Est):
    X, y = noisy(n=120, classes=("neg", "pos"))
    ref = ValidScores()
    names = ["accuracy", "f1", "roc_auc"]
    scorers = [(n, EpochScoring(n, lower_is_better=False)) for n in names]
    kw = dict(module__channels=8, module__proj_dim=8) if Est is PlugContrastiveCNN else {}
    clf = Est(max_epochs=3, validation_fraction=0.3, callbacks=[*scorers, ref], **kw, **FAST).fit(X, y)
    for name in names:
        np.testing.assert_allclose(clf.net_.history[:, name], [s[name] for s in ref.scores], atol=1e-12)
    # the inner net predicts class indices; the estimator maps them to the labels
    assert clf.net_.classes_.tolist() == [0, 1]
    idx = clf.net_.predict(clf._module_input(X))
    np.testing.assert_array_equal(clf.classes_[idx], clf.predict(X))
    np.testing.assert_allclose(clf.net_.predict_proba(clf._module_input(X)), clf.predict_proba(X), atol=1e-6)
    pickle.loads(pickle.dumps(clf))


def test_epoch_table_log_records_are_plain_text(caplog):
    X, y = noisy(n=80)
    with caplog.at_level(logging.INFO, logger="embetter_plug"):
        clf = PlugClassifier(max_epochs=3, **FAST).fit(X, y)
    lines = [r.getMessage() for r in caplog.records if r.name == "embetter_plug"]
    assert lines[0].split()[:3] == ["epoch", "train_loss", "valid_auc"]
    rows = [line.split() for line in lines[2:5]]
    hist = clf.net_.history
    assert [r[:3] for r in rows] == [[str(e), f"{hist[e - 1, 'train_loss']:.4f}",
                                      f"{hist[e - 1, 'valid_auc']:.4f}"] for e in (1, 2, 3)]
    assert not any("\x1b" in line for line in lines)


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_verbose_shows_one_bar_over_epochs(verbose, capsys):
    X, y = noisy(seed=1)
    clf = PlugClassifier(max_epochs=60, lr=2e-2, batch_size=32, patience=3, verbose=verbose, **FAST).fit(X, y)
    err = capsys.readouterr().err
    callbacks = dict(clf.net_.callbacks_)
    if not verbose:
        assert err == "" and "epoch_progress_bar" not in callbacks
        return
    bar = callbacks["epoch_progress_bar"].pbar_
    assert clf.n_epochs_ < 60  # early stopping ends the bar before its total
    assert (bar.total, bar.n) == (60, clf.n_epochs_)
    assert "PlugClassifier:" in err and f"| {clf.n_epochs_}/60 [" in err
    assert ("progress_bar" in callbacks) == (verbose >= 2)  # skorch's bar over batches too
    pickle.loads(pickle.dumps(clf))  # the bar itself is not pickled

def test_validation_rows_come_only_from_fit_data():
    X, y = noisy(n=240, classes=("n", "p"))
    X_fit, y_fit, X_out = X[:200], y[:200], X[200:]
    rec = Recorder()
    clf = PlugClassifier(max_epochs=2, validation_fraction=0.2, callbacks=[rec], **FAST).fit(X_fit, y_fit)
    idx = clf.validation_indices_
    assert len(idx) == 40 and rec.train_n == 160 and len(set(idx)) == 40
    assert idx.min() >= 0 and idx.max() < 200
    np.testing.assert_array_equal(rec.valid_X, X_fit[idx].reshape(40, -1))  # the rows scored
    # stratified: the class balance of the validation rows follows fit's labels
    assert abs((y_fit[idx] == "p").mean() - (y_fit == "p").mean()) <= 1 / 40
    flat_out = {row.tobytes() for row in X_out.reshape(len(X_out), -1)}
    assert not any(row.tobytes() in flat_out for row in rec.valid_X)


@pytest.mark.parametrize("Est", [PlugClassifier, PlugRegressor, PlugContrastiveCNN])
def test_deterministic_with_random_state(Est):
    X, y = noisy(n=80)
    kw = dict(max_epochs=3, n_jobs=1, device="cpu")
    if Est is PlugContrastiveCNN:
        kw.update(module__channels=8, module__proj_dim=8)
    a = Est(random_state=3, **kw).fit(X, y).predict(X)
    b = Est(random_state=3, **kw).fit(X, y).predict(X)
    c = Est(random_state=4, **kw).fit(X, y)
    np.testing.assert_array_equal(a, b)
    out = c.predict_proba(X) if hasattr(c, "predict_proba") else c.predict(X)
    ref = Est(random_state=3, **kw).fit(X, y)
    assert not np.array_equal(out, ref.predict_proba(X) if hasattr(ref, "predict_proba") else ref.predict(X))


def test_grid_search_over_pooler_layers_and_module_params():
    X, y = noisy(n=120, shape=(3, 2, 6))
    pipe = Pipeline([("pool", LayerPooler(layout=blocks_by_position(X))),
                     ("clf", PlugClassifier(max_epochs=2, **FAST))])
    grid = {"pool__layers": [[0], [0, 2]], "clf__module__dropout": [0.0, 0.3], "clf__lr": [1e-3, 1e-2]}
    search = GridSearchCV(pipe, grid, cv=2, scoring="roc_auc").fit(X, y)
    assert len(search.cv_results_["params"]) == 8
    best = search.best_estimator_
    width = len(best.named_steps["pool"].layer_idx_) * 2 * 6
    assert best.named_steps["clf"].net_.module_.fc1[0].in_features == width
    assert best.named_steps["clf"].module__dropout == search.best_params_["clf__module__dropout"]
    assert best.predict_proba(X).shape == (120, 2)


def test_cnn_in_grid_search_on_4d_activations():
    X, y = noisy(n=80, shape=(4, 3, 6))
    cnn = PlugContrastiveCNN(max_epochs=2, module__channels=8, **FAST)
    search = GridSearchCV(cnn, {"module__proj_dim": [4, 8], "lr": [1e-3, 1e-2]}, cv=2).fit(X, y)
    assert search.best_estimator_.transform(X).shape == (80, search.best_params_["module__proj_dim"])


def test_cross_validate_and_cross_val_predict():
    X, y = noisy(n=100, classes=("a", "b"))
    clf = PlugClassifier(max_epochs=2, **FAST)
    res = cross_validate(clf, X, y, cv=3, scoring=["accuracy", "roc_auc", "f1_macro"])
    assert np.isfinite(res["test_roc_auc"]).all() and len(res["test_accuracy"]) == 3
    proba = cross_val_predict(clf, X, y, cv=3, method="predict_proba")
    assert proba.shape == (100, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


# ---------------------------------------------------------------- saving
@pytest.mark.parametrize("labels", [(3, 7), ("neg", "pos", "mid")])
def test_save_load_classifiers_round_trip(tmp_path, labels):
    X, _ = noisy(n=60, shape=(2, 3, 4))
    y = np.asarray(labels)[np.arange(60) % len(labels)]
    models = [PlugClassifier(max_epochs=2, class_weight={labels[0]: 2.0, labels[1]: 1.0,
                                                           **({labels[2]: 0.5} if len(labels) > 2 else {})},
                             optimizer=torch.optim.Adam, **FAST),
              PlugContrastiveCNN(max_epochs=2, module__channels=4, module__proj_dim=4, **FAST)]
    for i, model in enumerate(models):
        model.fit(X, y)
        folder = save_model(model, tmp_path / f"m{i}")
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        json.loads((folder / "config.json").read_text())
        again = load_model(folder)
        assert type(again) is type(model) and again.get_params() == model.get_params()
        np.testing.assert_array_equal(again.classes_, model.classes_)
        assert again.classes_.dtype == model.classes_.dtype
        np.testing.assert_array_equal(again.predict(X), model.predict(X))
        np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
        if hasattr(model, "transform"):
            np.testing.assert_array_equal(again.transform(X), model.transform(X))


def test_save_load_regressor_and_pickle(tmp_path):
    X, _ = noisy(n=50)
    y = X[:, 0, 0, 0] * 2
    reg = PlugRegressor(max_epochs=2, callbacks=[Recorder()], **FAST).fit(X, y)
    again = load_model(save_model(reg, tmp_path / "reg"), device="cpu")
    assert again.callbacks is None  # not JSON: dropped, with a warning
    np.testing.assert_array_equal(again.predict(X), reg.predict(X))
    for blob in (pickle.dumps(reg),):
        np.testing.assert_array_equal(pickle.loads(blob).predict(X), reg.predict(X))
    joblib.dump(reg, tmp_path / "reg.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "reg.joblib").predict(X), reg.predict(X))


def test_load_model_rejects_foreign_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved model"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "x", "estimator": "os.system"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a model saved"):
        load_model(tmp_path)
    with pytest.raises(TypeError, match="save_model saves fitted scikit-learn estimators"):
        save_model(object(), tmp_path / "p")
    with pytest.raises(NotFittedError):
        save_model(LayerPooler(), tmp_path / "p")


def test_batch_norm_statistics_match_the_final_weights():
    X, y = noisy(n=96, shape=(12,))
    clf = PlugClassifier(max_epochs=4, lr=2e-2, batch_size=32, early_stopping=False, **FAST).fit(X, y)
    lin, bn = clf.net_.module_.fc1[0], clf.net_.module_.fc1[1]
    with torch.no_grad():
        h = lin(torch.as_tensor(X)).numpy()
    # three equal batches of 32: the average of their means is the mean over fit's rows
    np.testing.assert_allclose(bn.running_mean.numpy(), h.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_save_numpy_scalar_module_param(tmp_path):
    X, _ = noisy(n=40)
    y = X[:, 0, 0, 0] * 2
    reg = PlugRegressor(max_epochs=1, module__hidden_units=np.int64(8), **FAST).fit(X, y)
    again = load_model(save_model(reg, tmp_path / "np"), device="cpu")
    assert again.net_.module_.fc1[0].out_features == 8
    np.testing.assert_array_equal(again.predict(X), reg.predict(X))
