"""Look inside attention: patterns per text, attention metrics per head, layer x head heatmaps,
and where on a picture a text token looks.

Examples
--------
>>> from embetter_plug.attention import attention_patterns
>>> attention_patterns.__name__
'attention_patterns'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# public name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "AttentionPattern": "embetter_plug.attention.patterns",
    "attention_metrics": "embetter_plug.attention.patterns",
    "attention_patterns": "embetter_plug.attention.patterns",
    "head_scores": "embetter_plug.attention.patterns",
    "metrics_frame": "embetter_plug.attention.patterns",
    "plot_head_heatmap": "embetter_plug.attention.patterns",
    "summarize_metrics": "embetter_plug.attention.patterns",
    "ImageAttention": "embetter_plug.attention.image",
    "image_attention": "embetter_plug.attention.image",
    "write_pattern_html": "embetter_plug.attention.page",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for static type checkers and IDEs
    from .patterns import (
        AttentionPattern, attention_metrics, attention_patterns, head_scores, metrics_frame,
        plot_head_heatmap, summarize_metrics)
    from .image import ImageAttention, image_attention
    from .page import write_pattern_html
