"""Numeric tuners on small synthetic arrays: maths against NumPy references, training behaviour,
partial_fit continuity, parameters, pickling, devices and bad input."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics.pairwise import paired_cosine_distances
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline

from embetter_plug import (ContrastiveLearner, ContrastiveTuner, FeedForwardTuner, SbertLearner,
                           SbertTuner)
from embetter_plug.tuners._labels import sample_pairs
from embetter_plug.tuners._nets import ResidualHead


def _blobs(n=120, d=12, k=3, seed=0, noise=1.0):
    """Classes on a circle in the first two dimensions (easy for a linear map), buried under
    ``d - 2`` dimensions of noise (hard for distances in the raw space)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    angles = 2 * np.pi * np.arange(k) / k
    X = rng.normal(scale=noise, size=(n, d))
    X[:, :2] = 2 * np.c_[np.cos(angles), np.sin(angles)][y] + rng.normal(scale=0.5, size=(n, 2))
    return X.astype(np.float32), y


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Nets this small train fastest on one thread (and do not fight other work for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _weights(module) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().copy() for p in module.parameters()]


def _relu(a):
    return np.maximum(a, 0)


# ---------------------------------------------------------------- maths against NumPy
def test_feedforward_transform_is_the_hidden_layer():
    X, y = _blobs()
    tuner = FeedForwardTuner(hidden_dim=7, n_epochs=2, random_state=0, device="cpu").fit(X, y)
    W, b = tuner.module_[0].weight.detach().numpy(), tuner.module_[0].bias.detach().numpy()
    np.testing.assert_allclose(tuner.transform(X), _relu(X @ W.T + b), rtol=1e-5, atol=1e-5)
    assert tuner.transform(X).dtype == np.float32
    assert tuner.module_[-1].out_features == 3


def test_residual_head_starts_as_the_raw_space_and_matches_numpy():
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    head = ResidualHead(6, 6)
    torch.testing.assert_close(head(x), x)  # zero-initialised correction, identity skip
    proj = ResidualHead(6, 3)
    S = proj.skip.numpy()
    np.testing.assert_allclose(S @ S.T, np.eye(3), atol=1e-5)  # orthonormal rows
    assert not any(p is proj.skip for p in proj.parameters())  # the skip is not trained

    X, y = _blobs(d=6)
    learner = ContrastiveTuner(epochs=3, random_state=0, device="cpu").fit(X, y).learner_
    m = learner.module_
    h = _relu(X @ m.hidden.weight.detach().numpy().T + m.hidden.bias.detach().numpy())
    ref = X @ m.skip.numpy().T + h @ m.out.weight.detach().numpy().T + m.out.bias.detach().numpy()
    np.testing.assert_allclose(learner.transform(X), ref, rtol=1e-4, atol=1e-5)


def test_contrastive_predict_is_pair_cosine_similarity():
    rng = np.random.default_rng(1)
    X1, X2 = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    learner = ContrastiveLearner(shape_out=5, epochs=2, random_state=0, device="cpu")
    learner.fit(X1, X2, rng.integers(0, 2, size=30))
    ref = 1 - paired_cosine_distances(learner.transform(X1), learner.transform(X2))
    np.testing.assert_allclose(learner.predict(X1, X2), ref, rtol=1e-5, atol=1e-6)
    assert learner.transform(X1).shape == (30, 5)


def test_sample_pairs_labels_and_counts():
    codes = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    left, right, sim = sample_pairs(codes, 2, np.random.default_rng(0))
    pos, neg = sim == 1, sim == 0
    assert np.all(codes[left[pos]] == codes[right[pos]]) and np.all(left[pos] != right[pos])
    assert np.all(codes[left[neg]] != codes[right[neg]])
    assert pos.sum() == len(codes) and neg.sum() == 2 * len(codes)
    again = sample_pairs(codes, 2, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip((left, right, sim), again))


# ---------------------------------------------------------------- training does what it should
@pytest.mark.parametrize("make", [
    lambda: FeedForwardTuner(hidden_dim=16, n_epochs=50, learning_rate=1e-2, random_state=0, device="cpu"),
    lambda: ContrastiveTuner(hidden_dim=16, epochs=10, learning_rate=1e-3, random_state=0, device="cpu"),
], ids=["feedforward", "contrastive"])
def test_tuning_separates_held_out_classes(make):
    X, y = _blobs(n=400, d=20, noise=2.0)
    Xtr, ytr, Xte, yte = X[:200], y[:200], X[200:], y[200:]
    tuner = make().fit(Xtr, ytr)

    def knn(A, B):
        return KNeighborsClassifier(5).fit(A, ytr).score(B, yte)

    raw, tuned = knn(Xtr, Xte), knn(tuner.transform(Xtr), tuner.transform(Xte))
    assert tuned > raw + 0.05, (raw, tuned)


