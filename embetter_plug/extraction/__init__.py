"""Texts or image+text samples -> pooled activation arrays, batch by batch (no scikit-learn here).

The one extraction path (:class:`ActivationExtractor`) and what it uses: tokenizing and batching,
the forward hooks, token pooling, loading models, and the identity of an extraction.

Examples
--------
>>> from embetter_plug.extraction import ActivationExtractor
>>> ActivationExtractor.__name__
'ActivationExtractor'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# public name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "ActivationExtractor": "embetter_plug.extraction.extractor",
    "input_device": "embetter_plug.extraction.extractor",
    "extraction_identity": "embetter_plug.extraction.identity",
    "identity_digest": "embetter_plug.extraction.identity",
    "model_fingerprint": "embetter_plug.extraction.identity",
    "HookManager": "embetter_plug.extraction.hooks",
    "hook_manager": "embetter_plug.extraction.hooks",
    "make_pooler": "embetter_plug.extraction.token_pooling",
    "validate_pooling": "embetter_plug.extraction.token_pooling",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for static type checkers and IDEs
    from .extractor import ActivationExtractor, input_device
    from .identity import extraction_identity, identity_digest, model_fingerprint
    from .hooks import HookManager, hook_manager
    from .token_pooling import make_pooler, validate_pooling
