"""Kept so that ``embetter_plug.image_folder`` keeps working: see :mod:`embetter_plug.inputs.image_folder`."""

from .inputs.image_folder import (  # noqa: F401
    read_image_folder,
    read_hierarchy,
    IMAGE_EXTENSIONS,
)

__all__ = ['read_image_folder', 'read_hierarchy', 'IMAGE_EXTENSIONS']
