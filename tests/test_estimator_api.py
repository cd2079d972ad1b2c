"""The one shared module that runs the API checks over every estimator of the package.

- Estimators that take numeric arrays run scikit-learn's full ``parametrize_with_checks``.
- Every estimator (text-input ones too) runs the contract checks below: clone, get/set_params,
  nothing done in ``__init__``, repr, pickle round trip of the fitted estimator.

Add an estimator by appending to NUMERIC (numeric input) or to ``_text_estimators`` (text input),
with expected failures listed and justified in EXPECTED_FAILED.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from embetter_plug import ContrastiveTuner, FeedForwardTuner, LayerPooler
from embetter_plug import PlugClassifier, PlugContrastiveCNN, PlugRegressor

# ---------------------------------------------------------------- numeric-input estimators
NUMERIC = [
    LayerPooler(),
    LayerPooler(combine="mean"),
    # --- models (issue: classifiers on activations) ---
    # tiny nets, few epochs, one torch thread (fast on a busy CPU), fixed seed
    PlugClassifier(max_epochs=3, lr=0.05, batch_size=256, module__hidden_units=32, device="cpu",
                   n_jobs=1, random_state=0),
    PlugRegressor(max_epochs=3, lr=0.05, batch_size=256, module__hidden_units=32, device="cpu",
                  n_jobs=1, random_state=0),
    PlugContrastiveCNN(max_epochs=3, lr=0.05, batch_size=256, module__channels=8,
                       module__proj_dim=8, device="cpu", n_jobs=1, random_state=0),
    # --- tuners (issue: embedding-space tuners) ---
    FeedForwardTuner(hidden_dim=8, n_epochs=2, device="cpu"),
    ContrastiveTuner(hidden_dim=8, epochs=2, device="cpu"),
]

# estimator class name -> {check name: why it is expected to fail}
EXPECTED_FAILED: dict[str, dict[str, str]] = {
    # --- models (issue: classifiers on activations) ---
    **{name: {"check_methods_subset_invariance": (
        "float32 matrix products on CPU differ in the last bits with the number of rows in "
        "the batch; the check's rtol=1e-7 is below float32 precision")}
       for name in ("PlugClassifier", "PlugRegressor")},
    "PlugContrastiveCNN": {
        "check_methods_subset_invariance": "float32 matrix products differ in the last bits "
                                           "with the batch size (rtol=1e-7 < float32 precision)",
        "check_classifiers_train": (
            "the CNN layer-normalises each activation vector over its hidden axis (as the "
            "reference architecture does); on the check's 2-feature blobs that leaves only the "
            "sign of x1 - x2, so 0.83 accuracy is out of reach (0.64 after 50 epochs)"),
    },
    # --- tuners (issue: embedding-space tuners) ---
}


def _expected_failed(est):
    return EXPECTED_FAILED.get(type(est).__name__, {})


@parametrize_with_checks(NUMERIC, expected_failed_checks=_expected_failed)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- every estimator
def _numeric_data(est):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2, 2, 4)).astype(np.float32)
    y = np.array([0, 1] * 20)
    return X, y


def _text_estimators():
    from embetter_plug import OnlineProbes, SentenceEncoder, TransformerActivationEncoder, TransformerTuner
    from embetter_plug.testing import make_tiny_model

    # seed=1: a model no other test touches (transformers leaves unpicklable hooks on a model
    # after an output_hidden_states forward, and the encoder's parameters pickle with it)
    model, tok = make_tiny_model("gpt2", seed=1)
    return [
        TransformerActivationEncoder(model, tok, layers=[0, -1], parts=["resid_post", "mlp_out"]),
        SentenceEncoder(device="cpu"),  # model=None: the built-in MiniLM (tuners issue)
        OnlineProbes(TransformerActivationEncoder(model, tok, layers=[0, -1]), max_epochs=2,
                     random_state=0),  # probing issue
        TransformerTuner(*make_tiny_model("bert", seed=1), max_epochs=1, batch_size=8,
                         early_stopping=False, random_state=0),  # fine-tuning issue
        # --- more text-input estimators go here ---
    ]


def _all_estimators():
    return [*NUMERIC, *_text_estimators()]


def _fit_data(est):
    tags = est.__sklearn_tags__()
    if tags.input_tags.string:
        from embetter_plug import load_builtin_dataset

        df = load_builtin_dataset("train").iloc[:40]
        return df["text"].tolist(), df["label"].to_numpy()
    return _numeric_data(est)


@pytest.fixture(params=range(len(_all_estimators())), ids=lambda i: repr(_all_estimators()[i])[:60])
def estimator(request):
    return _all_estimators()[request.param]


def test_init_stores_params_verbatim(estimator):
    params = estimator.get_params(deep=False)
    fresh = type(estimator)(**params)
    for k, v in params.items():
        assert getattr(fresh, k) is v, f"{type(estimator).__name__}.__init__ changed {k}"
    assert not [a for a in vars(fresh) if a.endswith("_") and not a.startswith("_")], \
        "__init__ must not set fitted attributes"


def test_clone_and_set_params(estimator):
    cloned = clone(estimator)
    assert cloned.get_params(deep=False).keys() == estimator.get_params(deep=False).keys()
    key = next(iter(estimator.get_params(deep=False)))
    cloned.set_params(**{key: estimator.get_params()[key]})
    assert repr(cloned)


def test_pickle_round_trip_of_fitted(estimator):
    X, y = _fit_data(estimator)
    est = clone(estimator).fit(X, y)
    out = est.transform(X[:8]) if hasattr(est, "transform") else est.predict(X[:8])
    again = pickle.loads(pickle.dumps(est))
    out2 = again.transform(X[:8]) if hasattr(again, "transform") else again.predict(X[:8])
    np.testing.assert_allclose(np.asarray(out, dtype=float), np.asarray(out2, dtype=float),
                               rtol=1e-5, atol=1e-6)


def test_unfitted_raises_not_fitted(estimator):
    from sklearn.exceptions import NotFittedError

    X, _ = _fit_data(estimator)
    method = getattr(estimator, "transform", None) or estimator.predict
    with pytest.raises(NotFittedError):
        method(X[:2])
