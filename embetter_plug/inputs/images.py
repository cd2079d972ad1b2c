"""Images as the encoder takes them: checked up front, fingerprinted by content, read as RGB.

An image may be a PIL image, a path (``str`` or :class:`pathlib.Path`), encoded bytes (PNG,
JPEG, ...) or an array (``H x W`` grey, ``H x W x 3`` RGB or ``H x W x 4`` RGBA; ``uint8``, or
floats in ``[0, 1]``). :func:`check_image` runs before any model work: a missing or unreadable
file (decoded in full, so a truncated one is caught), a wrongly shaped array, NaN pixels or an
image mode that cannot become RGB is named with its row.
:func:`image_digest` keys the activation cache on the image's content, so changed pixels miss.
"""

from __future__ import annotations

import hashlib
import io
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_image", "image_digest", "is_image", "load_image"]

# modes PIL converts to RGB without losing what the picture shows
_CONVERTIBLE = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB",
                "HSV", "I", "I;16", "I;16B", "I;16L", "F", "La"}


def is_image(obj: Any) -> bool:
    """Whether ``obj`` is a PIL image, bytes or a 2-D/3-D array (a path is only known as an
    image by where it is given)."""
    from PIL import Image

    return (isinstance(obj, (Image.Image, bytes, bytearray))
            or (isinstance(obj, np.ndarray) and obj.ndim in (2, 3)))


def _array_problem(a: np.ndarray) -> str | None:
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        return (f"an array of shape {a.shape}; give H x W (grey), H x W x 3 (RGB) or "
                "H x W x 4 (RGBA)")
    if a.size == 0:
        return f"an empty array of shape {a.shape}"
    if a.dtype == np.uint8:
        return None
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))
        return (f"a {a.dtype} array with {len(bad)} NaN or infinite value(s) (first at index "
                f"{tuple(bad[0].tolist())}); fill them (e.g. np.nan_to_num(a)) or drop the image")
    if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer):
        lo, hi = float(np.min(a)), float(np.max(a))
        if np.issubdtype(a.dtype, np.floating) and 0.0 <= lo and hi <= 1.0:
            return None
        return (f"a {a.dtype} array with values in [{lo:g}, {hi:g}]; give uint8 (0-255) or "
                "floats in [0, 1], e.g. (a / a.max() * 255).astype('uint8')")
    return f"an array of dtype {a.dtype}; give uint8 or floats in [0, 1]"


def _decode(open_image, what: str, where: str, not_image: str = "is not an image file") -> str:
    """Decode an image fully (``load``): the mode it has, or a ValueError naming ``where`` and
    ``what`` (the file) when it is not an image or cannot be decoded, e.g. a truncated JPEG."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_image() as im:
            mode = im.mode
            im.load()
        return mode
    except UnidentifiedImageError:
        raise ValueError(f"{where}: {what} {not_image} (PNG, JPEG, ...).") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise ValueError(f"{where}: {what} cannot be decoded ({e}); re-save or drop it.") from None


def check_image(obj: Any, where: str) -> None:
    """Raise a clear error when ``obj`` cannot be read as an image (``where`` names the row).

    Files and bytes are decoded fully, so a truncated or corrupt one fails here, before any
    model work, rather than halfway through an extraction.
    """
    from PIL import Image

    if isinstance(obj, Image.Image):
        mode = obj.mode
        name = getattr(obj, "filename", "") or ""
        _decode(lambda: nullcontext(obj), f"the image{f' read from {name!r}' if name else ''}",
                where)
    elif isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: image file {str(obj)!r} does not exist (relative "
                                    f"paths are read from {Path.cwd()}).")
        mode = _decode(lambda: Image.open(path), f"image file {str(obj)!r}", where)
    elif isinstance(obj, (bytes, bytearray)):
        mode = _decode(lambda: Image.open(io.BytesIO(obj)), f"{len(obj)} bytes", where,
                       "that are not an image file")
    elif isinstance(obj, np.ndarray) or hasattr(obj, "__array__") and not isinstance(obj, str):
        problem = _array_problem(np.asarray(obj))
        if problem:
            raise ValueError(f"{where}: the image is {problem}.")
        return
    else:
        raise TypeError(f"{where}: {type(obj).__name__} is not an image; give a PIL image, a "
                        "path, encoded bytes or an H x W (x 3) array.")
    if mode not in _CONVERTIBLE:
        raise ValueError(f"{where}: image mode {mode!r} cannot be converted to RGB; convert it "
                         f"first (modes read as RGB: {sorted(_CONVERTIBLE)}).")


def load_image(obj: Any):
    """``obj`` as an RGB PIL image (alpha composited on white, grey repeated)."""
    from PIL import Image

    if isinstance(obj, (str, Path)):
        with Image.open(obj) as im:
            im.load()
            img = im
    elif isinstance(obj, (bytes, bytearray)):
        img = Image.open(io.BytesIO(obj))
        img.load()
    elif isinstance(obj, Image.Image):
        img = obj
    else:
        a = np.asarray(obj)
        if a.dtype != np.uint8:
            a = np.round(a.astype(np.float64) * 255).astype(np.uint8)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        img = Image.fromarray(a)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P"
                                                          and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # wide greys: scale to 8 bits
        a = np.asarray(img, dtype=np.float64)
        hi = a.max() or 1.0
        img = Image.fromarray(np.round(a / hi * 255).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def image_digest(obj: Any) -> str:
    """SHA-256 of an image's content: a file's or buffer's bytes, an array's values (with dtype
    and shape), or, for a PIL image, the RGB pixels :func:`load_image` gives the processor, so
    that whatever changes those (pixels, size, mode, palette, transparency) gives a new digest.

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> index = Image.fromarray(np.zeros((4, 4), "uint8")).convert("P")
    >>> red, blue = index.copy(), index.copy()
    >>> red.putpalette([255, 0, 0]); blue.putpalette([0, 0, 255])
    >>> image_digest(red) == image_digest(blue)
    False
    """
    from PIL import Image

    h = hashlib.sha256()
    if isinstance(obj, (str, Path)):
        with open(obj, "rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        return "file:" + h.hexdigest()
    if isinstance(obj, (bytes, bytearray)):
        h.update(obj)
        return "file:" + h.hexdigest()
    if isinstance(obj, Image.Image):  # what the processor sees: a palette only shows here
        rgb = load_image(obj)
        h.update(f"{rgb.mode}|{rgb.size}".encode())
        h.update(rgb.tobytes())
        return "pil-rgb:" + h.hexdigest()
    a = np.ascontiguousarray(np.asarray(obj))
    h.update(f"{a.dtype}|{a.shape}".encode())
    h.update(a.tobytes())
    return "array:" + h.hexdigest()
