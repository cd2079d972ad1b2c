"""Kept so that ``embetter_plug.samples`` keeps working: see :mod:`embetter_plug.inputs.samples`."""

from .inputs.samples import (  # noqa: F401
    Sample,
    check_inputs,
    has_images,
    input_key,
)

__all__ = ['Sample', 'check_inputs', 'has_images', 'input_key']
