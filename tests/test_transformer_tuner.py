"""TransformerTuner: fine-tuning on labels, checked on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from embetter_plug import TransformerTuner, load_model, save_model
from embetter_plug.testing import make_tiny_model

POS = ["good film", "great film", "lovely film", "fine acting"]
NEG = ["bad film", "awful film", "poor film", "dull acting"]
TEXTS = (POS + NEG) * 5
Y = np.array(([1] * 4 + [0] * 4) * 5)


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("bert", seed=3)


def _tuner(tiny, **kw):
    model, tok = tiny
    params = dict(max_epochs=4, batch_size=8, lr=2e-3, random_state=0, n_jobs=1)
    return TransformerTuner(model, tok, **{**params, **kw})


def test_loss_falls_on_a_separable_task(tiny):
    tuner = _tuner(tiny, max_epochs=8, lr=1e-2, early_stopping=False, autocast=None,
                   freeze_embeddings=False).fit(TEXTS, Y)
    losses = tuner.net_.history[:, "train_loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert (tuner.predict(TEXTS) == Y).mean() == 1.0


def test_model_given_is_not_changed(tiny):
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _tuner(tiny, max_epochs=1).fit(TEXTS, Y)
    assert all(np.array_equal(before[k].numpy(), v.numpy()) for k, v in model.state_dict().items())


def test_transform_is_the_pooled_last_hidden_state(tiny):
    """The embeddings equal a manual forward of the tuned backbone with mean pooling, and the
    head's probabilities are the softmax of the head on them."""
    import torch

    tuner = _tuner(tiny, max_epochs=1, autocast=None).fit(TEXTS, Y)
    backbone = tuner.net_.module_.backbone
    enc = tuner.tokenizer_(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone(**enc, output_hidden_states=True).hidden_states[-1]
    mask = enc["attention_mask"][..., None].float()
    want = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(tuner.transform(TEXTS[:3]), want, rtol=1e-4, atol=1e-5)
    head = tuner.net_.module_.head
    logits = head(torch.as_tensor(want)).detach().double()
    np.testing.assert_allclose(tuner.predict_proba(TEXTS[:3]), torch.softmax(logits, 1).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_early_stopping_restores_the_best_epoch(tiny):
    """A learning rate that blows training up after a few epochs: the restored weights are
    those of the epoch with the lowest validation loss, not the last."""
    tuner = _tuner(tiny, max_epochs=6, lr=0.5, warmup=0.0, patience=3, autocast=None).fit(TEXTS, Y)
    hist = tuner.net_.history
    valid = np.array(hist[:, "valid_loss"])
    assert tuner.best_epoch_ == int(np.argmin(valid)) + 1
    val = tuner.validation_indices_
    import torch
    logits = torch.as_tensor(np.log(tuner.predict_proba([TEXTS[i] for i in val])))
    loss = torch.nn.functional.nll_loss(logits, torch.as_tensor(Y[val])).item()
    np.testing.assert_allclose(loss, valid.min(), rtol=1e-3)


def test_seeds_reproduce(tiny):
    a = _tuner(tiny, max_epochs=2).fit(TEXTS, Y).predict_proba(TEXTS)
    b = _tuner(tiny, max_epochs=2).fit(TEXTS, Y).predict_proba(TEXTS)
    c = _tuner(tiny, max_epochs=2, random_state=1).fit(TEXTS, Y).predict_proba(TEXTS)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_decoder_uses_last_token_pooling():
    model, tok = make_tiny_model("gpt2", seed=3)
    tuner = TransformerTuner(model, tok, max_epochs=1, batch_size=8, random_state=0,
                             autocast=None).fit(TEXTS, Y)
    assert tuner.pooling_ == "lasttoken"
    import torch
    enc = tuner.tokenizer_(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = tuner.net_.module_.backbone(**enc).last_hidden_state
    last = enc["attention_mask"].sum(1) - 1
    np.testing.assert_allclose(tuner.transform(TEXTS[:2]), hidden[[0, 1], last].numpy(),
                               rtol=1e-4, atol=1e-5)


def test_top_layers_and_frozen_embeddings(tiny):
    model, _ = tiny
    tuner = _tuner(tiny, max_epochs=1, train_layers=1, early_stopping=False).fit(TEXTS, Y)
    tuned = tuner.net_.module_.backbone.state_dict()
    changed = {k for k, v in model.state_dict().items() if not np.array_equal(v.numpy(), tuned[k].numpy())}
    assert changed and all(k.startswith("encoder.layer.2.") for k in changed)
    tuner = _tuner(tiny, max_epochs=1, early_stopping=False).fit(TEXTS, Y)
    emb = tuner.net_.module_.backbone.get_input_embeddings().weight
    assert np.array_equal(emb.detach().numpy(), model.get_input_embeddings().weight.detach().numpy())


def test_layer_lr_decay_sets_group_rates(tiny):
    tuner = _tuner(tiny, max_epochs=1, layer_lr_decay=0.5, early_stopping=False, lr=1e-3).fit(TEXTS, Y)
    lrs = sorted({g["initial_lr"] for g in tuner.net_.optimizer_.param_groups})
    # embeddings 0.5**4, blocks 0..2: 0.5**3..0.5**1, the head 1e-3 itself
    np.testing.assert_allclose(lrs, [1e-3 * 0.5 ** k for k in (4, 3, 2, 1, 0)])


def test_supcon_option_trains(tiny):
    tuner = _tuner(tiny, max_epochs=2, supcon=0.5, early_stopping=False).fit(TEXTS, Y)
    assert np.isfinite(tuner.net_.history[:, "train_loss"]).all()


def test_clone_gridsearch_and_save_load(tiny, tmp_path):
    tuner = _tuner(tiny, max_epochs=1, early_stopping=False)
    assert clone(tuner).get_params()["lr"] == tuner.lr
    grid = GridSearchCV(tuner, {"lr": [1e-3, 2e-3]}, cv=2).fit(TEXTS, Y)
    assert grid.best_params_["lr"] in (1e-3, 2e-3)
    fitted = _tuner(tiny, max_epochs=2).fit(TEXTS, Y)
    loaded = load_model(save_model(fitted, tmp_path / "tuner"))
    assert np.array_equal(loaded.predict_proba(TEXTS), fitted.predict_proba(TEXTS))
    pipe = make_pipeline(_tuner(tiny, max_epochs=1), LogisticRegression()).fit(TEXTS, Y)
    again = load_model(save_model(pipe, tmp_path / "pipe"))
    assert np.array_equal(again.predict_proba(TEXTS), pipe.predict_proba(TEXTS))
    assert not list((tmp_path / "pipe").rglob("*.pkl"))


@pytest.mark.parametrize("texts, y, match", [
    (TEXTS, [1] * len(TEXTS), "at least two classes"),
    (TEXTS[:4], [1, 1, 0, 0], "too few for a stratified validation split"),
    (TEXTS, Y[:-1], "one label per text"),
    ("a text", [1], "single str"),
])
def test_bad_inputs_fail_before_training(tiny, texts, y, match, monkeypatch):
    tuner = _tuner(tiny)
    monkeypatch.setattr(type(tuner), "_load_backbone", lambda self: pytest.fail("loaded"))
    with pytest.raises((ValueError, TypeError), match=match):
        tuner.fit(texts, y)


@pytest.mark.parametrize("param, value", [("lr", 0), ("warmup", 1.0), ("layer_lr_decay", 2.0),
                                          ("autocast", "fp8"), ("train_layers", 0)])
def test_bad_params_name_themselves(tiny, param, value):
    with pytest.raises((ValueError, TypeError), match=param):
        _tuner(tiny, **{param: value}).fit(TEXTS, Y)
