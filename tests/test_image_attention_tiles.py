"""Attention on the picture for models that cut an image into tiles (LLaVA-NeXT "anyres",
Idefics3 image splitting): each cell of the tiles' mosaic and of the overview holds the eager
attention to the image token that covers that part of the picture. Which token covers which
cell is worked out here from the processor's outputs and the documented token order, apart from
the code under test."""

import copy

import numpy as np
import pytest
import torch
from test_image_attention import _eager_attentions, _img

from embetter_plug.inputs.images import load_image
from embetter_plug.inputs.multimodal import image_token
from embetter_plug.attention.image import image_attention
from embetter_plug.testing import make_tiny_vlm

pytest.importorskip("PIL.Image")


def _image_tokens(model, processor, picture) -> int:
    out = processor(text=[image_token(processor)], images=[load_image(picture)],
                    return_tensors="pt")
    return int((out["input_ids"][0] == model.config.image_token_id).sum())


def _llava_next_truth(model, processor, picture):
    """``(overview, mosaic, row ends)`` offsets among the image's tokens, from the processor's
    ``image_sizes`` and pinpoints: the base image's 4 x 4 patches first, then the mosaic of the
    tiles' patches with the padding's rows (or columns) cut off evenly on both sides, each row
    followed by one row-end token."""
    from transformers.image_processing_utils import select_best_resolution

    out = processor(text=[image_token(processor)], images=[load_image(picture)],
                    return_tensors="pt")
    h, w = out["image_sizes"][0].tolist()
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    tile = out["pixel_values"].shape[-1]
    best_h, best_w = select_best_resolution([h, w], processor.image_processor.image_grid_pinpoints)
    rows, cols = best_h // tile * side, best_w // tile * side  # the whole mosaic, in patches
    if w / h > cols / rows:  # wider than the mosaic: padding above and below
        cut = (rows - int(round(h * cols / w, 7))) // 2
        rows -= 2 * cut
    else:
        cut = (cols - int(round(w * rows / h, 7))) // 2
        cols -= 2 * cut
    overview = np.arange(side * side).reshape(side, side)
    line = side * side + np.arange(rows)[:, None] * (cols + 1)
    mosaic = line + np.arange(cols)[None, :]
    assert side * side + rows * (cols + 1) == _image_tokens(model, processor, picture)
    return overview, mosaic, line[:, 0] + cols


def _check(got, att, img, truths, query):
    """Each image's grids against the eager row of ``query``, cell by cell."""
    row = att[:, :, ~img].mean(2) if query == "mean" else att[:, :, query]
    keys = np.flatnonzero(img)
    start = 0
    for j, (overview, mosaic, rest) in enumerate(truths):
        n = 1 + max(overview.max(), mosaic.max(), max(rest, default=-1))
        mine = row[..., keys[start:start + n]]
        start += n
        np.testing.assert_allclose(got.grids[j], mine[..., mosaic], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.overviews[j], mine[..., overview], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.rest[j], mine[..., list(rest)].sum(-1), rtol=1e-4,
                                   atol=1e-6)
    assert start == len(keys)


def test_llava_next_mosaic_unpadded_and_overview_equal_eager_attentions():
    model, processor = make_tiny_vlm("llava_next")
    tok = image_token(processor)
    # 70 x 20 fits the 64 x 32 pinpoint with padding above and below, cut off by the model;
    # 20 x 70 the 32 x 64 one with padding left and right
    images = [_img(0, (70, 20)), _img(1, (20, 70))]
    text = f"compare {tok} with {tok} please"
    att, img = _eager_attentions(model, processor, text, images)
    truths = [_llava_next_truth(model, processor, im) for im in images]
    assert [t[1].shape for t in truths] == [(2, 8), (8, 2)]  # a row / column cut each side
    for query in ("mean", 2):
        got = image_attention(model, processor, {"text": text, "images": images}, query=query)
        _check(got, att, img, truths, query)
    # the mosaic's place: the picture was resized to 64 x 19 (ceil of 20 * 64 / 70) and put 6
    # pixels down on the 64 x 32 canvas; the model keeps mosaic rows 1-2 (canvas pixels 8-24),
    # that is picture rows (8 - 6) * 20 / 19 to (24 - 6) * 20 / 19
    np.testing.assert_allclose(got.boxes[0], (0, 2 * 20 / 19, 70, 18 * 20 / 19))
    np.testing.assert_allclose(got.boxes[1], (2 * 20 / 19, 0, 18 * 20 / 19, 70))
    np.testing.assert_allclose(got.overview_boxes[0], (0, 0, 70, 20))  # squashed to 32 x 32


