"""save_model / load_model of a whole fitted Pipeline, without pickle (skops + safetensors)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from embetter_plug import (LayerPooler, PlugClassifier, TransformerActivationEncoder, load_model,
                           save_model)

skops_io = pytest.importorskip("skops.io")


class Shift(TransformerMixin, BaseEstimator):
    """A user's own transformer: a type nobody has vouched for."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.asarray(X) + 1.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from embetter_plug import load_builtin_dataset
    from embetter_plug.testing import save_tiny_model

    model = save_tiny_model("gpt2", tmp_path_factory.mktemp("persist") / "gpt2")
    df = load_builtin_dataset("train").groupby("label").head(12)
    return str(model), df["text"].tolist(), df["label"].to_numpy()


def _pipe(model, last):
    return Pipeline([("encoder", TransformerActivationEncoder(model, layers=[1, 2])),
                     ("pooler", LayerPooler(layers=[1])), ("scale", StandardScaler()),
                     ("clf", last)])


@pytest.mark.parametrize("last", [PlugClassifier(max_epochs=3, random_state=0, n_jobs=1),
                                  LogisticRegression(max_iter=500)])
def test_pipeline_round_trip_without_pickle(data, tmp_path, monkeypatch, last):
    model, texts, y = data
    pipe = _pipe(model, last).fit(texts, y)
    folder = save_model(pipe, tmp_path / "saved")
    assert (folder / "pipeline.skops").is_file()
    assert (folder / "models" / "clf" / "model.safetensors").is_file() == isinstance(last, PlugClassifier)

    def no_pickle(*args, **kwargs):
        raise AssertionError("load_model used pickle")

    with monkeypatch.context() as m:
        for name in ("load", "loads", "Unpickler"):
            m.setattr(pickle, name, no_pickle)
        again = load_model(folder)
    assert [n for n, _ in again.steps] == ["encoder", "pooler", "scale", "clf"]
    assert type(again["clf"]) is type(last)
    np.testing.assert_allclose(again.predict_proba(texts), pipe.predict_proba(texts), atol=1e-6)
    np.testing.assert_array_equal(again.predict(texts), pipe.predict(texts))
    assert again["encoder"].layout_ == pipe["encoder"].layout_


def test_a_type_nobody_vouched_for_is_refused(data, tmp_path):
    model, texts, y = data
    pipe = Pipeline([("shift", Shift()), ("clf", LogisticRegression())]).fit(
        np.random.default_rng(0).normal(size=(len(y), 3)), y)
    with pytest.raises(TypeError, match=r"save_model cannot store \['test_pipeline_persistence"
                                        r"\.Shift'\]"):
        save_model(pipe, tmp_path / "refused")
    # a file written elsewhere that holds such a type does not load unless trusted
    folder = tmp_path / "foreign"
    folder.mkdir()
    skops_io.dump(pipe, folder / "pipeline.skops")
    with pytest.raises(TypeError, match=r"types that are not trusted: \['test_pipeline_persistence"
                                        r"\.Shift'\]"):
        load_model(folder)
    again = load_model(folder, trusted=["test_pipeline_persistence.Shift"])
    X = np.ones((2, 3))
    np.testing.assert_array_equal(again.predict_proba(X), pipe.predict_proba(X))


def test_remote_code_and_crafted_step_names_are_refused(data, tmp_path):
    from embetter_plug.models._pipeline_io import SavedModel

    model, texts, y = data
    pipe = _pipe(model, LogisticRegression(max_iter=500)).fit(texts, y)
    pipe.set_params(encoder__trust_remote_code=True)
    folder = save_model(pipe, tmp_path / "remote")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_model(folder)
    assert load_model(folder, trust_remote_code=True)["encoder"].trust_remote_code is True
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    skops_io.dump(Pipeline([("clf", SavedModel("../../elsewhere"))]), crafted / "pipeline.skops")
    with pytest.raises(ValueError, match="outside"):
        load_model(crafted)


def test_an_encoder_holding_a_model_object_is_refused(tiny_gpt2, tmp_path):
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok, layers=[0]).fit()
    with pytest.raises(TypeError, match=r"save_model cannot store this TransformerActivationEncoder "
                                        r"without pickle .*by its model's folder or hub name"):
        save_model(enc, tmp_path / "enc")
    assert not (tmp_path / "enc").exists()
