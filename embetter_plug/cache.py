"""Kept so that ``embetter_plug.cache`` keeps working: see :mod:`embetter_plug.store.cache`."""

from .store.cache import (  # noqa: F401
    ActivationCache,
    default_cache_dir,
)

__all__ = ['ActivationCache', 'default_cache_dir']
