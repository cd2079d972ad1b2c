"""Kept so that ``embetter_plug.io`` keeps working: see :mod:`embetter_plug.store.io`."""

from .store.io import (  # noqa: F401
    save_activations,
    load_activations,
)

__all__ = ['save_activations', 'load_activations']
