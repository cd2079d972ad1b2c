"""Where things are inside a model: blocks, sublayers, attention, heads, the vision tower.

Everything here is found from the model's own structure; :func:`verify_extractor` checks it
against what the model itself returns.

Examples
--------
>>> from embetter_plug.arch import find_blocks
>>> from embetter_plug.testing import make_tiny_model
>>> path, blocks = find_blocks(make_tiny_model("gpt2")[0])
>>> len(blocks)
3
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# public name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "find_blocks": "embetter_plug.arch.blocks",
    "n_blocks": "embetter_plug.arch.blocks",
    "hidden_size": "embetter_plug.arch.blocks",
    "validate_parts": "embetter_plug.arch.blocks",
    "AttnInfo": "embetter_plug.arch.attention",
    "attn_info": "embetter_plug.arch.attention",
    "attention_layers": "embetter_plug.arch.attention",
    "head_counts": "embetter_plug.arch.attention",
    "split_head": "embetter_plug.arch.heads",
    "expand_parts": "embetter_plug.arch.heads",
    "find_tower": "embetter_plug.arch.vision",
    "split_stack": "embetter_plug.arch.vision",
    "VerificationError": "embetter_plug.arch.verify",
    "verify_extractor": "embetter_plug.arch.verify",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for static type checkers and IDEs
    from .blocks import find_blocks, n_blocks, hidden_size, validate_parts
    from .attention import AttnInfo, attn_info, attention_layers, head_counts
    from .heads import split_head, expand_parts
    from .vision import find_tower, split_stack
    from .verify import VerificationError, verify_extractor
