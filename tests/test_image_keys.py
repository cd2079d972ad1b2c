"""Image content keys cover what the processor sees: palette images that differ only in their
palette (or transparency) get their own vectors, each equal to a forward of that image alone."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.testing import make_tiny_vision

Image = pytest.importorskip("PIL.Image")


def _palette_image(palette, fmt, transparency=None):
    """A P-mode image read back from a PNG or GIF file: the same indices, the given palette."""
    index = (np.arange(30 * 24).reshape(30, 24) // 7 % 4).astype(np.uint8)
    im = Image.fromarray(index).convert("P")
    im.putdata(index.ravel().tolist())
    im.putpalette([v for rgb in palette for v in rgb])
    buf = io.BytesIO()
    extra = {} if transparency is None else {"transparency": transparency}
    im.save(buf, format=fmt, **extra)
    out = Image.open(io.BytesIO(buf.getvalue()))
    assert out.mode == "P"
    return out


def _alone(model, processor, image):
    """Block 0's output for one image by a manual forward (no encoder involved)."""
    pix = processor(images=[_rgb(image)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pix, output_hidden_states=True).hidden_states[1][0, 0].numpy()


def _rgb(image):
    """RGB as the encoder documents it: transparent pixels on white."""
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


PAL_A = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (240, 240, 0)]
PAL_B = [(10, 10, 250), (240, 240, 0), (250, 10, 10), (10, 250, 10)]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_images_that_differ_only_in_palette_get_their_own_vectors(fmt):
    model, processor = make_tiny_vision("vit")
    a, b = _palette_image(PAL_A, fmt), _palette_image(PAL_B, fmt)
    assert a.tobytes() == b.tobytes() and a.getpalette() != b.getpalette()
    c = _palette_image(PAL_A, fmt, transparency=1)  # index 1 shows white instead of green
    enc = TransformerActivationEncoder(model, processor=processor, layers=[0],
                                       token_pooling="cls").fit()
    together = enc.transform([a, b, c])[:, 0, 0]
    for row, image in zip(together, (a, b, c)):
        np.testing.assert_allclose(row, _alone(model, processor, image), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(row, enc.transform([image])[0, 0, 0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(together[0], together[1])
    assert not np.allclose(together[0], together[2])
