"""The labelling map: texts as points of a 2-D map of their embedding, to select and label in bulk.

Examples
--------
>>> from embetter_plug.labelling import LabellingMap
>>> LabellingMap.__name__
'LabellingMap'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# public name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "LabellingMap": "embetter_plug.labelling.labelling_map",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for static type checkers and IDEs
    from .labelling_map import LabellingMap
