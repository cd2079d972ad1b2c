"""What the encoder accepts: texts, image+text samples, images, labelled image folders.

Examples
--------
>>> from embetter_plug.inputs import has_images
>>> has_images(["a text"])
False
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# public name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "Sample": "embetter_plug.inputs.samples",
    "check_inputs": "embetter_plug.inputs.samples",
    "has_images": "embetter_plug.inputs.samples",
    "check_image": "embetter_plug.inputs.images",
    "load_image": "embetter_plug.inputs.images",
    "image_digest": "embetter_plug.inputs.images",
    "plan_batches": "embetter_plug.inputs.multimodal",
    "read_image_folder": "embetter_plug.inputs.image_folder",
    "read_hierarchy": "embetter_plug.inputs.image_folder",
    "IMAGE_EXTENSIONS": "embetter_plug.inputs.image_folder",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for static type checkers and IDEs
    from .samples import Sample, check_inputs, has_images
    from .images import check_image, load_image, image_digest
    from .multimodal import plan_batches
    from .image_folder import read_image_folder, read_hierarchy, IMAGE_EXTENSIONS
