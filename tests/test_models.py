"""PlugClassifier, PlugRegressor, PlugContrastiveCNN: labels, outputs, architecture, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import r2_score
from sklearn.utils.class_weight import compute_class_weight

from embetter_plug import PlugClassifier, PlugContrastiveCNN, PlugRegressor
from embetter_plug._constraints import InvalidParameterError
from embetter_plug._utils import resolve_device
from skorch.callbacks import EpochTimer

FAST = dict(n_jobs=1, random_state=0, device="cpu")


def blobs(n=120, shape=(3, 2, 8), classes=(0, 1), seed=0, shift=3.0):
    """Activations whose class shifts layer 1 of part 0."""
    rng = np.random.default_rng(seed)
    y = np.asarray(classes)[np.arange(n) % len(classes)]
    X = rng.normal(size=(n, *shape)).astype(np.float32)
    codes = np.searchsorted(np.sort(np.unique(y)), y) if y.dtype.kind in "iu" else \
        np.unique(y, return_inverse=True)[1]
    lph = shape if len(shape) == 3 else (shape[0], 1, shape[1]) if len(shape) == 2 else (1, 1, *shape)
    X.reshape(n, *lph)[:, min(1, lph[0] - 1), 0, : len(classes)] += shift * np.eye(len(classes))[codes]
    return X, y


@pytest.mark.parametrize("classes", [(3, 7), ("cat", "dog", "eel"), (True, False)])
def test_classifier_any_labels(classes):
    X, y = blobs(classes=classes)
    clf = PlugClassifier(max_epochs=15, lr=1e-2, early_stopping=False, **FAST).fit(X, y)
    np.testing.assert_array_equal(clf.classes_, np.unique(y))
    pred = clf.predict(X)
    assert pred.dtype == np.unique(y).dtype and set(pred) <= set(y)
    assert (pred == y).mean() > 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), len(classes))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(axis=1)])
    dec = clf.decision_function(X)
    if len(classes) == 2:
        assert dec.shape == (len(X),)
        np.testing.assert_array_equal(dec > 0, pred == clf.classes_[1])
        np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-dec)), rtol=1e-6)
    else:
        assert dec.shape == (len(X), len(classes))
        np.testing.assert_array_equal(dec.argmax(axis=1), proba.argmax(axis=1))


def test_class_weight_balanced_and_dict():
    X, y = blobs(n=90, classes=("a", "b", "c"))
    y = y.copy()
    y[:30] = "a"  # imbalance
    clf = PlugClassifier(max_epochs=1, class_weight="balanced", **FAST).fit(X, y)
    expected = compute_class_weight("balanced", classes=np.unique(y), y=y)
    np.testing.assert_allclose(clf.class_weight_, expected, rtol=1e-6)
    np.testing.assert_allclose(clf.net_.criterion_.weight.numpy(), expected, rtol=1e-6)
    # an extreme dict makes the model predict the heavy class almost everywhere
    rng = np.random.default_rng(1)
    Xn = rng.normal(size=(200, 10)).astype(np.float32)
    yn = np.array(["x", "y"] * 100)
    heavy = PlugClassifier(max_epochs=10, lr=1e-2, class_weight={"x": 1000.0, "y": 1e-3},
                           early_stopping=False, **FAST).fit(Xn, yn)
    plain = PlugClassifier(max_epochs=10, lr=1e-2, early_stopping=False, **FAST).fit(Xn, yn)
    assert (heavy.predict(Xn) == "x").mean() > 0.95 > (plain.predict(Xn) == "x").mean()
    with pytest.raises(ValueError, match="class_weight"):
        PlugClassifier(max_epochs=1, class_weight={"zzz": 2.0}, **FAST).fit(Xn, yn)


def test_last_batch_of_one_sample_does_not_crash():
    X, y = blobs(n=33, shape=(4,))
    for est in (PlugClassifier(max_epochs=2, batch_size=8, early_stopping=False, **FAST),
                PlugRegressor(max_epochs=2, batch_size=8, early_stopping=False, **FAST),
                PlugContrastiveCNN(max_epochs=2, batch_size=8, early_stopping=False,
                                   module__channels=4, module__proj_dim=4, **FAST)):
        est.fit(X, y)  # 33 = 4 * 8 + 1
        assert np.isfinite(est.net_.history[-1, "train_loss"])


def test_regressor_learns_and_returns_floats():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 2, 8)).astype(np.float32)
    y = 2.0 * X[:, 0, 0] - X[:, 1, 3] + 0.1 * rng.normal(size=300)
    reg = PlugRegressor(max_epochs=40, lr=1e-2, **FAST).fit(X[:240], y[:240])
    pred = reg.predict(X[240:])
    assert pred.dtype == np.float64 and pred.shape == (60,)
    assert r2_score(y[240:], pred) > 0.6
    assert "valid_loss" in reg.net_.history[-1]
    assert dict(reg.net_.callbacks_)["early_stopping"].monitor == "valid_loss"


def test_default_device_is_auto():
    X, y = blobs(n=40)
    clf = PlugClassifier(max_epochs=1, n_jobs=1).fit(X, y)
    assert clf.device == "auto" and clf.device_ == resolve_device("auto")


def test_mlp_widths_follow_the_rule():
    for d, (w1, w2, w3) in {10: (128, 64, 64), 100: (400, 200, 64), 600: (1024, 512, 128)}.items():
        X = np.random.default_rng(0).normal(size=(20, d)).astype(np.float32)
        clf = PlugClassifier(max_epochs=1, early_stopping=False, **FAST).fit(X, np.arange(20) % 2)
        m = clf.net_.module_
        assert (m.fc1[0].in_features, m.fc1[0].out_features) == (d, w1)
        assert m.fc2[0].out_features == w2 == m.shortcut[0].out_features
        assert (m.out[0].out_features, m.out[-1].out_features) == (w3, 2)


def test_cnn_channel_rule_and_projection():
    X, y = blobs(n=40, shape=(40, 2, 6))
    cnn = PlugContrastiveCNN(max_epochs=1, module__proj_dim=12, **FAST).fit(X, y)
    convs = [m for m in cnn.net_.module_.encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [160, 320, 12]  # c1 = max(128, 4*40), c2 = 2*c1
    assert convs[0].kernel_size == (2, 5) and convs[1].kernel_size == (2, 3)  # min(3, n_parts)
    Z = cnn.transform(X)
    assert Z.shape == (40, 12) and Z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)
    assert list(cnn.get_feature_names_out()) == [f"plugcontrastivecnn{i}" for i in range(12)]


def _layer_norm(X, norm):
    mu, var = X.mean(-1, keepdims=True), X.var(-1, keepdims=True)
    w, b = norm.weight.detach().numpy(), norm.bias.detach().numpy()
    return (X - mu) / np.sqrt(var + 1e-5) * w + b


@pytest.mark.parametrize("shape", [(5, 3, 6), (5, 6)])
def test_cnn_convolves_layers_and_parts_without_mixing_them(shape):
    X, y = blobs(n=24, shape=shape)
    cnn = PlugContrastiveCNN(max_epochs=1, module__channels=4, module__proj_dim=4, **FAST).fit(X, y)
    seen = []
    hook = cnn.net_.module_.encoder[0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    cnn.predict(X)
    hook.remove()
    grid = torch.cat(seen).numpy()
    if len(shape) == 3:  # (n, layers, parts, hidden) -> (n, hidden, parts, layers)
        expected = _layer_norm(X, cnn.net_.module_.norm).transpose(0, 3, 2, 1)
    else:  # (n, layers, hidden) -> (n, hidden, layers)
        expected = _layer_norm(X, cnn.net_.module_.norm).transpose(0, 2, 1)
    np.testing.assert_allclose(grid, expected, rtol=1e-4, atol=1e-4)


def test_cnn_learns_a_layer_signal():
    X, y = blobs(n=200, shape=(4, 3, 16), classes=("p", "q"), shift=8.0)
    cnn = PlugContrastiveCNN(max_epochs=15, lr=3e-3, batch_size=16, early_stopping=False,
                             module__channels=16, module__proj_dim=16, **FAST).fit(X[:160], y[:160])
    assert (cnn.predict(X[160:]) == y[160:]).mean() > 0.9
    # the projection separates the classes: nearest other sample mostly shares the label
    Z = cnn.transform(X[160:])
    sims = Z @ Z.T - 2 * np.eye(len(Z))
    assert (y[160:][sims.argmax(axis=1)] == y[160:]).mean() > 0.9


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("Est", [PlugClassifier, PlugRegressor, PlugContrastiveCNN])
def test_bad_input_errors(Est):
    X, y = blobs(n=40)
    est = Est(max_epochs=1, **FAST)
    with pytest.raises(NotFittedError):
        est.predict(X)
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[3, 1, 0, 2] = bad
        with pytest.raises(ValueError, match="NaN|infinity"):
            est.fit(Xb, y)
    with pytest.raises(ValueError, match="Expected 2D array, got 1D"):
        est.fit(X[:, 0, 0, 0], y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        est.fit(X, y[:-1])
    est.fit(X, y)
    with pytest.raises(ValueError, match=r"per-sample shape \(3, 2, 6\).*\(3, 2, 8\)"):
        est.predict(X[..., :6])
    with pytest.raises(ValueError, match="per-sample shape"):
        est.predict(X[:, :2])
    with pytest.raises(ValueError, match=r"per-sample shape \(48,\), but .* fitted on .*\(3, 2, 8\)"):
        est.predict(X.reshape(len(X), -1))  # flattened: 48 features, not axis 1's 3
    with pytest.raises(ValueError, match=r"per-sample shape \(3,\), but .* fitted on .*\(3, 2, 8\)"):
        est.predict(X[:, :, 0, 0])  # as many values as axis 1 of fit's input: still refused


@pytest.mark.parametrize("Est", [PlugClassifier, PlugContrastiveCNN])
def test_single_class_is_a_clear_error(Est):
    X, _ = blobs(n=20)
    with pytest.raises(ValueError, match="only one class \\('a'\\)"):
        Est(max_epochs=1, **FAST).fit(X, np.array(["a"] * 20))


def test_cnn_rejects_five_axes_and_bad_params():
    X = np.zeros((4, 2, 2, 2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="2 to 4 axes, got 5-D"):
        PlugContrastiveCNN(max_epochs=1, **FAST).fit(X, [0, 1, 0, 1])
    X, y = blobs(n=20)
    for kw, name in [({"lr": -1.0}, "lr"), ({"optimizer": "rmsprop"}, "optimizer"),
                     ({"max_epochs": 0}, "max_epochs"), ({"validation_fraction": 1.5}, "validation_fraction"),
                     ({"lr_scheduler": "step"}, "lr_scheduler"), ({"n_jobs": 0}, "n_jobs"),
                     ({"temperature": 0.0}, "temperature"), ({"module__dropout": 1.0}, "module__dropout")]:
        with pytest.raises(ValueError, match=name):
            PlugContrastiveCNN(**{**FAST, **kw}).fit(X, y)
    # NumPy scalars (e.g. from a np.logspace grid) are valid numbers
    cnn = PlugContrastiveCNN(max_epochs=1, temperature=np.float32(0.5), contrastive_weight=np.float32(1),
                             module__channels=4, module__proj_dim=4, **FAST).fit(X, y)
    assert cnn.net_.criterion_.supcon.temperature == 0.5



@pytest.mark.parametrize("Est, kw, message", [
    (PlugClassifier, {"module__hidden_units": -3},
     r"must be None or an int in the range "
     r"\[1, inf\)\. Got -3 instead"),
    (PlugRegressor, {"module__hidden_units": 2.5},
     r"must be None or an int in the range "
     r"\[1, inf\)\. Got 2\.5 instead"),
    (PlugContrastiveCNN, {"module__proj_dim": 0},
     r"must be an int in the range \[1, inf\)"
     r"\. Got 0 instead"),
    (PlugContrastiveCNN, {"module__channels": -1},
     r"must be None or an int in the range "
     r"\[1, inf\)\. Got -1 instead"),
    (PlugClassifier, {"module__dropout": True},
     r"must be a float in the range \[0(\.0)?, "
     r"1(\.0)?\)\. Got True instead"),
    (PlugClassifier, {"early_stopping": "yes"},
     r"must be an instance of 'bool' or an instance "
     r"of 'numpy.bool'\. Got 'yes' instead"),
    (PlugRegressor, {"callbacks": [1]}, r"must be None or a list of skorch callbacks.* callbacks=\[1\] is invalid; use None or a list"),
    (PlugClassifier, {"callbacks": [("timer", 1)]}, r"must be None or a list of skorch callbacks.* callbacks=\[\('timer', 1\)\] is invalid"),
    (PlugClassifier, {"callbacks": EpochTimer()}, r"must be None or a list of skorch callbacks.* callbacks=<skorch.callbacks.*is invalid"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_invalid_params_name_estimator_parameter_and_valid_values(Est, kw, message):
    X, y = blobs(n=20)
    with pytest.raises(InvalidParameterError, match=f"^The '{next(iter(kw))}' parameter of "
                                                    f"{Est.__name__} {message}"):
        Est(max_epochs=1, **FAST, **kw).fit(X, y)


def test_valid_callbacks_and_early_stopping_forms_are_accepted():
    X, y = blobs(n=20)
    clf = PlugClassifier(max_epochs=1, early_stopping=np.bool_(False), **FAST,
                         callbacks=[EpochTimer, ("named_timer", EpochTimer())]).fit(X, y)
    assert {"EpochTimer", "named_timer"} <= set(dict(clf.net_.callbacks_))


class _PickyMLP(torch.nn.Module):
    """A module whose constructor refuses some values the estimator cannot know about."""

    def __init__(self, input_dim, n_outputs=1, hidden_units=None, dropout=0.0):
        super().__init__()
        if hidden_units == 7:
            raise RuntimeError("7 hidden units are not supported")
        self.lin = torch.nn.Linear(input_dim, n_outputs)

    def forward(self, x):
        return self.lin(x)


def test_module_constructor_errors_name_the_module_params(monkeypatch):
    monkeypatch.setattr(PlugClassifier, "_module_cls", _PickyMLP)
    X, y = blobs(n=20)
    with pytest.raises(ValueError, match=r"^PlugClassifier: could not build _PickyMLP with the module "
                       r"parameters module__dropout=0.2, module__hidden_units=7 .*7 hidden units") as err:
        PlugClassifier(max_epochs=1, module__hidden_units=7, **FAST).fit(X, y)
    assert isinstance(err.value.__cause__, RuntimeError)
    clf = PlugClassifier(max_epochs=1, module__hidden_units=8, **FAST).fit(X, y)
    assert isinstance(clf.net_.module_, _PickyMLP)

def test_set_params_accepts_module_params_only_if_known():
    clf = PlugClassifier().set_params(module__dropout=0.4, lr=0.1)
    assert clf.module__dropout == 0.4 and clf.lr == 0.1
    with pytest.raises(ValueError, match="module__hidden_units"):
        clf.set_params(module__width=3)
    X, y = blobs(n=40)
    clf.set_params(max_epochs=1, n_jobs=1, module__hidden_units=16).fit(X, y)
    assert clf.net_.module_.fc1[0].out_features == 16 and clf.module_kwargs_["dropout"] == 0.4


@pytest.mark.parametrize("Est", [PlugClassifier, PlugRegressor, PlugContrastiveCNN])
def test_arrays_with_negative_strides_work_like_their_copies(Est):
    X, y = blobs(n=40)
    flipped, copy = X[::-1], np.ascontiguousarray(X[::-1])
    assert any(s < 0 for s in flipped.strides)
    est = Est(max_epochs=2, **FAST, **({"module__proj_dim": 4} if Est is PlugContrastiveCNN else {}))
    a, b = clone(est).fit(flipped, y), clone(est).fit(copy, y)
    out = (lambda e, Z: e.predict_proba(Z)) if hasattr(est, "predict_proba") else \
        (lambda e, Z: e.predict(Z))
    np.testing.assert_array_equal(out(a, np.flip(X, axis=0)), out(b, copy))
    if Est is PlugContrastiveCNN:
        np.testing.assert_array_equal(a.transform(flipped), b.transform(copy))
