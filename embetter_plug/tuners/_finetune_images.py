"""The inputs of :class:`~embetter_plug.tuners.TransformerTuner`: texts for a text model, images
for a vision encoder (ViT, CLIP/SigLIP vision models, DINOv2 ...).

Images come in the forms the encoder takes (PIL images, paths as :class:`pathlib.Path`, encoded
bytes, arrays, a stack ``(n, H, W[, 3])``, ``{"image": ...}`` dicts or a DataFrame with an
``image`` column, see :mod:`embetter_plug.inputs.samples`); each is checked, and its row named, before
any weights load. The image processor turns them into ``pixel_values`` once per fit; the
patches a vision encoder adds after its class token are what ``image:*`` poolings read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arch import vision as _vision
from ..inputs.samples import check_inputs, has_images

__all__ = ["check_tuner_inputs", "check_model_inputs", "pixel_values", "patch_count"]


def check_tuner_inputs(X: Any, owner: str) -> tuple[str, list]:
    """``("texts", texts)`` or ``("images", images)``; mixed or several-image samples are an
    error naming the row."""
    inputs = check_inputs(X)
    if not has_images(inputs):
        return "texts", inputs
    texts = [i for i, s in enumerate(inputs) if s.text is not None]
    if texts:
        i = texts[0]
        what = "a text and an image" if inputs[i].image is not None else "a text"
        raise ValueError(
            f"{owner}: X[{i}] holds {what}, but {len(inputs) - len(texts)} of the {len(inputs)} "
            "samples are images alone: X must be all texts (for a text model) or all images "
            "(for a vision encoder); image+text samples are not fine-tuned. Split the rows, or "
            "drop the texts.")
    several = [i for i, s in enumerate(inputs) if len(s.images) > 1]
    if several:
        raise ValueError(f"{owner}: X[{several[0]}] holds {len(inputs[several[0]].images)} "
                         "images; give one image per row.")
    return "images", [s.image for s in inputs]


def check_model_inputs(model_or_config, kind: str, owner: str) -> None:
    """A text model for texts, a vision encoder for images, before any weights load."""
    reads = _vision.reads_images(model_or_config)
    config = getattr(model_or_config, "config", model_or_config)
    name = getattr(config, "model_type", None) or type(model_or_config).__name__
    if kind == "images" and reads != "vision":
        how = ("a vision-language or dual encoder (fine-tuning reads images through a vision "
               "encoder alone: pass its vision model, e.g. CLIPVisionModel or SiglipVisionModel)"
               if reads else "a text model")
        raise ValueError(f"{owner}: X holds images, but the model ({name}) is {how}; pass a "
                         "vision encoder (ViT, DINOv2, CLIP/SigLIP vision models) with "
                         "processor=, or give texts.")
    if kind == "texts" and reads == "vision":
        raise ValueError(f"{owner}: X holds texts, but the model ({name}) is a vision encoder, "
                         "which reads images only; give images (PIL images, paths, arrays) or "
                         "a text model.")


def pixel_values(processor, images: list, batch: int = 64) -> dict[str, np.ndarray]:
    """``{"pixel_values": float32 array}`` of ``images`` as ``processor`` prepares them (RGB),
    ``batch`` images per call."""
    from ..inputs.images import load_image

    if processor is None:
        raise ValueError("a vision encoder needs its image processor: pass processor= (an "
                         "AutoImageProcessor instance, a folder or a hub name).")
    chunks = [np.asarray(processor(images=[load_image(im) for im in images[i:i + batch]],
                                   return_tensors="np")["pixel_values"], dtype=np.float32)
              for i in range(0, len(images), batch)]
    return {"pixel_values": np.concatenate(chunks)}


def patch_count(model) -> int | None:
    """Patch tokens per image the vision encoder gives after its class token(s)."""
    return _vision.num_patches(model)
