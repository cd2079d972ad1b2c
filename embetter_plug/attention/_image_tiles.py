"""Where each image token of a tiled image lies on the original picture.

Models that cut an image into tiles give it several sets of tokens: the tiles of a resized
(and maybe padded) copy of the picture, and one overview of the whole picture. Each set is laid
out here as a regular grid of token offsets (offsets among the image's tokens, in sequence
order) and the box of the picture, in its own pixels, that the grid covers:

- ``"tiles"``: the mosaic of every tile's tokens in their place on the picture;
- ``"overview"``: the tokens of the whole picture seen at the tower's resolution.

Read from the processor's own outputs and the model's own code, not from tables of model names:

- LLaVA-NeXT "anyres" (a model with ``pack_image_features`` and ``image_grid_pinpoints``): the
  picture is resized into the best pinpoint resolution keeping its aspect, centred and padded,
  and cut into tiles row by row; the model puts the base image's tokens first, then the tiles'
  patches as one mosaic with the padding's rows or columns cut off, each row of patches followed
  by a row-end token (on no grid). The order is read by running the model's own
  ``pack_image_features`` on features that hold their own index.
- Image splitting (Idefics3, SmolVLM: an image processor that reports ``rows`` and ``cols``):
  the picture is resized to whole tiles and cut row by row, each tile's tokens a square grid
  in row order (the connector's pixel shuffle keeps rows), then the whole picture as one tile.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridMap:
    """A ``(rows, cols)`` array ``tokens`` of offsets among an image's tokens, covering
    ``box`` = ``(left, top, right, bottom)`` pixels of the picture; ``name`` says what it is
    (``"grid"``, ``"tiles"`` or ``"overview"``)."""

    name: str
    box: tuple
    tokens: np.ndarray


def _square(n: int) -> np.ndarray | None:
    side = math.isqrt(n)
    return np.arange(n).reshape(side, side) if n and side * side == n else None


def pinpoint_maps(model, processor, out, n: int, w: int, h: int) -> list[GridMap] | None:
    """The maps of a LLaVA-NeXT-style ("anyres") image, or ``None`` if the model is not one."""
    import torch
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension

    pack = getattr(model, "pack_image_features", None)
    cfg = getattr(model, "config", None)
    pins = getattr(cfg, "image_grid_pinpoints", None)
    ip_pins = getattr(processor.image_processor, "image_grid_pinpoints", None) or pins
    sizes, pix = out.get("image_sizes"), out.get("pixel_values")
    if (pack is None or not pins or sizes is None or pix is None or pix.dim() != 5
            or "vision_feature_select_strategy" not in inspect.signature(pack).parameters):
        return None
    vision = cfg.vision_config
    side = vision.image_size // vision.patch_size
    best_h, best_w = select_best_resolution([h, w], pins)
    nph, npw = best_h // vision.image_size, best_w // vision.image_size
    # each tile's features hold their own index: 0.. for the base image, then tile by tile
    feats = torch.arange((1 + nph * npw) * side * side, dtype=torch.float64)
    with torch.no_grad():
        packed, _ = pack([feats.reshape(1 + nph * npw, side * side, 1)], sizes[:1],
                         getattr(cfg, "vision_feature_select_strategy", "default"),
                         image_newline=torch.tensor([-1.0], dtype=torch.float64))
    ids = packed[0][:, 0].round().long().numpy()
    if len(ids) != n:
        return None
    base = np.flatnonzero((ids >= 0) & (ids < side * side))
    tile = np.flatnonzero(ids >= side * side)
    t, q = np.divmod(ids[tile] - side * side, side * side)
    r, c = (t // npw) * side + q // side, (t % npw) * side + q % side
    r0, c0 = r.min(), c.min()
    rows, cols = r.max() - r0 + 1, c.max() - c0 + 1
    if len(base) != side * side or rows * cols != len(tile):
        return None
    mosaic = np.full((rows, cols), -1)
    mosaic[r - r0, c - c0] = tile
    overview = base[ids[base].argsort()].reshape(side, side)
    # the processor resized the picture to fit (best_h, best_w) and centred it on the padding
    ch, cw = best_h / (nph * side), best_w / (npw * side)  # one mosaic cell, in those pixels
    in_h, in_w = get_patch_output_size(np.empty((1, h, w)), select_best_resolution(
        [h, w], ip_pins), ChannelDimension.FIRST)
    top, left = (best_h - in_h) // 2, (best_w - in_w) // 2
    box = ((c0 * cw - left) * w / in_w, (r0 * ch - top) * h / in_h,
           ((c0 + cols) * cw - left) * w / in_w, ((r0 + rows) * ch - top) * h / in_h)
    return [GridMap("tiles", tuple(float(v) for v in box), mosaic),
            GridMap("overview", _base_box(processor.image_processor, w, h), overview)]


def _base_box(ip, w: int, h: int) -> tuple:
    """The part of the picture in LLaVA-NeXT's base image: the picture squashed to ``size``,
    then (``do_center_crop``) its centre ``crop_size``."""
    size, crop = getattr(ip, "size", None), getattr(ip, "crop_size", None)
    sh = getattr(size, "height", None) or getattr(size, "shortest_edge", None)
    sw = getattr(size, "width", None) or getattr(size, "shortest_edge", None)
    fx = fy = 1.0
    if getattr(ip, "do_center_crop", False) and sh and sw and crop is not None:
        fy = min(1.0, (getattr(crop, "height", None) or sh) / sh)
        fx = min(1.0, (getattr(crop, "width", None) or sw) / sw)
    return ((1 - fx) / 2 * w, (1 - fy) / 2 * h, (1 + fx) / 2 * w, (1 + fy) / 2 * h)


def split_maps(processor, image, n: int, w: int, h: int) -> list[GridMap] | None:
    """The maps of an image cut into ``rows x cols`` tiles + the whole (Idefics3, SmolVLM), or
    ``None`` if the image processor does not report rows and columns."""
    ip = processor.image_processor
    if not hasattr(ip, "return_row_col_info"):
        return None
    info = ip([image], return_row_col_info=True)
    rows, cols = int(np.ravel(info["rows"])[0]), int(np.ravel(info["cols"])[0])
    tiles = rows * cols
    per = n // (tiles + 1)
    square = _square(per)
    full = (0.0, 0.0, float(w), float(h))
    if square is None or per * (tiles + 1) != n:
        return None
    if tiles == 0:  # small enough to be seen whole, as one tile
        return [GridMap("grid", full, square)]
    side = square.shape[0]
    r, c = np.indices((rows * side, cols * side))
    mosaic = ((r // side) * cols + c // side) * per + (r % side) * side + c % side
    return [GridMap("tiles", full, mosaic), GridMap("overview", full, square + tiles * per)]
