"""Kept so that ``embetter_plug.distributed`` keeps working: see :mod:`embetter_plug.store.distributed`."""

from .store.distributed import (  # noqa: F401
    extract_distributed,
    connect_ray,
)

__all__ = ['extract_distributed', 'connect_ray']
