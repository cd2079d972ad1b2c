"""Tuners on the real all-MiniLM-L6-v2 and a real labelled set (TREC questions, six classes)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics.pairwise import paired_cosine_distances
from sklearn.neighbors import KNeighborsClassifier

from conftest import shared_csv
from embetter_plug import (ContrastiveTuner, FeedForwardTuner, SbertLearner, SbertTuner,
                           SentenceEncoder)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def trec_rows():
    df = pd.read_csv(shared_csv("trec"), keep_default_na=False)
    train = df[df.split == "train"].sample(n=200, random_state=0)
    test = df[df.split == "test"].sample(n=400, random_state=0)  # disjoint: the held-out split
    return train, test


@pytest.fixture(scope="session")
def trec_embedded(trec_rows, minilm_path):
    train, test = trec_rows
    enc = SentenceEncoder(minilm_path, device="cpu").fit()
    return (enc.transform(train.text.tolist()), train.label.to_numpy(),
            enc.transform(test.text.tolist()), test.label.to_numpy())


@pytest.fixture(scope="session")
def st_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


def _cos(A, B):
    return 1 - paired_cosine_distances(A, B)


# ---------------------------------------------------------------- SentenceEncoder
def test_sentence_encoder_loading_bar_only_with_verbose(minilm_path, capfd):
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()  # the command line turns it off process-wide
    hf_logging.enable_progress_bar()
    try:
        capfd.readouterr()
        SentenceEncoder(minilm_path, device="cpu").fit()
        assert "Loading weights" not in capfd.readouterr().err
        SentenceEncoder(minilm_path, device="cpu", verbose=True).fit()
        assert "Loading weights" in capfd.readouterr().err
    finally:
        if not was_on:
            hf_logging.disable_progress_bar()


def test_sentence_encoder_matches_sentence_transformers(st_model, trec_rows):
    texts = trec_rows[0].text.tolist()[:6]
    ref = st_model.encode(texts)
    enc = SentenceEncoder(device="cpu").fit()  # model=None: the built-in MiniLM
    np.testing.assert_allclose(enc.transform(texts), ref, rtol=1e-4, atol=1e-5)
    unit = SentenceEncoder(normalize=True, device="cpu").fit().transform(texts)
    np.testing.assert_allclose(unit, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
    blob = pickle.dumps(enc)
    assert len(blob) < 100_000  # the model is not in the pickle
    again = pickle.loads(blob)
    assert "model_" not in again.__dict__
    np.testing.assert_allclose(again.transform(texts), ref, rtol=1e-4, atol=1e-5)
    assert enc.get_feature_names_out()[:2].tolist() == ["sentenceencoder0", "sentenceencoder1"]


# ---------------------------------------------------------------- tuners on MiniLM embeddings
@pytest.mark.parametrize("tuner", [FeedForwardTuner(random_state=0, device="cpu"),
                                   ContrastiveTuner(random_state=0, device="cpu")],
                         ids=["feedforward", "contrastive"])
def test_tuning_on_200_rows_separates_held_out_rows(tuner, trec_embedded):
    Xtr, ytr, Xte, yte = trec_embedded
    tuner.fit(Xtr, ytr)

    def knn(A, B):
        return KNeighborsClassifier(5).fit(A, ytr).score(B, yte)

    raw, tuned = knn(Xtr, Xte), knn(tuner.transform(Xtr), tuner.transform(Xte))
    assert tuned > raw + 0.03, (raw, tuned)


# ---------------------------------------------------------------- sentence-transformers fine-tuning
def _pairs(train, n=8, seed=0):
    rng = np.random.default_rng(seed)
    texts, labels = train.text.to_numpy(), train.label.to_numpy()
    a, b, sim = [], [], []
    while len(sim) < 2 * n:
        i, j = rng.integers(0, len(texts), size=2)
        same = labels[i] == labels[j]
        if i != j and sum(s == same for s in sim) < n:
            a.append(texts[i]), b.append(texts[j]), sim.append(int(same))
    return a, b, np.array(sim)


def test_sbert_learner_moves_pairs_the_intended_way(st_model, trec_rows):
    import torch

    a, b, sim = _pairs(trec_rows[0])
    before = _cos(st_model.encode(a), st_model.encode(b))
    param = next(st_model.parameters()).detach().clone()
    learner = SbertLearner(st_model, batch_size=8, max_steps=3, learning_rate=1e-4,
                           warmup_ratio=0.0, random_state=0, device="cpu").fit(a, b, sim)
    assert torch.equal(param, next(st_model.parameters()))  # the given model is not trained
    after = learner.predict(a, b)
    np.testing.assert_allclose(after, _cos(learner.transform(a), learner.transform(b)), atol=1e-5)
    assert after[sim == 1].mean() > before[sim == 1].mean()  # similar pairs closer
    gap = lambda s: s[sim == 1].mean() - s[sim == 0].mean()  # noqa: E731
    assert gap(after) > gap(before)  # and more clearly apart from the dissimilar ones

    # pickling keeps the fine-tuned weights (as a state dict), not the model object
    again = pickle.loads(pickle.dumps(learner))
    assert "model_" not in again.__dict__ and "_weights" in again.__dict__
    np.testing.assert_allclose(again.transform(a[:3]), learner.transform(a[:3]), rtol=1e-4, atol=1e-5)
    # partial_fit continues from the fine-tuned weights: a vanishing step changes nothing
    start = learner.transform(a[:3])
    learner.set_params(learning_rate=1e-12, max_steps=1).partial_fit(a, b, sim)
    np.testing.assert_allclose(learner.transform(a[:3]), start, atol=1e-5)


def test_sbert_tuner_pulls_same_class_texts_together(trec_rows, st_model):
    train = trec_rows[0]
    keep = train[train.label.isin(["HUM", "LOC", "NUM"])].iloc[:24]
    texts, y = keep.text.tolist(), keep.label.to_numpy()
    tuner = SbertTuner(n_neg=1, batch_size=8, max_steps=2, learning_rate=1e-4, warmup_ratio=0.0,
                       random_state=0, device="cpu").fit(texts, y)

    def gap(E):
        E = E / np.linalg.norm(E, axis=1, keepdims=True)
        S, same = E @ E.T, y[:, None] == y[None, :]
        off = ~np.eye(len(y), dtype=bool)
        return S[same & off].mean() - S[~same].mean()

    assert gap(tuner.transform(texts)) > gap(st_model.encode(texts))
    np.testing.assert_array_equal(tuner.classes_, ["HUM", "LOC", "NUM"])


def test_sbert_bad_input_fails_before_loading():
    learner = SbertLearner(model="/no/such/folder")
    with pytest.raises(ValueError, match="same number"):
        learner.fit(["a", "b"], ["c"], [1, 0])
    with pytest.raises(ValueError, match="0 \\(dissimilar\\) or 1"):
        learner.fit(["a", "b"], ["c", "d"], [1, 3])
    with pytest.raises(TypeError, match="only strings"):
        learner.fit(["a", None], ["c", "d"], [1, 0])
    with pytest.raises(ValueError, match="only one class"):
        SbertTuner(model="/no/such/folder").fit(["a", "b"], [1, 1])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        learner.fit(["a", "b"], ["c", "d"], [1, 0])