def test_idefics3_tiles_in_their_place_and_global_image_equal_eager_attentions():
    model, processor = make_tiny_vlm("idefics3")
    tok = image_token(processor)
    images = [_img(0, (24, 30)), _img(1, (70, 20))]  # 2 x 2 tiles; 1 x 2 tiles
    text = f"compare {tok} with {tok} please"
    att, img = _eager_attentions(model, processor, text, images)
    cfg = model.config
    g = cfg.vision_config.image_size // cfg.vision_config.patch_size // cfg.scale_factor
    truths = []
    for im in images:
        info = processor.image_processor([load_image(im)], return_row_col_info=True)
        rows, cols = info["rows"][0][0], info["cols"][0][0]
        per = g * g  # tokens per tile: tiles row by row, each row by row, then the whole image
        mosaic = np.block([[t * per + np.arange(per).reshape(g, g)
                            for t in range(r * cols, (r + 1) * cols)] for r in range(rows)])
        truths.append((rows * cols * per + np.arange(per).reshape(g, g), mosaic, []))
        assert (rows * cols + 1) * per == _image_tokens(model, processor, im)
    assert [t[1].shape for t in truths] == [(4, 4), (2, 4)]
    for query in ("mean", "last"):
        got = image_attention(model, processor, {"text": text, "images": images}, query=query)
        _check(got, att, img, truths, -1 if query == "last" else query)
    assert got.boxes == [(0, 0, 24, 30), (0, 0, 70, 20)] == got.overview_boxes


def test_idefics3_pixel_shuffle_keeps_rows():
    """The order assumed above: the connector's pixel shuffle makes token ``k`` of a tile from
    the ``s x s`` patches of block ``(k // g, k % g)``, blocks row by row."""
    model, _ = make_tiny_vlm("idefics3")
    side, s = 4, model.config.scale_factor
    ids = torch.arange(side * side, dtype=torch.float32).reshape(1, -1, 1)
    out = model.model.connector.pixel_shuffle(ids, s)[0].numpy()  # (tokens, s * s)
    r, c = np.divmod(out, side)
    k = np.arange(len(out))[:, None]
    assert (r // s == k // (side // s)).all() and (c // s == k % (side // s)).all()


def test_tiled_plot_and_page(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    model, processor = make_tiny_vlm("llava_next")
    got = image_attention(model, processor, {"text": "a cat", "image": _img(0, (70, 20))},
                          layers=[1])
    fig = got.plot(1, 0)
    tiles, over = fig.axes[0].images[1], fig.axes[1].images[1]
    np.testing.assert_allclose(tiles.get_extent(), [0, 70, 18 * 20 / 19, 2 * 20 / 19])
    np.testing.assert_allclose(np.asarray(over.get_array()), got.overviews[0][0, 0])
    page = got.to_html(tmp_path / "tiles.html").read_text()
    assert page.count('"name": "overview"') == 1 and page.count('"name": "tiles"') == 1
    # the probe report's section
    from embetter_plug import probe_layers
    from embetter_plug.probe import write_report

    y = np.repeat([0, 1], 20)
    x = np.random.default_rng(0).normal(size=(40, 2, 1, 4)) + 3 * y[:, None, None, None]
    res = probe_layers(x, y, cv=5)
    report = write_report(res, tmp_path / "report.html", image_attention=got).read_text()
    assert 'id="image-attention"' in report and report.count('"name": "tiles"') == 1


def test_processor_and_model_that_disagree_on_tiles_are_refused_before_the_forward():
    model, processor = make_tiny_vlm("llava_next")
    processor = copy.deepcopy(processor)
    processor.image_processor.image_grid_pinpoints = [[32, 32]]  # the model: 32x64 for this
    calls = []
    hook = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="tiles or crops that cannot be mapped back"):
            image_attention(model, processor, {"text": "a cat", "image": _img(0, (70, 20))})
    finally:
        hook.remove()
    assert calls == []
