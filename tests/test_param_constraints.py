"""Every estimator declares scikit-learn's ``_parameter_constraints`` and checks them first in
``fit``; public functions check theirs before any work. Bad values raise scikit-learn's
``InvalidParameterError`` naming the parameter, before any model is loaded."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from embetter_plug._constraints import InvalidParameterError

import embetter_plug
from embetter_plug import (LayerPooler, OnlineProbes, PlugClassifier, SentenceEncoder,
                           TransformerActivationEncoder, TransformerTuner)

PACKAGES = ["embetter_plug", "embetter_plug.models", "embetter_plug.tuners", "embetter_plug.probe",
            "embetter_plug.recipes"]


def _public_estimators():
    found = {}
    for name in PACKAGES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.isclass(obj) and issubclass(obj, BaseEstimator):
                found[obj.__name__] = obj
    return sorted(found.values(), key=lambda c: c.__name__)


ESTIMATORS = _public_estimators()


def test_the_walk_finds_the_estimators():
    names = {c.__name__ for c in ESTIMATORS}
    assert {"TransformerActivationEncoder", "LayerPooler", "PlugClassifier", "PlugRegressor",
            "PlugContrastiveCNN", "FeedForwardTuner", "ContrastiveLearner", "ContrastiveTuner",
            "SbertLearner", "SbertTuner", "SentenceEncoder", "TransformerTuner",
            "OnlineProbes"} <= names


@pytest.mark.parametrize("Est", ESTIMATORS, ids=lambda c: c.__name__)
def test_constraints_cover_exactly_the_init_parameters(Est):
    params = [p for p in inspect.signature(Est.__init__).parameters if p != "self"]
    assert "_parameter_constraints" in vars(Est) or any(
        "_parameter_constraints" in vars(base) for base in Est.__mro__[1:]
        if base.__module__.startswith("embetter_plug")), f"{Est.__name__} declares none"
    assert set(Est._parameter_constraints) == set(params)


@pytest.mark.parametrize("Est", ESTIMATORS, ids=lambda c: c.__name__)
def test_defaults_satisfy_the_constraints(Est):
    from embetter_plug._constraints import validate_estimator_params

    validate_estimator_params(Est())  # raises if a default is refused


def _no_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the parameters were checked")


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the test: parameter errors must come first."""
    import embetter_plug.encoder as encoder_module
    import embetter_plug.tuners.sentence as sentence_module

    monkeypatch.setattr(encoder_module, "load_for", _no_load)
    monkeypatch.setattr(encoder_module, "resolve_model_source", _no_load)
    monkeypatch.setattr(sentence_module, "load_sentence_transformer", _no_load)
    monkeypatch.setattr(TransformerTuner, "_load_backbone", _no_load)


def _raises_naming(param, owner, value_repr=None):
    pattern = rf"^The '{param}' parameter of {owner} must be .*Got "
    if value_repr is not None:
        import re

        pattern += re.escape(value_repr)
    return pytest.raises(InvalidParameterError, match=pattern)


@pytest.mark.parametrize("params", [
    {"batch_size": 0}, {"max_length": -3}, {"layers": "last"}, {"layers": [0, 1.5]},
    {"parts": "mlp_output"}, {"heads": [1.5]}, {"token_pooling": "average"},
    {"prompt_template": "no placeholder"}, {"device": "gpu-zero"}, {"dtype": "float8"},
    {"include_prompt": "yes"}, {"verify": 1.0}, {"model_kwargs": ["device_map"]}, {"cache": 3},
    {"revision": 2}, {"max_length": True},
], ids=lambda p: next(iter(p)))
def test_encoder_bad_parameter_raises_before_loading(no_loading, params):
    (param, value), = params.items()
    with _raises_naming(param, "TransformerActivationEncoder", repr(value)) as info:
        TransformerActivationEncoder(**params).fit(["a text"])
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