def test_contrastive_learner_pulls_similar_pairs_together():
    X, y = _blobs(n=300, d=16, noise=2.0)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, 300, size=(2, 1500))
    sim = (y[i] == y[j]).astype(int)
    tr, te = slice(0, 1000), slice(1000, None)  # held-out pairs
    learner = ContrastiveLearner(epochs=30, learning_rate=3e-3, random_state=0, device="cpu")
    learner.fit(X[i[tr]], X[j[tr]], sim[tr])
    pred = learner.predict(X[i[te]], X[j[te]])
    raw = 1 - paired_cosine_distances(X[i[te]], X[j[te]])
    gap = lambda s: s[sim[te] == 1].mean() - s[sim[te] == 0].mean()  # noqa: E731
    assert gap(pred) > gap(raw) + 0.2, (gap(raw), gap(pred))


# ---------------------------------------------------------------- partial_fit
@pytest.mark.parametrize("cls, epochs", [(FeedForwardTuner, "n_epochs"), (ContrastiveTuner, "epochs")])
def test_partial_fit_continues_from_current_weights(cls, epochs):
    X, y = _blobs()
    A, yA, B, yB = X[:60], y[:60], X[60:], y[60:]
    est = cls(random_state=0, device="cpu", **{epochs: 3}).partial_fit(A, yA, classes=[0, 1, 2])
    module = lambda e: e.module_ if hasattr(e, "module_") else e.learner_.module_  # noqa: E731
    before = _weights(module(est))
    # a vanishing step size shows the second call starts from the first call's weights
    est.set_params(learning_rate=1e-12).partial_fit(B, yB)
    for w0, w1 in zip(before, _weights(module(est))):
        np.testing.assert_allclose(w1, w0, atol=1e-6)
    # with a real step size: two calls differ from a fresh fit on the second batch alone
    two = cls(random_state=0, device="cpu", **{epochs: 3}).partial_fit(A, yA).partial_fit(B, yB)
    fresh = cls(random_state=0, device="cpu", **{epochs: 3}).fit(B, yB)
    assert not np.allclose(two.transform(X), fresh.transform(X))


def test_fit_restarts_but_partial_fit_does_not():
    X, y = _blobs()
    a = FeedForwardTuner(n_epochs=3, random_state=0, device="cpu").fit(X, y)
    b = FeedForwardTuner(n_epochs=3, random_state=0, device="cpu").fit(X, y).fit(X, y)
    np.testing.assert_allclose(a.transform(X), b.transform(X))  # fit twice == fit once
    c = FeedForwardTuner(n_epochs=3, random_state=0, device="cpu").fit(X, y).partial_fit(X, y)
    assert not np.allclose(a.transform(X), c.transform(X))


def test_stream_of_batches_learns():
    X, y = _blobs(n=700, d=20, noise=2.0)
    Xte, yte = X[600:], y[600:]
    tuner = FeedForwardTuner(hidden_dim=16, n_epochs=1, learning_rate=1e-2, batch_size=5,
                             random_state=0, device="cpu")

    def held_out_accuracy():
        with torch.no_grad():
            logits = tuner.module_(torch.as_tensor(Xte))
        return float((logits.argmax(1).numpy() == yte).mean())

    tuner.partial_fit(X[:20], y[:20], classes=[0, 1, 2])
    first = held_out_accuracy()
    for start in range(20, 600, 20):
        tuner.partial_fit(X[start:start + 20], y[start:start + 20])
    assert held_out_accuracy() > first + 0.1


@pytest.mark.parametrize("cls", [FeedForwardTuner, ContrastiveTuner])
def test_partial_fit_classes(cls):
    X, y = _blobs()
    one = y == 0
    with pytest.raises(ValueError, match="only one class"):
        cls(device="cpu").partial_fit(X[one], y[one])
    est = cls(device="cpu", random_state=0).partial_fit(X[one], y[one], classes=[0, 1, 2])
    np.testing.assert_array_equal(est.classes_, [0, 1, 2])
    est.partial_fit(X, y)
    with pytest.raises(ValueError, match="not among the classes"):
        est.partial_fit(X[:5], np.array([0, 1, 2, 3, 3]))
    with pytest.raises(ValueError, match="differs from the classes"):
        est.partial_fit(X, y, classes=[0, 1])


