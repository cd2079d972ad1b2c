"""Where on the picture a text token looks: attention over image tokens as a heatmap on the image.

For one image+text sample, :func:`image_attention` takes the post-softmax attention of a query
(a chosen token, or the mean over the text tokens) to each image token, per layer and head, and
lays each image's tokens out on its patch grid, placed over the region of the picture the model
saw:

- one tower row per image and a square number of tokens (LLaVA, PaliGemma, Gemma-3): the grid
  is square, row-major over the processed image; where the image processor resizes the short
  side and crops the centre (CLIP's processor), the grid covers that centre of the picture,
  else the whole picture (resized to the model's input);
- patches merged on a grid of the image's own resolution (Qwen2-VL, ``image_grid_thw``): the
  grid is the merged ``h x w`` over the whole picture;
- images cut into tiles (LLaVA-NeXT "anyres", Idefics3/SmolVLM image splitting): two grids,
  the tiles' mosaic in its place on the picture (LLaVA-NeXT: with the padding's rows or columns
  cut off as the model does, the box may then reach a little past the picture's edge) and the
  overview (the whole picture seen as one tile); LLaVA-NeXT's row-end tokens lie on neither (see
  :mod:`embetter_plug.attention._image_tiles`). The two are drawn side by side rather than averaged: they
  are different tokens, and the model may attend to the one and not the other;
- any other layout (several crops of unknown place, video frames) is refused with an error
  before the forward pass; ``attn_image`` gives the attention to the image as a whole.

Each cell holds the attention to that image token; :meth:`ImageAttention.plot` draws it over
the picture, :meth:`ImageAttention.to_html` writes a page with layer and head selectors (the same
section goes into the probe report with ``write_report(..., image_attention=...)``).

Examples
--------
>>> import numpy as np
>>> from embetter_plug.attention.image import image_attention
>>> from embetter_plug.testing import make_tiny_vlm
>>> model, processor = make_tiny_vlm("llava")
>>> picture = np.random.RandomState(0).randint(0, 255, (30, 24, 3)).astype("uint8")
>>> att = image_attention(model, processor, {"text": "a cat", "image": picture}, layers=[0])
>>> att.grids[0].shape  # (layers, heads, rows, cols)
(1, 4, 4, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np

from .._constraints import Heads, Indices, StrOptions, validate_params

__all__ = ["ImageAttention", "image_attention"]


@dataclass
class ImageAttention:
    """Attention of one query over each image of a sample: ``grids[j][layer_pos, head_pos]``
    is image ``j``'s ``(rows, cols)`` grid (for a tiled image, the mosaic of its tiles);
    ``boxes[j]`` the ``(left, top, right, bottom)`` pixels of ``pictures[j]`` the grid covers;
    ``query`` the token (or ``"mean"``). For a tiled image, ``overviews[j]`` is the grid of its
    overview (the whole picture seen as one tile) over ``overview_boxes[j]`` (``None`` for an
    image seen as one grid); ``rest[j]`` (``(layers, heads)``) the weight of its image tokens on
    no grid (LLaVA-NeXT's row ends), so that grid + overview + rest sum to the weight on all the
    image's tokens."""

    text: str
    query: str
    layers: tuple
    heads: tuple
    pictures: list
    boxes: list
    grids: list
    overviews: list | None = None
    overview_boxes: list | None = None
    rest: list | None = None

    def plot(self, layer: int, head: int, image: int = 0, ax=None, alpha: float = 0.6):
        """The grid of ``layer``/``head`` over picture ``image``, as a matplotlib figure; for a
        tiled image, the tiles' mosaic and beside it the overview (with ``ax``: the mosaic
        alone, on ``ax``)."""
        import matplotlib.pyplot as plt

        if layer not in self.layers or head not in self.heads:
            raise ValueError(f"layer {layer}, head {head} not computed; this holds layers "
                             f"{list(self.layers)} and heads {list(self.heads)}.")
        if not 0 <= image < len(self.grids):
            raise ValueError(f"image {image}: the sample has {len(self.grids)} image(s).")
        at = (self.layers.index(layer), self.heads.index(head))
        over = self.overviews[image] if self.overviews else None
        if ax is None:
            _, axes = plt.subplots(1, 1 if over is None else 2,
                                   figsize=(5 if over is None else 10, 5), squeeze=False)
            ax = axes[0, 0]
            if over is not None:
                self._draw(axes[0, 1], over[at], self.overview_boxes[image], image, alpha,
                           f"overview, layer {layer}, head {head}")
        what = "tiles" if over is not None else f"{self.query!r} -> image {image}"
        return self._draw(ax, self.grids[image][at], self.boxes[image], image, alpha,
                          f"{what}, layer {layer}, head {head}")

    def _draw(self, ax, grid, box, image: int, alpha: float, title: str):
        left, top, right, bottom = box
        ax.imshow(self.pictures[image])
        im = ax.imshow(grid, cmap="inferno", alpha=alpha, extent=(left, right, bottom, top),
                       interpolation="nearest")
        ax.set_xlim(0, self.pictures[image].shape[1])
        ax.set_ylim(self.pictures[image].shape[0], 0)
        ax.set_title(f"{title} (sum {grid.sum():.3f})", fontsize=9)
        ax.figure.colorbar(im, ax=ax, fraction=0.046, label="attention")
        return ax.figure

    def to_html(self, path) -> "Path":  # noqa: F821
        """A page with the pictures and the heatmap of the chosen layer and head."""
        from pathlib import Path

        from .image_page import image_attention_page

        path = Path(path)
        path.write_text(image_attention_page(self), encoding="utf-8")
        return path


def _grid_of(processor, image, image_ids, model=None) -> tuple[list, int]:
    """``(maps, tokens)`` of one image processed alone: the :class:`GridMap` s of its tokens on
    the picture (see the module's notes) and its number of image tokens."""
    import torch

    from ._image_tiles import GridMap, pinpoint_maps, split_maps
    from ..inputs.multimodal import image_token

    w, h = image.size
    out = processor(text=[image_token(processor)], images=[image], return_tensors="pt")
    n = int(torch.isin(out["input_ids"][0], torch.as_tensor(image_ids)).sum())
    full = (0.0, 0.0, float(w), float(h))
    grid = out.get("image_grid_thw")
    if grid is not None:
        t, gh, gw = (int(v) for v in grid[0])
        merge = int(getattr(processor.image_processor, "merge_size", None) or 1)
        rows, cols = gh // merge, gw // merge
        if t * rows * cols == n and t == 1:
            return [GridMap("grid", full, np.arange(n).reshape(rows, cols))], n
    maps = pinpoint_maps(model, processor, out, n, w, h) if model is not None else None
    maps = maps or split_maps(processor, image, n, w, h)
    if maps:
        return maps, n
    pix = out.get("pixel_values")
    side = math.isqrt(n)
    if pix is None or pix.dim() != 4 or pix.shape[0] != 1 or side * side != n:
        shape = None if pix is None else tuple(pix.shape)
        raise ValueError(
            f"{type(processor).__name__} gives this image {n} image tokens (pixel_values of "
            f"shape {shape}), which this model lays out as tiles or crops that cannot be mapped "
            "back to the picture here; read the attention to the image as a whole with the "
            "attn_image metric, or use a model that sees an image as one grid or as tiles read "
            "here (LLaVA, Gemma-3, PaliGemma, Qwen2-VL, LLaVA-NeXT, Idefics3).")
    box = _crop_box(processor.image_processor, w, h) or full
    return [GridMap("grid", box, np.arange(n).reshape(side, side))], n


def _crop_box(ip, w: int, h: int):
    """The centre crop of a resize-shortest-edge-then-crop processor, in picture pixels."""
    if not getattr(ip, "do_center_crop", False):
        return None
    size, crop = getattr(ip, "size", None), getattr(ip, "crop_size", None)
    short = getattr(size, "shortest_edge", None) if size is not None else None
    cw = getattr(crop, "width", None) if crop is not None else None
    ch = getattr(crop, "height", None) if crop is not None else None
    if not (short and cw and ch):
        return None
    scale = short / min(w, h)
    rw, rh = w * scale, h * scale
    left, top = max(0.0, (rw - cw) / 2) / scale, max(0.0, (rh - ch) / 2) / scale
    return (left, top, left + min(cw, rw) / scale, top + min(ch, rh) / scale)


@validate_params({"query": [StrOptions({"mean", "last"}), Integral], "layers": [Indices("layers")],
                  "heads": [Heads()]})
def image_attention(model, processor=None, sample: Any = None, *, query: Any = "mean",
                    layers: Any = "all", heads: Any = "all") -> ImageAttention:
    """Attention of ``query`` over each image token of ``sample``, on each image's grid.

    Parameters
    ----------
    model : vision-language model or fitted TransformerActivationEncoder
    processor : its processor (an encoder brings its own)
    sample : dict ``{"text": ..., "image": ...}`` or ``{"text": ..., "images": [...]}``
    query : "mean", "last" or int, default="mean"
        The mean over the sample's text tokens (every token that is not an image token), its
        last token, or the position of one token among the sample's real tokens.
    layers, heads : "all", int or list of int

    Returns
    -------
    ImageAttention
    """
    import torch

    from ..inputs.images import load_image
    from ..inputs.multimodal import image_token_ids
    from .patterns import attention_patterns
    from ..inputs.samples import check_inputs, has_images

    rows = check_inputs([sample], name="sample")
    if not has_images(rows) or not rows[0].images:
        raise ValueError("image_attention needs a sample with an image: {'text': ..., "
                         "'image': ...}.")
    s = rows[0]
    proc = processor if processor is not None else getattr(model, "processor_", None)
    if not hasattr(proc, "image_processor"):
        raise ValueError("image_attention needs the model's processor: pass processor= (or a "
                         "fitted encoder with processor=).")
    mdl = getattr(model, "model_", None) or model
    ids = image_token_ids(mdl, proc)
    pictures = [load_image(im) for im in s.images]
    layouts = [_grid_of(proc, pic, ids, mdl) for pic in pictures]  # refuses before the forward
    pat = attention_patterns(model, proc, [s], layers=layers, heads=heads)[0]
    tok_ids = proc.tokenizer.convert_tokens_to_ids(pat.tokens)
    image = torch.isin(torch.as_tensor(tok_ids), torch.as_tensor(ids)).numpy()
    if int(image.sum()) != sum(n for *_, n in layouts):
        raise ValueError(f"the sample has {int(image.sum())} image tokens, but its images "
                         f"come to {[n for *_, n in layouts]} processed alone; their tokens "
                         "cannot be told apart per image.")
    p = pat.pattern  # (layers, heads, S, S)
    if isinstance(query, str) and query == "mean":
        row, label = p[:, :, ~image].mean(2), "mean"
    elif isinstance(query, str) and query == "last":
        row, label = p[:, :, -1], pat.tokens[-1]
    elif isinstance(query, (int, np.integer)) and not isinstance(query, bool):
        if not -len(image) <= query < len(image) or image[query]:
            raise ValueError(f"query={query}: give the position of a text token among the "
                             f"sample's {len(image)} tokens (image tokens are at "
                             f"{np.flatnonzero(image)[[0, -1]].tolist()}), 'mean' or 'last'.")
        row, label = p[:, :, query], pat.tokens[query]
    else:
        raise ValueError(f"query={query!r}: give 'mean', 'last' or a token position (int).")
    keys = np.flatnonzero(image)
    placed, start = [], 0
    for maps, n in layouts:
        placed.append(_place(row[..., keys[start:start + n]], maps))
        start += n
    grids, boxes, overviews, overview_boxes, rest = (list(v) for v in zip(*placed))
    return ImageAttention(s.text or "", label, pat.layers, pat.heads,
                          [np.asarray(pic) for pic in pictures], boxes, grids, overviews,
                          overview_boxes, rest)


def _place(weights, maps) -> tuple:
    """``(grid, box, overview, overview box, rest)`` of one image's ``(layers, heads, tokens)``
    weights laid out on its maps; ``rest`` is the weight of its tokens on no map."""
    on = {m.name: m for m in maps}
    main, over = on.get("tiles") or on["grid"], on.get("overview")
    off = np.ones(weights.shape[-1], dtype=bool)
    for m in maps:
        off[m.tokens.ravel()] = False
    rest = weights[..., off].sum(-1)
    if over is None:
        return weights[..., main.tokens], main.box, None, None, rest
    return weights[..., main.tokens], main.box, weights[..., over.tokens], over.box, rest
