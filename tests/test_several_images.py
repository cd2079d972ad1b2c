"""Samples with several images: poolings per image and over all image tokens, checked against a
forward of each sample alone (``output_hidden_states``) on tiny offline models."""

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.inputs.images import load_image
from embetter_plug.inputs.multimodal import image_token
from embetter_plug.inputs.samples import check_inputs
from embetter_plug.testing import make_tiny_vision, make_tiny_vlm

pytest.importorskip("PIL.Image")

POOL = ["image:mean", "image0:mean", "image1:mean", "image1:max", "text:mean", "lasttoken"]


def _img(seed, size=(24, 30)):
    return np.random.RandomState(seed).randint(0, 255, (size[1], size[0], 3)).astype("uint8")


def _prompt(processor, text, n_images):
    """What the model reads: the chat template with the images first, or the placeholders."""
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
        return processor.apply_chat_template([{"role": "user", "content": content}],
                                             tokenize=False)
    return image_token(processor) * n_images + text


def _alone(model, processor, sample):
    """``(block 0's output, image-token mask, tokens)`` of one sample run alone."""
    images = sample.get("images") or ([sample["image"]] if "image" in sample else [])
    text = sample["text"]
    if image_token(processor) not in text:
        text = _prompt(processor, text, len(images))
    elif getattr(processor, "chat_template", None):
        text = _prompt(processor, text, 0)
    kwargs = dict(text=[text], return_tensors="pt")
    if images:
        kwargs["images"] = [load_image(im) for im in images]
    inputs = processor(**kwargs)
    with torch.no_grad():
        h = model(**inputs, output_hidden_states=True).hidden_states[1][0].numpy()
    ids = inputs["input_ids"][0]
    img = (ids == model.config.image_token_id).numpy()
    return h, img, processor.tokenizer.convert_ids_to_tokens(ids.tolist())


@pytest.mark.parametrize("kind", ["llava", "llava_next", "idefics3", "qwen2_vl", "gemma3"])
def test_two_images_per_sample_equal_a_forward_alone(kind):
    model, processor = make_tiny_vlm(kind)
    tok = image_token(processor)
    samples = [{"text": f"compare {tok} with {tok} now", "images": [_img(0), _img(1, (48, 20))]},
               {"text": "one picture", "image": _img(2)},
               {"text": f"a {tok} with {tok}", "images": [_img(3, (40, 40)), _img(4)]},
               {"text": "two pictures before this", "images": [_img(5), _img(6, (20, 44))]}]
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0], token_pooling=POOL,
                                       batch_size=3)
    acts = enc.fit_transform(samples)
    kw = dict(rtol=1e-4, atol=1e-5)
    for i, s in enumerate(samples):
        h, img, toks = _alone(model, processor, s)
        got = acts[i, 0]
        np.testing.assert_allclose(got[0], h[img].mean(0), **kw)
        np.testing.assert_allclose(got[4], h[~img].mean(0), **kw)
        np.testing.assert_allclose(got[5], h[-1], **kw)
        if "image" in s:  # one image: image0 is all of it, there is no image1
            np.testing.assert_allclose(got[1], h[img].mean(0), **kw)
            assert np.isnan(got[2]).all() and np.isnan(got[3]).all()
        elif tok in s["text"]:  # the word "with" stands between the two images' tokens
            first = int(np.argmax(img))
            sep = next(j for j, t in enumerate(toks) if j > first and "with" in t)
            before = img & (np.arange(len(img)) < sep)
            after = img & (np.arange(len(img)) > sep)
            assert before.any() and after.any()
            np.testing.assert_allclose(got[1], h[before].mean(0), **kw)
            np.testing.assert_allclose(got[2], h[after].mean(0), **kw)
            np.testing.assert_allclose(got[3], h[after].max(0), **kw)
        else:  # placeholders put before the text: image 0's tokens come first, as many as
            # the first image gives alone
            alone = processor(text=[tok], images=[load_image(s["images"][0])],
                              return_tensors="pt")["input_ids"][0]
            n0 = int((alone == model.config.image_token_id).sum())
            where = np.flatnonzero(img)
            np.testing.assert_allclose(got[1], h[where[:n0]].mean(0), **kw)
            np.testing.assert_allclose(got[2], h[where[n0:]].mean(0), **kw)
    # the same in a DataFrame with an "images" column of lists, batched otherwise
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"text": [s["text"] for s in samples],
                          "images": [s.get("images", [s.get("image")]) for s in samples]})
    again = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                         token_pooling=POOL, batch_size=1).fit_transform(frame)
    np.testing.assert_allclose(again, acts, **kw)


def test_sample_keys_and_checks_before_the_forward():
    a, b = _img(0), _img(1)
    one = check_inputs([{"text": "t", "image": a}])[0]
    assert check_inputs([{"text": "t", "images": [a]}])[0].key == one.key  # the cache key kept
    ab, ba = check_inputs([{"text": "t", "images": [a, b]}, {"text": "t", "images": [b, a]}])
    assert ab.key != ba.key != one.key and ab.images[1] is b and ab.image is a
    with pytest.raises(ValueError, match="either 'image'.*or 'images'"):
        check_inputs([{"text": "t", "image": a, "images": [b]}])
    with pytest.raises(FileNotFoundError, match=r"X\[0\], image 1"):
        check_inputs([{"text": "t", "images": [a, "no/such/file.png"]}])

    model, processor = make_tiny_vlm("llava")
    calls = []
    hook = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="1 image placeholder.*for 2 image"):
            TransformerActivationEncoder(model, processor=processor).fit_transform(
                [{"text": "just <image> here", "images": [a, b]}])
        with pytest.raises(ValueError, match="'vision.' parts read one image per sample"):
            TransformerActivationEncoder(model, processor=processor,
                                         parts="vision.resid_post").fit_transform(
                [{"text": "x", "images": [a, b]}])
    finally:
        hook.remove()
    vision, vproc = make_tiny_vision("clip")
    hook = vision.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="vision encoder.*one per sample"):
            TransformerActivationEncoder(vision, processor=vproc).fit_transform(
                [{"images": [a, b]}])
    finally:
        hook.remove()
    assert calls == []
