"""Inputs of the encoder: texts, or image+text samples.

Wherever the encoder takes texts it also takes samples that carry an image:

- a list of dicts ``{"text": ..., "image": ...}`` (either key may be missing or ``None``), or
  ``{"text": "compare <image> with <image>", "images": [a, b]}`` for several images;
- a DataFrame with an ``image`` column (or an ``images`` column of lists) and, optionally, a
  ``text`` column;
- ``(text, image)`` pairs (the image an image object, a path or an existing file's name; two
  texts are not a pair);
- images alone (PIL images, arrays, bytes, paths given as :class:`pathlib.Path`), or a stack of
  images as one array ``(n, H, W)`` / ``(n, H, W, 3)``, for a vision encoder.

An image is a PIL image, a path, encoded bytes or an array (see :mod:`embetter_plug.inputs.images`).
Each sample is checked before any model work, and gets a content key (its text and its image's
pixels or file bytes) that the activation cache and streamed extraction key on.

Examples
--------
>>> import numpy as np
>>> from embetter_plug.inputs.samples import check_inputs
>>> rows = check_inputs([{"text": "a red square", "image": np.zeros((8, 8, 3), "uint8")},
...                      {"text": "no picture here"}])
>>> rows[0].text, rows[1].image is None
('a red square', True)
>>> check_inputs(["plain", "texts"])
['plain', 'texts']
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .images import check_image, image_digest, is_image
from .._utils import check_texts

__all__ = ["Sample", "check_inputs", "has_images", "input_key"]


@dataclass(frozen=True, eq=False)
class Sample:
    """One image+text input: ``text`` (``None`` for an image alone) and ``image`` (``None``
    for a text alone; the first image where there are several). ``images`` holds every image
    in the order the text's placeholders name them. ``str(sample)`` is its content key."""

    text: str | None
    image: Any = None
    key: str = field(default="", repr=False)
    images: tuple = field(default=(), repr=False)

    def __str__(self) -> str:
        return self.key

    def __eq__(self, other) -> bool:
        return isinstance(other, Sample) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def _make(text, image, where: str, images=None) -> Sample:
    if text is not None and not isinstance(text, str):
        if _missing(text):
            text = None
        else:
            raise TypeError(f"{where}: text must be a string or None, got {type(text).__name__}.")
    single = [] if image is None or _missing(image) else [image]
    images = _image_list(images, where)
    if images and single:
        raise ValueError(f"{where}: give either 'image' (one) or 'images' (a list), not both.")
    images = images or single
    if not images and not text:
        raise ValueError(f"{where}: the sample is empty (no text and no image); drop it or give "
                         "a text or an image.")
    h = hashlib.sha256(b"sample-v1")
    h.update(b"\x00" if text is None else b"\x01" + text.encode("utf-8"))
    for k, im in enumerate(images):  # one image: the key it always had
        check_image(im, where if len(images) == 1 else f"{where}, image {k}")
        h.update(b"|" + image_digest(im).encode())
    return Sample(text, images[0] if images else None, "sample:" + h.hexdigest(), tuple(images))


def _image_list(images, where: str) -> list:
    if images is None or (not isinstance(images, (list, tuple, np.ndarray)) and _missing(images)):
        return []
    if isinstance(images, np.ndarray) and images.dtype != object and images.ndim in (2, 3):
        raise TypeError(f"{where}: 'images' is one array; give a list of images (or use "
                        "'image' for one).")
    if not isinstance(images, (list, tuple, np.ndarray)):
        raise TypeError(f"{where}: 'images' must be a list of images, got "
                        f"{type(images).__name__}.")
    return list(images)


def _missing(value) -> bool:
    if isinstance(value, float):
        return value != value
    return value is None or type(value).__name__ in ("NAType", "NaTType")


def _is_path_or_image(obj) -> bool:
    return isinstance(obj, Path) or is_image(obj)


