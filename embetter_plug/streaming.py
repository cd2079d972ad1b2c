"""Kept so that ``embetter_plug.streaming`` keeps working: see :mod:`embetter_plug.store.streaming`."""

from .store.streaming import (  # noqa: F401
    extract_to,
    extraction_plan,
    check_extraction_folder,
    ShardWriter,
)

__all__ = ['extract_to', 'extraction_plan', 'check_extraction_folder', 'ShardWriter']
