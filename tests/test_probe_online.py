"""OnlineProbes: planted signal from a streamed encoder, metrics equal sklearn's, API, errors."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import (accuracy_score, f1_score, log_loss, matthews_corrcoef,
                             precision_score, recall_score)

from embetter_plug import OnlineProbes, TransformerActivationEncoder
from embetter_plug.layout import ActivationLayout
from embetter_plug.probe.online import confusion_metrics


class StreamOnlyEncoder:
    """A fitted stand-in encoder with only ``layout_`` and ``iter_batches``.

    Text ``"s{i}"`` has fixed random activations; layer position 1, part ``mlp_out`` carries
    the label of row ``i``. There is no ``transform``: everything must be streamed.
    """

    def __init__(self, y, hidden=8, batch_size=16, seed=0):
        rng = np.random.default_rng(seed)
        self.layout_ = ActivationLayout(layers=(0, 3), parts=("resid_post", "mlp_out"),
                                        hidden_size=hidden)
        self.acts = rng.normal(size=(len(y), 2, 2, hidden)).astype(np.float32)
        self.acts[:, 1, 1, :2] += 2.0 * (2 * np.asarray(y)[:, None] - 1)
        self.batch_size = batch_size
        self.largest_batch = 0
        self.passes = 0

    def iter_batches(self, texts):
        self.passes += 1
        rows = np.array([int(t[1:]) for t in texts])
        for start in range(0, len(texts), self.batch_size):
            idx = np.arange(start, min(start + self.batch_size, len(texts)))
            self.largest_batch = max(self.largest_batch, len(idx))
            yield idx, self.acts[rows[idx]].copy()


def _data(n=200, seed=0):
    y = np.random.default_rng(seed).integers(0, 2, size=n)
    return [f"s{i}" for i in range(n)], y


def test_planted_probe_wins_and_streaming_is_bounded():
    texts, y = _data()
    enc = StreamOnlyEncoder(y)
    probes = OnlineProbes(enc, max_epochs=4, patience=1, random_state=0).fit(texts, y)
    assert sorted(probes.probes_) == ["layer0__mlp_out", "layer0__resid_post", "layer3__mlp_out",
                                      "layer3__resid_post"]
    assert probes.best_probe_ == "layer3__mlp_out"
    assert probes.metrics_.loc["layer3__mlp_out", "accuracy"] > 0.9
    assert probes.metrics_.loc["layer0__resid_post", "accuracy"] < 0.75
    assert enc.largest_batch == 16
    # each epoch streams train and validation once, and the test texts once at the end
    assert enc.passes == 2 * probes.history_["epoch"].max() + 1


def test_metrics_equal_sklearn_on_the_rows():
    texts, y = _data(n=240, seed=1)
    enc = StreamOnlyEncoder(y, seed=1)
    probes = OnlineProbes(enc, max_epochs=2, random_state=1).fit(texts[:160], y[:160])
    table = probes.evaluate(texts[160:], y[160:])
    feats = probes.get_probe_features(texts[160:])
    yt = y[160:]
    for name, pipe in probes.probes_.items():
        pred, proba = pipe.predict(feats[name]), pipe.predict_proba(feats[name])
        row = table.loc[name]
        assert row["loss"] == pytest.approx(log_loss(yt, proba))
        assert row["accuracy"] == pytest.approx(accuracy_score(yt, pred))
        assert row["precision"] == pytest.approx(precision_score(yt, pred, average="macro", zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(yt, pred, average="macro"))
        assert row["f1"] == pytest.approx(f1_score(yt, pred, average="macro"))
        assert row["matthews"] == pytest.approx(matthews_corrcoef(yt, pred))
    np.testing.assert_array_equal(feats["layer3__mlp_out"], enc.acts[160:, 1, 1])


def test_best_epoch_is_kept():
    texts, y = _data(n=160, seed=2)
    probes = OnlineProbes(StreamOnlyEncoder(y, seed=2), max_epochs=5, patience=1, warmup_epochs=0,
                          alpha=1e-5, tol=0.0, random_state=0).fit(texts, y)
    h = probes.history_
    assert set(h.columns) == {"probe", "epoch", "loss", "accuracy"}
    best = h.groupby("probe")["loss"].min()
    for name, loss in best.items():
        assert probes.metrics_.loc[name, "validation_loss"] == pytest.approx(loss)
        assert probes.metrics_.loc[name, "epochs"] == h.loc[h["probe"] == name, "epoch"].max()
    # sorted by the validation loss that chose the epoch and the best probe
    assert probes.metrics_["validation_loss"].is_monotonic_increasing
    assert probes.metrics_.index[0] == probes.best_probe_


def test_metrics_come_from_held_out_rows_that_chose_nothing():
    texts, y = _data(n=200, seed=4)
    probes = OnlineProbes(StreamOnlyEncoder(y, seed=4), max_epochs=3, random_state=0)
    probes.fit(texts, y)
    sp = probes.splits_
    assert sorted(np.concatenate(list(sp.values())).tolist()) == list(range(200))
    assert len(sp["test"]) == 40 and len(sp["validation"]) == 40
    test = [texts[i] for i in sp["test"]]
    ref = probes.evaluate(test, y[sp["test"]])
    pd.testing.assert_frame_equal(probes.metrics_[ref.columns].sort_index(), ref.sort_index())
    # the validation loss of the kept epoch is that of the validation rows, not of the test rows
    val = probes.evaluate([texts[i] for i in sp["validation"]], y[sp["validation"]])
    np.testing.assert_allclose(probes.metrics_["validation_loss"], val.loc[probes.metrics_.index, "loss"])


class SortedEncoder(StreamOnlyEncoder):
    """Yields the texts it is given sorted by label, as a length-sorting encoder does when
    length follows the label; remembers the largest request."""

    def iter_batches(self, texts):
        self.passes += 1
        self.requests.append(len(texts))
        rows = np.array([int(t[1:]) for t in texts])
        order = np.argsort(self.y[rows], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield idx, self.acts[rows[idx]].copy()


def test_batches_are_shuffled_across_the_stream_every_epoch(monkeypatch):
    from sklearn.linear_model import SGDClassifier

    texts, y = _data(n=300, seed=5)
    enc = SortedEncoder(y, seed=5)
    enc.y, enc.requests = y, []
    seen = []
    original = SGDClassifier.partial_fit

    def spy(self, X, yb, classes=None, sample_weight=None):
        if X.shape[0] >= 8:
            seen.append((id(self), yb.copy()))
        return original(self, X, yb, classes=classes, sample_weight=sample_weight)

    monkeypatch.setattr(SGDClassifier, "partial_fit", spy)
    OnlineProbes(enc, max_epochs=2, patience=5, buffer_size=50, random_state=0).fit(texts, y)
    first = seen[0][0]
    batches = [b for k, b in seen if k == first]
    per_epoch = len(batches) // 2
    assert per_epoch >= 10
    # the encoder sorts each request by label, yet no batch is one label: shuffled after it
    assert not any(len(set(b.tolist())) == 1 for b in batches)
    # a new order every epoch
    assert any(not np.array_equal(a, b) for a, b in zip(batches[:per_epoch], batches[per_epoch:]))
    # bounded memory: 180 training texts encoded 50 at a time (validation and test, 60 each,
    # are streamed into confusion matrices, not held)
    assert sorted(set(enc.requests)) == [30, 50, 60]

    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    conf = pd.crosstab(t, p).reindex(index=range(4), columns=range(4), fill_value=0).to_numpy()
    m = confusion_metrics(conf)
    assert m["accuracy"] == pytest.approx(accuracy_score(t, p))
    assert m["f1"] == pytest.approx(f1_score(t, p, average="macro"))
    assert m["matthews"] == pytest.approx(matthews_corrcoef(t, p))
    assert m["precision"] == pytest.approx(precision_score(t, p, average="macro"))


def test_seeded_runs_repeat():
    texts, y = _data(n=120, seed=3)
    a = OnlineProbes(StreamOnlyEncoder(y), max_epochs=2, random_state=5).fit(texts, y).metrics_
    b = OnlineProbes(StreamOnlyEncoder(y), max_epochs=2, random_state=5).fit(texts, y).metrics_
    pd.testing.assert_frame_equal(a, b)


pytestmark = pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning")


@pytest.fixture(scope="module")
def tiny_fitted(tiny_gpt2):
    from embetter_plug import load_builtin_dataset

    model, tok = tiny_gpt2
    df = load_builtin_dataset("train").iloc[:60]
    enc = TransformerActivationEncoder(model, tok, layers=[0, 2], parts=["resid_post", "mlp_out"],
                                       token_pooling=["mean", "lasttoken"], max_length=48)
    probes = OnlineProbes(enc, max_epochs=2, random_state=0, class_weight="balanced")
    return probes.fit(df["text"].tolist(), df["label"].to_numpy()), df


def test_real_encoder_features_predict_and_pickle(tiny_fitted):
    probes, df = tiny_fitted
    texts = df["text"].tolist()[:10]
    assert probes.encoder is not probes.encoder_  # an unfitted encoder is cloned, not changed
    assert not hasattr(probes.encoder, "layout_")
    names = sorted(probes.probes_)
    assert names[0] == "layer0__mlp_out@lasttoken" and len(names) == 8
    ref = probes.encoder_.transform(texts)
    feats = probes.get_probe_features(texts)
    parts = list(probes.encoder_.layout_.parts)
    np.testing.assert_allclose(feats["layer2__resid_post@mean"],
                               ref[:, 1, parts.index("resid_post@mean")], rtol=1e-5, atol=1e-6)
    best = probes.best_probe_
    np.testing.assert_array_equal(probes.predict(texts), probes.probes_[best].predict(feats[best]))
    again = pickle.loads(pickle.dumps(probes))
    np.testing.assert_allclose(again.predict_proba(texts), probes.predict_proba(texts), rtol=1e-5)
    assert probes.score(df["text"].tolist(), df["label"]) >= 0
    assert probes.score(df["text"].tolist(), df["label"]) == pytest.approx(
        accuracy_score(df["label"], probes.predict(df["text"].tolist())))


def test_module_path_parts_are_probes(tiny_gpt2):
    from embetter_plug import load_builtin_dataset

    model, tok = tiny_gpt2
    df = load_builtin_dataset("train").iloc[:40]
    enc = TransformerActivationEncoder(model, tok, layers=[1, 2], parts=["h.{layer}.mlp", "h.0.attn"])
    probes = OnlineProbes(enc, max_epochs=1, random_state=0).fit(df["text"].tolist(), df["label"])
    assert sorted(probes.probes_) == ["layer1__h.0.attn", "layer1__h.1.mlp", "layer2__h.0.attn",
                                      "layer2__h.2.mlp"]
    feats = probes.get_probe_features(df["text"].tolist()[:4])
    ref = enc.fit().transform(df["text"].tolist()[:4])
    np.testing.assert_allclose(feats["layer2__h.2.mlp"], ref[:, 1, 0], rtol=1e-5, atol=1e-6)


def test_api_contract(tiny_gpt2):
    model, tok = tiny_gpt2
    est = OnlineProbes(TransformerActivationEncoder(model, tok), max_epochs=3, random_state=1)
    params = est.get_params(deep=False)
    fresh = OnlineProbes(**params)
    assert all(getattr(fresh, k) is v for k, v in params.items())
    assert not [a for a in vars(fresh) if a.endswith("_")]
    assert clone(est).get_params()["max_epochs"] == 3
    assert "encoder__layers" in est.get_params()
    with pytest.raises(NotFittedError):
        est.predict(["a text"])
    with pytest.raises(NotFittedError):
        est.get_probe_features(["a text"])


@pytest.mark.parametrize("kwargs, y, match", [
    ({}, np.zeros(40, dtype=int), "single class"),
    ({}, np.zeros(40), r"y has a single class \(0\.0\);"),  # not np.float64(0.0)
    ({}, np.repeat([0, 1], 10), "X has 40 texts but y has 20"),
    ({"max_epochs": 0}, np.repeat([0, 1], 20),
     r"'max_epochs' parameter of OnlineProbes must be an int in the range \[1, inf\)\. Got 0"),
    ({"validation_fraction": 1.5}, np.repeat([0, 1], 20),
     r"'validation_fraction' parameter of OnlineProbes must be a float in the range \(0(\.0)?, "
     r"1(\.0)?\)\. Got 1\.5"),
    ({"warmup_epochs": -1}, np.repeat([0, 1], 20), "warmup_epochs"),
])
def test_bad_input(kwargs, y, match):
    texts, _ = _data(n=40)
    with pytest.raises(ValueError, match=match):
        OnlineProbes(StreamOnlyEncoder(np.zeros(40, dtype=int)), **kwargs).fit(texts, y)


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": -1.0}, "alpha"),
    ({"learning_rate": "fastest"}, "learning_rate"),
    ({"learning_rate": "constant", "eta0": -0.5}, "eta0"),
])
def test_bad_sgd_settings_fail_before_any_activation_is_read(kwargs, match):
    texts, y = _data(n=40)
    enc = StreamOnlyEncoder(y)
    with pytest.raises(ValueError, match=match):
        OnlineProbes(enc, **kwargs).fit(texts, y)
    assert enc.passes == 0


def test_a_probe_whose_loss_is_never_finite_still_keeps_a_model(monkeypatch):
    texts, y = _data(n=60)
    monkeypatch.setattr(OnlineProbes, "_stream_metrics", lambda self, t, y, names, *a: {
        n: {"loss": np.nan, **confusion_metrics(np.eye(2, dtype=int))} for n in names})
    probes = OnlineProbes(StreamOnlyEncoder(y), max_epochs=2, random_state=0).fit(texts, y)
    assert all(p.named_steps["sgd"] is not None for p in probes.probes_.values())
    assert probes.predict(texts[:5]).shape == (5,)


def test_bad_texts_and_unknown_labels():
    texts, y = _data(n=40)
    with pytest.raises(TypeError, match="single str"):
        OnlineProbes(StreamOnlyEncoder(y)).fit("s1", y)
    with pytest.raises(TypeError, match="TransformerActivationEncoder"):
        OnlineProbes(object()).fit(texts, y)
    probes = OnlineProbes(StreamOnlyEncoder(y), max_epochs=1, random_state=0).fit(texts, y)
    with pytest.raises(ValueError, match=r"labels \[7\] not seen in fit"):
        probes.evaluate(texts[:4], [0, 1, 7, 0])
    with pytest.raises(ValueError, match="X has 4 texts but y has 3"):
        probes.evaluate(texts[:4], [0, 1, 0])


def test_class_weight_dict_keys_are_the_original_labels():
    texts, y = _data(n=120, seed=4)
    labels = np.array(["neg", "pos"])[y]
    enc = StreamOnlyEncoder(y, seed=4)
    probes = OnlineProbes(enc, max_epochs=1, random_state=0,
                          class_weight={"neg": 1.0, "pos": 3.0}).fit(texts, labels)
    for pipe in probes.probes_.values():
        assert pipe.named_steps["sgd"].class_weight == {0: 1.0, 1: 3.0}
    with pytest.raises(ValueError, match=r"class_weight has labels \['zzz'\]"):
        OnlineProbes(enc, class_weight={"zzz": 2.0}).fit(texts, labels)
    assert enc.passes == 3  # train, validation, test; the bad class_weight streams nothing


@pytest.mark.slow
def test_online_close_to_offline_on_minilm(minilm_path):
    """On real text, a streamed probe is within a few points of the offline probe."""
    from conftest import shared_csv
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    df = pd.read_csv(shared_csv("sst2"), keep_default_na=False)
    train = df[df["split"] == "train"].sample(600, random_state=0)
    test = df[df["split"] == "test"].sample(300, random_state=0)
    enc = TransformerActivationEncoder(minilm_path, layers=[2, 3], parts=["resid_post"],
                                       batch_size=64).fit()
    online = OnlineProbes(enc, max_epochs=4, random_state=0).fit(train["text"].tolist(), train["label"])
    on = online.evaluate(test["text"].tolist(), test["label"])
    Xtr, Xte = enc.transform(train["text"].tolist()), enc.transform(test["text"].tolist())
    for i, layer in enumerate((2, 3)):
        off = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=1000))
        acc = off.fit(Xtr[:, i, 0], train["label"]).score(Xte[:, i, 0], test["label"])
        assert acc > 0.7
        assert abs(on.loc[f"layer{layer}__resid_post", "accuracy"] - acc) < 0.05


def test_numeric_target_points_to_the_regression_probe():
    texts, _ = _data(n=60)
    enc = StreamOnlyEncoder(np.zeros(60, dtype=int))
    with pytest.raises(ValueError) as err:
        OnlineProbes(enc, max_epochs=1).fit(texts, np.linspace(0, 1, 60))
    msg = str(err.value)
    assert "trains classifiers only" in msg and "probe_layers(X, y, task='regression')" in msg
    assert "pass task=" not in msg  # OnlineProbes has no task parameter
    assert "task" not in OnlineProbes().get_params()
    assert enc.passes == 0


def _three_splits_work(labels, vf, tf):
    """scikit-learn's own stratified splits: test, then validation from the rest."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    try:
        rest, te = train_test_split(np.arange(len(labels)), test_size=tf, stratify=labels,
                                    random_state=0)
        tr, va = train_test_split(rest, test_size=vf / (1 - tf), stratify=labels[rest],
                                  random_state=0)
    except ValueError:
        return False
    return all(len(set(labels[s])) == len(set(labels)) for s in (tr, va, te))


