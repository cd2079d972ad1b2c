"""TransformerTuner on images: tiny vision encoders (ViT, CLIP and SigLIP vision models) fine-tuned
end to end on a two-colour task, checked against a manual forward of the tuned model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embetter_plug import TransformerTuner, load_model, save_model
from embetter_plug.testing import make_tiny_model, make_tiny_vision

Image = pytest.importorskip("PIL.Image")


def _colours(n: int = 24, seed: int = 0):
    """Reddish and bluish 16x16 squares with noise: separable by colour alone."""
    rng = np.random.RandomState(seed)
    images, y = [], []
    for i in range(n):
        a = rng.randint(0, 60, (16, 16, 3))
        a[..., 0 if i % 2 == 0 else 2] += 180
        images.append(a.clip(0, 255).astype("uint8"))
        y.append("red" if i % 2 == 0 else "blue")
    return images, np.array(y)


IMAGES, Y = _colours()


def _tuner(kind="vit", seed=0, **kw):
    model, processor = make_tiny_vision(kind, seed=seed)
    params = dict(max_epochs=3, batch_size=8, lr=1e-3, random_state=0, n_jobs=1, autocast=None)
    return TransformerTuner(model, processor=processor, **{**params, **kw})


@pytest.mark.parametrize("kind", ["vit", "clip", "siglip"])
def test_loss_falls_on_two_colours(kind):
    tuner = _tuner(kind, max_epochs=5, early_stopping=False).fit(IMAGES, Y)
    losses = tuner.net_.history[:, "train_loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert (tuner.predict(IMAGES) == Y).mean() == 1.0
    assert tuner.inputs_ == "images" and tuner.tokenizer_ is None
    assert tuner.pooling_ == "image:mean"  # as the encoder pools a vision encoder


@pytest.mark.parametrize("pooling", ["auto", "cls"])
def test_transform_is_the_pooled_last_hidden_state_of_the_tuned_model(pooling):
    """The embeddings equal a manual forward of the tuned vision model on pixel values made by
    the family's own image processor: the mean over the patch tokens (the class token left
    out) for ``auto``, the class token for ``cls``; the head's probabilities are the softmax of
    the head on them."""
    tuner = _tuner(token_pooling=pooling, max_epochs=2, early_stopping=False).fit(IMAGES, Y)
    model, processor = make_tiny_vision("vit")
    backbone = tuner.net_.module_.backbone
    assert not np.array_equal(backbone.embeddings.cls_token.detach().numpy(),
                              model.embeddings.cls_token.detach().numpy())  # it was tuned
    frozen = zip(backbone.get_input_embeddings().parameters(),
                 model.get_input_embeddings().parameters())  # the patch projection
    assert all(np.array_equal(p.detach().numpy(), q.detach().numpy()) for p, q in frozen)
    pix = processor(images=[Image.fromarray(a) for a in IMAGES[:5]],
                    return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = backbone(pixel_values=pix).last_hidden_state
    n_patches = (model.config.image_size // model.config.patch_size) ** 2
    assert hidden.shape[1] == n_patches + 1
    want = hidden[:, 1:].mean(1) if pooling == "auto" else hidden[:, 0]
    got = tuner.transform(IMAGES[:5])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)
    head = tuner.net_.module_.head
    with torch.no_grad():
        proba = torch.softmax(head(want).double(), -1).numpy()
    np.testing.assert_allclose(tuner.predict_proba(IMAGES[:5]), proba, rtol=1e-4, atol=1e-6)


def test_seeds_reproduce():
    a = _tuner(max_epochs=2).fit(IMAGES, Y).predict_proba(IMAGES)
    b = _tuner(max_epochs=2).fit(IMAGES, Y).predict_proba(IMAGES)
    c = _tuner(max_epochs=2, random_state=1).fit(IMAGES, Y).predict_proba(IMAGES)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_image_forms_and_save_load_keep_the_processor(tmp_path):
    """PIL images, files given as Paths, a stack as one array and DataFrame rows give the same
    predictions; the saved folder (no pickle) holds the image processor and predicts the same."""
    import pandas as pd

    # a model of its own: the shared one may carry transformers' output-capturing hooks from
    # other tests' forwards, and a model with hooks does not pickle
    tuner = _tuner(kind="siglip", seed=7, max_epochs=2).fit(IMAGES, Y)
    proba = tuner.predict_proba(IMAGES)
    paths = []
    for i, a in enumerate(IMAGES):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(paths[-1])
    for form in ([Image.fromarray(a) for a in IMAGES], paths, np.stack(IMAGES),
                 pd.DataFrame({"image": IMAGES})):
        np.testing.assert_allclose(tuner.predict_proba(form), proba, rtol=1e-5, atol=1e-6)
    folder = save_model(tuner, tmp_path / "tuner")
    assert (folder / "backbone" / "preprocessor_config.json").is_file()
    assert not list(folder.rglob("*.pkl"))
    loaded = load_model(folder)
    assert type(loaded.processor_) is type(tuner.processor_) and loaded.tokenizer_ is None
    assert np.array_equal(loaded.predict_proba(paths), proba)
    assert np.array_equal(loaded.transform(IMAGES), tuner.transform(IMAGES))
    import pickle

    again = pickle.loads(pickle.dumps(tuner))  # weights and configuration, not the model object
    assert np.array_equal(again.predict_proba(IMAGES), proba)


def _bad_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    return path


@pytest.mark.parametrize("case, match", [
    ("mixed", r"X\[1\] holds a text.*all texts \(for a text model\) or all images"),
    ("image_and_text", r"X\[0\] holds a text and an image"),
    ("unreadable", r"X\[3\]: image file '.*broken.png' is not an image file"),
    ("missing", r"X\[2\]: image file 'no/such.png' does not exist"),
    ("text_model", r"X holds images, but the model \(bert\) is a text model"),
    ("vision_given_texts", r"X holds texts, but the model \(vit\) is a vision encoder"),
])
def test_bad_inputs_fail_before_training(case, match, tmp_path, monkeypatch):
    from pathlib import Path

    images, y = IMAGES, Y
    X, tuner = list(images), _tuner()
    if case == "mixed":
        X[1] = "a red square"
    elif case == "image_and_text":
        X[0] = {"text": "red", "image": images[0]}
    elif case == "unreadable":
        X[3] = _bad_file(tmp_path)
    elif case == "missing":
        X[2] = Path("no/such.png")
    elif case == "text_model":
        model, tok = make_tiny_model("bert")
        tuner = TransformerTuner(model, tok, random_state=0)
    else:
        X = ["good film", "bad film"] * 12
    trained = []
    monkeypatch.setattr(TransformerTuner, "_make_net",
                        lambda *a, **k: trained.append(1) or pytest.fail("trained"))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        tuner.fit(X, y)
    assert trained == []


def test_fitted_on_images_refuses_texts():
    tuner = _tuner(max_epochs=1, early_stopping=False).fit(IMAGES, Y)
    with pytest.raises(ValueError, match="fitted on images, but X holds texts"):
        tuner.predict(["a red square"])
