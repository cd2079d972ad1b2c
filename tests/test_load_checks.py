"""load_model refuses remote code and unvetted loading settings anywhere in a loaded estimator:
inside a FeatureUnion, a ColumnTransformer, a grid search (its parameters and its fitted
attributes), not only as a Pipeline step."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler

from embetter_plug import LayerPooler, TransformerActivationEncoder, load_model

skops_io = pytest.importorskip("skops.io")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from embetter_plug.testing import save_tiny_model

    return str(save_tiny_model("gpt2", tmp_path_factory.mktemp("checks") / "gpt2"))


def _text_pipe(model, **encoder):
    return Pipeline([("encoder", TransformerActivationEncoder(model, layers=[1], **encoder)),
                     ("pooler", LayerPooler())])


def _wrapped(kind, model, **encoder):
    inner = _text_pipe(model, **encoder)
    if kind == "feature_union":
        return Pipeline([("features", FeatureUnion([("lm", inner), ("also", _text_pipe(model))])),
                         ("clf", LogisticRegression())])
    if kind == "column_transformer":
        return Pipeline([("columns", ColumnTransformer([("text", inner, "text")])),
                         ("clf", LogisticRegression())])
    if kind == "grid_search":
        return GridSearchCV(Pipeline([("features", inner), ("clf", LogisticRegression())]),
                            {"clf__C": [0.1, 1.0]}, cv=2)
    if kind == "fitted_attribute":  # the parameters are clean, a fitted attribute is not
        search = GridSearchCV(Pipeline([("features", _text_pipe(model)),
                                        ("clf", LogisticRegression())]), {"clf__C": [1.0]})
        search.best_estimator_ = Pipeline([("features", inner), ("clf", LogisticRegression())])
        return search
    raise AssertionError(kind)


def _write(est, folder):
    """A file written elsewhere (not by save_model): what a hostile folder would hold."""
    folder.mkdir()
    skops_io.dump(est, folder / "pipeline.skops")
    return folder


def _encoders(est):
    """The encoders in ``est``, found by scikit-learn's own deep get_params and attributes."""
    out, stack = [], [est]
    while stack:
        o = stack.pop()
        if isinstance(o, TransformerActivationEncoder):
            out.append(o)
        elif hasattr(o, "get_params"):
            stack += list(o.get_params(deep=True).values()) + list(vars(o).values())
    return out


@pytest.mark.parametrize("kind", ["feature_union", "column_transformer", "grid_search",
                                  "fitted_attribute"])
def test_remote_code_inside_a_meta_estimator_is_refused(model_dir, tmp_path, kind):
    folder = _write(_wrapped(kind, model_dir, trust_remote_code=True), tmp_path / kind)
    with pytest.raises(ValueError, match=r"holds a TransformerActivationEncoder \(model "
                                         r"'.*gpt2'\) with trust_remote_code=True"):
        load_model(folder)
    loaded = load_model(folder, trust_remote_code=True)
    assert any(e.trust_remote_code is True for e in _encoders(loaded))
    # the same estimator without remote code loads as it is
    clean = _write(_wrapped(kind, model_dir), tmp_path / f"{kind}-clean")
    assert not any(e.trust_remote_code for e in _encoders(load_model(clean)))


@pytest.mark.parametrize("kwargs", [
    {"code_revision": "abc123"}, {"trust_remote_code": True}, {"weights_only": False},
    {"use_kernels": True}, {"attn_implementation": "kernels-community/flash-attn"},
    {"subfolder": "elsewhere"}, {"gguf_file": "model.gguf"}, {"use_safetensors": False},
    {"some_setting": "a string"}, {"device_map": {"": ["not", "a", "device"]}},
])
def test_model_kwargs_that_could_run_code_or_load_elsewhere_are_refused(model_dir, tmp_path,
                                                                        kwargs):
    folder = _write(_wrapped("column_transformer", model_dir, model_kwargs=kwargs), tmp_path / "k")
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"whose model_kwargs ask from_pretrained for {key}="):
        load_model(folder)


def test_allowed_model_kwargs_load_and_the_opt_ins(model_dir, tmp_path):
    kwargs = {"device_map": "cpu", "dtype": "float32", "attn_implementation": "eager",
              "layer_norm_epsilon": 1e-3}
    loaded = load_model(_write(_text_pipe(model_dir, model_kwargs=kwargs), tmp_path / "ok"))
    assert loaded["encoder"].model_kwargs == kwargs
    # the loaded encoder passes them on: it equals one built here with the same settings
    texts = ["a short text", "and another one"]
    want = TransformerActivationEncoder(model_dir, layers=[1],
                                        model_kwargs=kwargs).fit_transform(texts)
    np.testing.assert_allclose(loaded.fit_transform(texts), want[:, 0, 0], rtol=1e-5, atol=1e-6)
    # a reviewed key is let through by name; remote code settings need trust_remote_code=True
    sub = _write(_text_pipe(model_dir, model_kwargs={"subfolder": "x"}), tmp_path / "sub")
    assert load_model(sub, model_kwargs_allowed=["subfolder"])["encoder"].model_kwargs == {
        "subfolder": "x"}
    remote = _write(_text_pipe(model_dir, model_kwargs={"code_revision": "abc"}), tmp_path / "r")
    with pytest.raises(ValueError, match="code_revision"):
        load_model(remote, model_kwargs_allowed=["code_revision"])
    assert load_model(remote, trust_remote_code=True)["encoder"].model_kwargs == {
        "code_revision": "abc"}


def test_every_loader_setting_of_the_installed_transformers_is_classified():
    """The keys from_pretrained, the auto classes and the config loader read are each either
    allowed (with checked values) or refused: a new one in transformers fails here."""
    from transformers.configuration_utils import PretrainedConfig
    from transformers.modeling_utils import PreTrainedModel
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    from embetter_plug.models._load_checks import ALLOWED, LOADER_KEYS

    names = set(inspect.signature(PreTrainedModel.from_pretrained).parameters) - {"kwargs"}
    for fn in (PreTrainedModel.from_pretrained, _BaseAutoModelClass.from_pretrained,
               PretrainedConfig.get_config_dict, PretrainedConfig._get_config_dict):
        names |= set(re.findall(r'kwargs\.(?:pop|get)\(\s*"(\w+)"', inspect.getsource(fn)))
    assert names, "the loader's settings could not be read"
    unclassified = sorted(names - set(ALLOWED) - LOADER_KEYS)
    assert unclassified == []


def test_reachable_estimators_walks_lists_dicts_and_attributes():
    from embetter_plug.models._load_checks import reachable_estimators

    scaler, clf = StandardScaler(), LogisticRegression()
    holder = Pipeline([("s", scaler), ("c", clf)])
    holder.extra_ = {"nested": [(1, np.array([clf, scaler], dtype=object))]}
    found = list(reachable_estimators(holder))
    assert found[0] is holder and {id(o) for o in found} == {id(holder), id(scaler), id(clf)}