# ---------------------------------------------------------------- parameters and randomness
@pytest.mark.parametrize("cls", [FeedForwardTuner, ContrastiveTuner])
def test_random_state_reproducible(cls):
    X, y = _blobs()
    a = cls(random_state=3, device="cpu").fit(X, y).transform(X)
    b = cls(random_state=3, device="cpu").fit(X, y).transform(X)
    c = cls(random_state=4, device="cpu").fit(X, y).transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    state = torch.random.get_rng_state()
    cls(random_state=3, device="cpu").fit(X, y)
    assert torch.equal(state, torch.random.get_rng_state())  # the global torch RNG is left alone


def test_labels_of_any_type():
    X, y = _blobs()
    names = np.array(["neg", "neutral", "pos"])[y]
    a = FeedForwardTuner(random_state=0, device="cpu").fit(X, names)
    b = FeedForwardTuner(random_state=0, device="cpu").fit(X, y)
    np.testing.assert_array_equal(a.classes_, ["neg", "neutral", "pos"])
    np.testing.assert_allclose(a.transform(X), b.transform(X))


def test_grid_search_trains_different_models():
    X, y = _blobs(n=90)
    pipe = make_pipeline(FeedForwardTuner(n_epochs=2, random_state=0, device="cpu"),
                         KNeighborsClassifier(3))
    grid = GridSearchCV(pipe, {"feedforwardtuner__hidden_dim": [3, 9]}, cv=2).fit(X, y)
    best = grid.best_estimator_[0]
    assert best.transform(X).shape[1] == grid.best_params_["feedforwardtuner__hidden_dim"]
    small = clone(pipe).set_params(feedforwardtuner__hidden_dim=3).fit(X, y)
    assert small[0].transform(X).shape == (90, 3)


@pytest.mark.parametrize("param, cls", [("epochs", ContrastiveTuner), ("n_epochs", FeedForwardTuner)])
def test_set_params_epochs_changes_training(param, cls):
    X, y = _blobs()
    base = cls(random_state=0, device="cpu")
    one = clone(base).set_params(**{param: 1}).fit(X, y).transform(X)
    five = clone(base).set_params(**{param: 5}).fit(X, y).transform(X)
    assert not np.allclose(one, five)


def test_contrastive_tuner_passes_its_params_to_the_learner():
    X, y = _blobs()
    tuner = ContrastiveTuner(hidden_dim=4, epochs=1, learning_rate=0.01, batch_size=8,
                             activation="tanh", device="cpu").fit(X, y)
    got = tuner.learner_.get_params()
    assert (got["shape_out"], got["epochs"], got["learning_rate"], got["batch_size"],
            got["activation"]) == (4, 1, 0.01, 8, "tanh")
    assert tuner.get_feature_names_out().tolist() == [f"contrastivetuner{i}" for i in range(4)]


def test_four_d_activations_are_flattened():
    rng = np.random.default_rng(0)
    X4 = rng.normal(size=(30, 2, 2, 4)).astype(np.float32)
    y = np.arange(30) % 2
    a = FeedForwardTuner(n_epochs=2, random_state=0, device="cpu").fit(X4, y)
    b = FeedForwardTuner(n_epochs=2, random_state=0, device="cpu").fit(X4.reshape(30, -1), y)
    assert a.n_features_in_ == 16
    np.testing.assert_allclose(a.transform(X4), b.transform(X4.reshape(30, -1)))


# ---------------------------------------------------------------- pickling and devices
@pytest.mark.parametrize("cls", [FeedForwardTuner, ContrastiveTuner])
def test_pickle_keeps_weights_and_optimizer(cls):
    X, y = _blobs()
    est = cls(random_state=0, device="cpu").fit(X[:60], y[:60])
    live = est.learner_ if hasattr(est, "learner_") else est
    optimizer = live.optimizer_
    again = pickle.loads(pickle.dumps(est))
    assert live.optimizer_ is optimizer  # pickling leaves the live object alone
    np.testing.assert_array_equal(est.transform(X), again.transform(X))
    # continuing after unpickling matches continuing the original: optimizer moments and the
    # shuffling generator travel in the pickle
    est.partial_fit(X[60:], y[60:])
    again.partial_fit(X[60:], y[60:])
    np.testing.assert_allclose(est.transform(X), again.transform(X), rtol=1e-5, atol=1e-6)


