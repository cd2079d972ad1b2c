"""Attention on the picture: each image's grid against the eager attentions of a forward of
the sample alone (``output_attentions`` with ``attn_implementation="eager"``)."""

import copy

import numpy as np
import pytest
import torch

from embetter_plug.inputs.images import load_image
from embetter_plug.inputs.multimodal import image_token
from embetter_plug.attention.image import image_attention
from embetter_plug.testing import make_tiny_vlm

pytest.importorskip("PIL.Image")


def _img(seed, size=(24, 30)):
    return np.random.RandomState(seed).randint(0, 255, (size[1], size[0], 3)).astype("uint8")


def _eager_attentions(model, processor, text, images):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    if getattr(processor, "chat_template", None):
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": text}]}], tokenize=False)
    inputs = processor(text=[text], images=[load_image(i) for i in images], return_tensors="pt")
    with torch.no_grad():
        att = eager(**inputs, output_attentions=True).attentions
    ids = inputs["input_ids"][0]
    return np.stack([a[0].numpy() for a in att]), (ids == model.config.image_token_id).numpy()


@pytest.mark.parametrize("kind", ["llava", "gemma3", "qwen2_vl"])
def test_grids_equal_eager_attentions_summed_per_image_token(kind):
    model, processor = make_tiny_vlm(kind)
    tok = image_token(processor)
    images = [_img(0, (48, 20)), _img(1, (40, 40))]
    text = f"compare {tok} with {tok} please"
    att, img = _eager_attentions(model, processor, text, images)  # (layers, heads, S, S)
    keys = np.flatnonzero(img)
    for query in ("mean", "last", 1):
        got = image_attention(model, processor, {"text": text, "images": images}, query=query)
        assert got.layers == tuple(range(att.shape[0])) and len(got.grids) == 2
        if query == "mean":
            row = att[:, :, ~img].mean(2)
        else:
            row = att[:, :, -1 if query == "last" else query]
        n0 = got.grids[0][0, 0].size
        want = [row[..., keys[:n0]], row[..., keys[n0:]]]
        for grid, w in zip(got.grids, want):
            assert grid.shape[:2] == att.shape[:2] and grid[0, 0].size == w.shape[-1]
            np.testing.assert_allclose(grid.reshape(*grid.shape[:2], -1), w, rtol=1e-4,
                                       atol=1e-6)
        # the two grids hold all the query's attention to the image tokens
        np.testing.assert_allclose(got.grids[0].sum((-1, -2)) + got.grids[1].sum((-1, -2)),
                                   row[..., keys].sum(-1), rtol=1e-4, atol=1e-6)


def test_grid_layout_box_plot_and_page(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    model, processor = make_tiny_vlm("llava")  # CLIP's processor: shortest edge 32, centre crop
    picture = _img(3, (48, 20))  # 48 wide, 20 high: scaled by 1.6 to 76.8 x 32, crop 32 x 32
    got = image_attention(model, processor, {"text": "a cat", "image": picture}, layers=[1],
                          heads=[0, 2])
    assert got.grids[0].shape == (1, 2, 4, 4)  # 16 patch tokens, row-major on a 4 x 4 grid
    np.testing.assert_allclose(got.boxes[0], (14.0, 0.0, 34.0, 20.0))
    fig = got.plot(1, 2)
    np.testing.assert_allclose(fig.axes[0].images[1].get_extent(), [14.0, 34.0, 20.0, 0.0])
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[1].get_array()), got.grids[0][0, 1])
    page = got.to_html(tmp_path / "image_attention.html").read_text()
    assert 'id="image-attention-layer"' in page and "data:image/png;base64," in page
    with pytest.raises(ValueError, match="layer 0, head 2 not computed"):
        got.plot(0, 2)
    with pytest.raises(ValueError, match="query=99"):
        image_attention(model, processor, {"text": "a cat", "image": picture}, query=99)


def test_pattern_grouped_by_image_runs():
    from embetter_plug.attention.patterns import attention_patterns

    model, processor = make_tiny_vlm("llava")
    tok = image_token(processor)
    sample = {"text": f"compare {tok} with {tok} now", "images": [_img(0), _img(1)]}
    pat = attention_patterns(model, processor, [sample], layers=[0, 1])[0]
    got = pat.grouped([tok])
    runs = [i for i, t in enumerate(got.tokens) if t.startswith("<16 x")]
    assert len(runs) == 2 and len(got.tokens) == len(pat.tokens) - 30
    img = np.array([t == tok for t in pat.tokens])
    first = np.flatnonzero(img)[:16]
    # a run as a key: its summed weight; as a query: the mean of its rows
    np.testing.assert_allclose(got.pattern[:, :, -1, runs[0]], pat.pattern[:, :, -1, first].sum(-1),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.pattern[:, :, runs[0], 0], pat.pattern[:, :, first, 0].mean(-1),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.pattern.sum(-1), 1.0, atol=1e-5)
    assert got.tokens[-1] == pat.tokens[-1] and pat.grouped(["nothing"]) is pat