def check_inputs(X: Any, *, name: str = "X", where=None) -> list[str] | list[Sample]:
    """Texts as a list of ``str`` (checked as before), or samples as a list of :class:`Sample`.

    Raises before any model work, naming the row (``name[i]``, or ``where(i)`` for a list of
    samples, e.g. a CSV line) and what is wrong with it.
    """
    if isinstance(X, np.ndarray) and X.ndim in (3, 4) and X.dtype != object:
        return [_make(None, img, f"{name}[{i}]") for i, img in enumerate(X)]
    if hasattr(X, "columns") and getattr(X, "ndim", 1) == 2 and ({"image", "images"}
                                                                    & set(X.columns)):
        extra = [c for c in X.columns if c not in ("text", "image", "images")]
        if extra:
            raise ValueError(f"{name} has columns {list(X.columns)}; samples read 'image' (or "
                             f"'images') and 'text' only, drop {extra}.")
        if len(X) == 0:
            raise ValueError(f"{name} is empty: pass at least one sample.")
        none = [None] * len(X)
        texts = X["text"].tolist() if "text" in X.columns else none
        singles = X["image"].tolist() if "image" in X.columns else none
        lists = X["images"].tolist() if "images" in X.columns else none
        return [_make(t, im, f"{name} row {i}", ims if "images" in X.columns else None)
                for i, (t, im, ims) in enumerate(zip(texts, singles, lists))]
    if (type(X).__name__ == "Series" or (isinstance(X, np.ndarray) and X.ndim == 1
                                         and X.dtype == object)):
        X = list(X)  # a column of dicts or images reads like a list
    if isinstance(X, (list, tuple)) and X and any(  # bytes alone stay a (wrong) text
            isinstance(x, (dict, Sample)) or (_is_path_or_image(x) and not isinstance(x, bytes))
            or (isinstance(x, tuple) and len(x) == 2) for x in X):
        return [_one(x, where(i) if where else f"{name}[{i}]") for i, x in enumerate(X)]
    return check_texts(X, name=name)


def _one(x, where: str) -> Sample:
    if isinstance(x, Sample):
        return x
    if isinstance(x, dict):
        extra = set(x) - {"text", "image", "images"}
        if extra:
            raise ValueError(f"{where}: unknown keys {sorted(extra)}; a sample has 'text' and/or "
                             "'image' (or 'images', a list).")
        return _make(x.get("text"), x.get("image"), where, x.get("images"))
    if isinstance(x, tuple) and len(x) == 2:
        _check_pair(x, where)
        return _make(x[0], x[1], where)
    if isinstance(x, str):
        return _make(x, None, where)
    if _is_path_or_image(x):
        return _make(None, x, where)
    raise TypeError(f"{where}: {type(x).__name__} is neither a text, an image nor a sample; give "
                    "{'text': ..., 'image': ...} dicts, (text, image) pairs or images.")


def _check_pair(x: tuple, where: str) -> None:
    """A ``(text, image)`` pair holds an image second: an image object, a Path, or a string that
    names an existing file. Two strings otherwise are a pair of texts, which no model reads as
    one sample."""
    text, image = x
    if not isinstance(image, str) or Path(image).is_file():
        return
    shown = ", ".join(repr(v if len(v) <= 40 else v[:37] + "...") if isinstance(v, str) else
                      type(v).__name__ for v in x)
    raise ValueError(
        f"{where}: ({shown}) is a pair of texts, which is not a sample format: a pair is "
        "(text, image), with an image (a PIL image, a path, bytes or an array) second. Join the "
        "two texts into one string (e.g. f\"{a} {tokenizer.sep_token} {b}\") or encode each "
        f"side on its own. If {image[:60]!r} names an image file, it does not exist (relative "
        f"paths are read from {Path.cwd()})."
    )


def has_images(inputs: list) -> bool:
    """Whether checked inputs are samples (rather than plain texts)."""
    return bool(inputs) and isinstance(inputs[0], Sample)


def input_key(x: str | Sample) -> str:
    """What identifies an input's content: the text itself, or a sample's content key."""
    return x if isinstance(x, str) else x.key