@pytest.mark.parametrize("params, reason", [
    ({"parts": "mlp_output"}, r"unknown part 'mlp_output'; valid parts are \['resid_post'"),
    ({"token_pooling": "average"}, r"token_pooling 'average' is not supported; valid values are"),
    ({"heads": [1.5]}, r"heads entry 1\.5 is not an int"),
    ({"dtype": "float8"}, r"dtype='float8' is not supported; valid values are \['auto', 'float32'"),
    ({"device": "gpu-zero"}, r"not a valid torch device; use 'auto', 'cpu', 'cuda', 'cuda:N'"),
    ({"prompt_template": "x"}, r"exactly one '\{text\}' placeholder"),
], ids=lambda p: next(iter(p)) if isinstance(p, dict) else None)
def test_project_constraints_say_why_and_what_is_valid(no_loading, params, reason):
    with pytest.raises(InvalidParameterError, match=reason):
        TransformerActivationEncoder(**params).fit()


def test_heads_without_attention_parts_is_refused_before_loading(no_loading):
    with pytest.raises(ValueError, match=r"heads=\[0\] applies to attention parts"):
        TransformerActivationEncoder(heads=[0]).fit()


@pytest.mark.parametrize("make, fit, param", [
    (lambda: SentenceEncoder(batch_size=0), lambda e: e.fit(["a"]), "batch_size"),
    (lambda: SentenceEncoder(device=3.5), lambda e: e.fit(["a"]), "device"),
    (lambda: TransformerTuner(lr=0), lambda e: e.fit(["a", "b"], [0, 1]), "lr"),
    (lambda: TransformerTuner(token_pooling="average"), lambda e: e.fit(["a", "b"], [0, 1]),
     "token_pooling"),
    (lambda: TransformerTuner(autocast="fp8"), lambda e: e.fit(["a", "b"], [0, 1]), "autocast"),
    (lambda: OnlineProbes(TransformerActivationEncoder(), buffer_size=0),
     lambda e: e.fit(["a", "b"], [0, 1]), "buffer_size"),
    (lambda: OnlineProbes(TransformerActivationEncoder(), test_fraction=0.0),
     lambda e: e.fit(["a", "b"], [0, 1]), "test_fraction"),
    (lambda: OnlineProbes(TransformerActivationEncoder(), learning_rate="fastest"),
     lambda e: e.fit(["a", "b"], [0, 1]), "learning_rate"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_text_estimators_refuse_before_loading(no_loading, make, fit, param):
    est = make()
    with _raises_naming(param, type(est).__name__):
        fit(est)


def test_numeric_estimators_refuse_before_reading_X(monkeypatch):
    from embetter_plug.models.training import PlugNetBase

    monkeypatch.setattr(PlugNetBase, "_check_X", _no_load)
    X, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
    with _raises_naming("optimizer", "PlugClassifier", "'rmsprop'"):
        PlugClassifier(optimizer="rmsprop").fit(X, y)
    with _raises_naming("max_epochs", "PlugClassifier", "True"):  # not an int of 1
        PlugClassifier(max_epochs=True).fit(X, y)
    with _raises_naming("n_jobs", "PlugClassifier", "-2"):
        PlugClassifier(n_jobs=-2).fit(X, y)
    with _raises_naming("method", "LayerPooler", "'median'"):
        LayerPooler(method="median").fit(np.zeros((4, 2, 1, 3)))
    with _raises_naming("parts", "LayerPooler", "[0.5]"):
        LayerPooler(parts=[0.5]).fit(np.zeros((4, 2, 1, 3)))


def test_one_module_depends_on_sklearns_private_validation_module():
    from pathlib import Path

    root = Path(embetter_plug.__file__).parent
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if "sklearn.utils._param_validation" in p.read_text(encoding="utf-8"))
    assert users == ["_constraints.py"]


def test_sklearn_skip_parameter_validation_is_honoured():
    import sklearn

    from embetter_plug._constraints import validate_estimator_params

    with sklearn.config_context(skip_parameter_validation=True):
        validate_estimator_params(LayerPooler(method="median"))
    with pytest.raises(InvalidParameterError):
        validate_estimator_params(LayerPooler(method="median"))


# ---------------------------------------------------------------- public functions
def _fail_run(*args, **kwargs):
    raise AssertionError("the function ran before its parameters were checked")


@pytest.mark.parametrize("func, kwargs, param", [
    ("attention_patterns", {"layers": "last"}, "layers"),
    ("attention_patterns", {"heads": "first"}, "heads"),
    ("attention_patterns", {"batch_size": 0}, "batch_size"),
    ("attention_patterns", {"prompt_template": "no placeholder"}, "prompt_template"),
    ("attention_metrics", {"token_pooling": "average"}, "token_pooling"),
    ("attention_metrics", {"layers": [1.5]}, "layers"),
    ("image_attention", {"query": "first"}, "query"),
    ("image_attention", {"heads": []}, "heads"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_attention_functions_check_parameters_before_the_model_is_read(func, kwargs, param):
    # a model that fails on any use: the check must come before it is touched
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) before the parameters were checked")

    with _raises_naming(param, func):
        getattr(embetter_plug, func)(Untouchable(), None, **({"sample": {"text": "a"}}
                                                               if func == "image_attention"
                                                               else {"texts": ["a"]}), **kwargs)


@pytest.mark.parametrize("kwargs, param", [
    ({"task": "ranking"}, "task"), ({"layers": "last"}, "layers"), ({"parts": [1.5]}, "parts"),
    ({"estimator": "logreg"}, "estimator"), ({"mdl": "no"}, "mdl"),
])
def test_probe_layers_checks_parameters_before_fitting(monkeypatch, kwargs, param):
    import embetter_plug.probe.offline as offline

    monkeypatch.setattr(offline, "detect_task", _fail_run)
    X, y = np.zeros((6, 2, 1, 3)), np.array([0, 1] * 3)
    with _raises_naming(param, "probe_layers"):
        embetter_plug.probe_layers(X, y, cv=2, **kwargs)


@pytest.mark.parametrize("kwargs, param", [
    ({"store_dtype": "int8"}, "store_dtype"), ({"shard_size": 0}, "shard_size"),
    ({"overwrite": "yes"}, "overwrite"),
])
def test_streamed_extraction_checks_parameters_before_the_encoder_or_folder(tmp_path, kwargs,
                                                                          param):
    from embetter_plug.store.streaming import extract_to, extraction_plan

    unfitted = TransformerActivationEncoder()  # checked after the parameters
    with _raises_naming(param, "extract_to"):
        extract_to(unfitted, tmp_path / "out", ["a"], **kwargs)
    with _raises_naming(param, "extraction_plan"):
        extraction_plan(unfitted, tmp_path / "out", ["a"], **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, param", [
    ({"concurrency": 0}, "concurrency"), ({"num_cpus": -1}, "num_cpus"),
    ({"num_gpus": "one"}, "num_gpus"), ({"batch_size": 0}, "batch_size"),
    ({"store_dtype": "int8"}, "store_dtype"),
])
def test_extract_distributed_checks_parameters_before_ray(tmp_path, kwargs, param):
    with _raises_naming(param, "extract_distributed"):
        embetter_plug.extract_distributed(TransformerActivationEncoder(), tmp_path / "out", ["a"],
                                          **kwargs)
    if param in ("concurrency", "num_cpus", "num_gpus"):
        from embetter_plug.store.distributed import connect_ray

        with _raises_naming(param, "connect_ray"):
            connect_ray(**kwargs)


def test_decorated_functions_keep_their_signature_and_docstring():
    for name in ("probe_layers", "attention_patterns", "attention_metrics", "image_attention",
                 "extract_distributed"):
        func = getattr(embetter_plug, name)
        assert inspect.signature(func) == inspect.signature(func.__wrapped__)
        assert func.__doc__ == func.__wrapped__.__doc__ and func.__name__ == name
        assert set(func._parameter_constraints) <= set(inspect.signature(func).parameters)
