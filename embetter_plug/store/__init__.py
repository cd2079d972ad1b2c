"""Activations on disk: the cache, streamed extraction to a folder, array files, a Ray cluster.

Examples
--------
>>> import embetter_plug.store
>>> "ActivationCache" in embetter_plug.store.__all__
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# public name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "ActivationCache": "embetter_plug.store.cache",
    "default_cache_dir": "embetter_plug.store.cache",
    "extract_to": "embetter_plug.store.streaming",
    "extraction_plan": "embetter_plug.store.streaming",
    "check_extraction_folder": "embetter_plug.store.streaming",
    "save_activations": "embetter_plug.store.io",
    "load_activations": "embetter_plug.store.io",
    "extract_distributed": "embetter_plug.store.distributed",
    "connect_ray": "embetter_plug.store.distributed",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for static type checkers and IDEs
    from .cache import ActivationCache, default_cache_dir
    from .streaming import extract_to, extraction_plan, check_extraction_folder
    from .io import save_activations, load_activations
    from .distributed import extract_distributed, connect_ray