@pytest.mark.parametrize("y, kwargs, need, problem", [
    (["a", "b", "a", "b"], {}, 7, "class(es) ['a', 'b'] have fewer than 3 texts"),
    (["a", "b", "a", "c"], {}, 12, "class(es) ['a', 'b', 'c'] have fewer than 3 texts"),
    (["a", "b"] * 10, {"validation_fraction": 0.05}, 22, "1 validation, 4 test and 15 training"),
    (["a", "b"] * 10, {"validation_fraction": 0.75}, 40, "15 validation, 4 test and 1 training"),
])
def test_too_few_texts_for_the_splits_say_what_is_needed(y, kwargs, need, problem):
    texts, _ = _data(n=len(y))
    enc = StreamOnlyEncoder(np.zeros(len(y), dtype=int))
    frac = kwargs.get("validation_fraction", 0.2)
    with pytest.raises(ValueError, match=rf"validation_fraction={frac} .* at least {need} texts, "
                                         rf"about {-(-need // len(set(y)))} per class.*"
                                         rf"Got {len(y)} texts; .*{re.escape(problem)}"):
        OnlineProbes(enc, max_epochs=1, **kwargs).fit(texts, y)
    assert enc.passes == 0
    # the stated minimum is what scikit-learn's stratified splits need
    for n, works in [(need, True), (need - 1, False)]:
        assert _three_splits_work(np.resize(sorted(set(y)), n), frac, 0.2) == works
    labels = np.resize(sorted(set(y)), need)
    OnlineProbes(StreamOnlyEncoder(np.zeros(need, dtype=int)), max_epochs=1,
                 **kwargs).fit(_data(n=need)[0], labels)