def test_device_is_honoured():
    X, y = _blobs()
    tuner = FeedForwardTuner(n_epochs=1, device="cpu").fit(X, y)
    assert tuner.device_.type == "cpu" and next(tuner.module_.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            FeedForwardTuner(device="cuda").fit(X, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_and_pickle_to_cpu():
    X, y = _blobs()
    tuner = ContrastiveTuner(epochs=2, random_state=0, device="cuda").fit(X, y)
    assert next(tuner.learner_.module_.parameters()).device.type == "cuda"
    state = tuner.learner_.__getstate__()
    assert next(state["module_"].parameters()).device.type == "cpu"
    np.testing.assert_allclose(pickle.loads(pickle.dumps(tuner)).transform(X), tuner.transform(X),
                               rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- bad input
def test_bad_input_errors():
    X, y = _blobs()
    learner = ContrastiveLearner(epochs=1, device="cpu")
    with pytest.raises(ValueError, match="same number"):
        learner.fit(X[:10], X[:9], np.ones(10))
    with pytest.raises(ValueError, match="0 \\(dissimilar\\) or 1"):
        learner.fit(X[:4], X[4:8], [0, 1, 2, 1])
    with pytest.raises(ValueError, match="one label per pair"):
        learner.fit(X[:4], X[4:8], [0, 1, 1])
    for cls in (FeedForwardTuner, ContrastiveTuner):
        with pytest.raises(ValueError, match="at least two classes"):
            cls(device="cpu").fit(X, np.zeros(len(X)))
        bad = X.copy()
        bad[3, 2] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            cls(device="cpu").fit(bad, y)
        fitted = cls(device="cpu", random_state=0).fit(X, y)
        with pytest.raises(ValueError, match="NaN"):
            fitted.transform(bad)
        with pytest.raises(ValueError, match="features"):
            fitted.transform(X[:, :5])
    with pytest.raises(ValueError, match=r"^The 'hidden_dim' parameter of FeedForwardTuner must be "
                                         r"an int in the range \[1, inf\)\. Got 0 instead"):
        FeedForwardTuner(hidden_dim=0).fit(X, y)
    with pytest.raises(ValueError, match=r"^The 'hidden_dim' parameter of ContrastiveTuner must be "
                                         r"None or an int in the range \[1, inf\)\. Got 0 instead"):
        ContrastiveTuner(hidden_dim=0).fit(X, y)  # its own name, not the learner's shape_out
    with pytest.raises(ValueError, match=r"^The 'weight_decay' parameter of FeedForwardTuner must be "
                                         r"a float in the range \[0(\.0)?, inf\)\. Got -1 instead\.$"):
        FeedForwardTuner(weight_decay=-1).fit(X, y)
    with pytest.raises(ValueError, match=r"^The 'weight_decay' parameter of ContrastiveLearner must "
                                         r"be a float in the range \[0(\.0)?, inf\)\. Got -0.5 "
                                         r"instead\.$"):
        ContrastiveLearner(weight_decay=-0.5).fit(X, X, np.ones(len(X)))
    with pytest.raises(TypeError, match=r"^The 'weight_decay' parameter of FeedForwardTuner must be "
                                        r"a float in the range \[0(\.0)?, inf\)\. Got '0' instead"):
        FeedForwardTuner(weight_decay="0").fit(X, y)
    with pytest.raises(ValueError, match=r"'activation' parameter of ContrastiveTuner must be a str "
                                         r"among .*relu.*Got 'swish' instead"):
        ContrastiveTuner(activation="swish").fit(X, y)
    with pytest.raises(TypeError, match="'n_neg' parameter of ContrastiveTuner"):
        ContrastiveTuner(n_neg=1.5).fit(X, y)


# ---------------------------------------------------------------- estimators outside the shared checks
@pytest.mark.parametrize("est", [ContrastiveLearner(shape_out=4, epochs=2), SbertLearner(max_steps=1),
                                 SbertTuner(n_neg=2)], ids=lambda e: type(e).__name__)
def test_pair_and_text_estimators_follow_the_init_contract(est):
    from sklearn.exceptions import NotFittedError

    params = est.get_params(deep=False)
    fresh = type(est)(**params)
    assert all(getattr(fresh, k) is v for k, v in params.items())
    assert not [a for a in vars(fresh) if a.endswith("_")]
    assert clone(est).get_params() == params
    with pytest.raises(NotFittedError):
        est.transform(["a text"] if not isinstance(est, ContrastiveLearner) else np.zeros((1, 3)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_sbert_unavailable_device_fails_before_loading():
    with pytest.raises(ValueError, match="CUDA is not available"):
        SbertLearner(model="/no/such/folder", device="cuda").fit(["a", "b"], ["c", "d"], [1, 0])


@pytest.mark.parametrize("make", [
    lambda: FeedForwardTuner(hidden_dim=4, n_epochs=2, random_state=0, device="cpu"),
    lambda: ContrastiveTuner(hidden_dim=4, epochs=2, random_state=0, device="cpu"),
], ids=["FeedForwardTuner", "ContrastiveTuner"])
def test_arrays_with_negative_strides_work_like_their_copies(make):
    X, y = _blobs(n=40)
    flipped, copy = X[::-1], np.ascontiguousarray(X[::-1])
    assert any(s < 0 for s in flipped.strides)
    a, b = make().fit(flipped, y), make().fit(copy, y)
    np.testing.assert_array_equal(a.transform(np.flip(X, axis=0)), b.transform(copy))


def test_contrastive_learner_accepts_negative_strides():
    X, _ = _blobs(n=40)
    X1, X2, y = X[::-1], X[:, ::-1], np.arange(40) % 2
    copies = [np.ascontiguousarray(Z) for Z in (X1, X2)]
    make = lambda: ContrastiveLearner(shape_out=4, epochs=2, random_state=0, device="cpu")  # noqa: E731
    a, b = make().fit(X1, X2, y), make().fit(*copies, y)
    np.testing.assert_array_equal(a.predict(X1, X2), b.predict(*copies))


# ---------------------------------------------------------------- sentence-transformers on a tiny folder
@pytest.fixture(scope="module")
def tiny_st_folder(tmp_path_factory):
    """A tiny BERT folder (sentence-transformers adds mean pooling when it loads it)."""
    from embetter_plug.testing import save_tiny_model

    return save_tiny_model("bert", tmp_path_factory.mktemp("st") / "tinybert")


_PAIR_TEXTS = ["good film", "bad film", "great movie", "awful movie"]


def _fit_sbert(kind, model, **kw):
    kw = dict(batch_size=2, max_steps=2, learning_rate=1e-2, warmup_ratio=0.0, device="cpu", **kw)
    if kind == "learner":
        return SbertLearner(model, **kw).fit(_PAIR_TEXTS, _PAIR_TEXTS[::-1], [1, 0, 0, 1])
    return SbertTuner(model, n_neg=1, **kw).fit(_PAIR_TEXTS, [1, 0, 1, 0])


def _global_rng_states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


@pytest.mark.parametrize("kind", ["learner", "tuner"])
def test_sbert_fit_leaves_the_global_generators_alone(kind, tiny_st_folder):
    from embetter_plug import SentenceEncoder

    random.seed(3), np.random.seed(7), torch.manual_seed(123)
    before = _global_rng_states()
    first = _fit_sbert(kind, tiny_st_folder, random_state=0).transform(_PAIR_TEXTS)
    after = _global_rng_states()
    assert after[0] == before[0]
    assert after[1][0] == before[1][0] and np.array_equal(after[1][1], before[1][1])
    assert after[1][2:] == before[1][2:]
    assert torch.equal(after[2], before[2])
    # random_state alone still fixes the result, whatever the global states are
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    np.testing.assert_array_equal(_fit_sbert(kind, tiny_st_folder, random_state=0).transform(_PAIR_TEXTS),
                                  first)
    untrained = SentenceEncoder(tiny_st_folder, device="cpu").fit().transform(_PAIR_TEXTS)
    assert not np.allclose(first, untrained, atol=1e-4)  # it did train


@pytest.mark.parametrize("kind", ["encoder", "learner", "tuner"])
def test_pickles_reload_a_relative_folder_from_another_directory(kind, tiny_st_folder, tmp_path,
                                                                monkeypatch):
    from embetter_plug import SentenceEncoder

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "my_model").symlink_to(tiny_st_folder, target_is_directory=True)
    monkeypatch.chdir(tmp_path / "work")
    if kind == "encoder":
        est = SentenceEncoder("my_model", device="cpu").fit()
    else:
        est = _fit_sbert(kind, "my_model", random_state=0)
    expected = est.transform(_PAIR_TEXTS)
    blob = pickle.dumps(est)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = pickle.loads(blob)
    assert again.get_params()["model"] == "my_model"  # the parameter stays as given
    np.testing.assert_array_equal(again.transform(_PAIR_TEXTS), expected)
