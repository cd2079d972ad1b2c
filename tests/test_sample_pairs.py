"""A pair is (text, image): two texts are refused with a message that says how to join them,
before any model work; a pair whose second element is an image or an image file still reads."""

from __future__ import annotations

import numpy as np
import pytest

from embetter_plug import TransformerActivationEncoder
from embetter_plug.inputs.samples import Sample, check_inputs

Image = pytest.importorskip("PIL.Image")


def test_pair_of_texts_is_refused_before_the_forward(tiny_gpt2):
    model, tok = tiny_gpt2
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        enc = TransformerActivationEncoder(model, tok, layers=[0]).fit()
        calls.clear()
        with pytest.raises(ValueError) as err:
            enc.transform([("a premise", "a hypothesis"), ("another", "one")])
    finally:
        handle.remove()
    message = str(err.value)
    assert message.startswith("X[0]: ('a premise', 'a hypothesis') is a pair of texts")
    assert "not a sample format" in message and "Join the two texts" in message
    assert "does not exist" in message  # in case an image file was meant
    assert calls == []


def test_pairs_with_an_image_second_still_read(tmp_path):
    pixels = np.random.RandomState(0).randint(0, 255, (8, 8, 3)).astype("uint8")
    path = tmp_path / "im.png"
    Image.fromarray(pixels).save(path)
    rows = check_inputs([("a", str(path)), ("b", path), ("c", pixels), ("d", None)])
    assert all(isinstance(r, Sample) for r in rows)
    assert [r.text for r in rows] == ["a", "b", "c", "d"]
    assert rows[0].image == str(path) and rows[1].image == path and rows[3].image is None
    # the same file given as a str or a Path is the same content
    assert rows[0].key == check_inputs([{"text": "a", "image": path}])[0].key
