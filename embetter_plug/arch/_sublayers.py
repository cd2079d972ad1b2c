"""Which submodule of a block writes ``attn_out`` and ``mlp_out``, found by role.

Within a block the attention and MLP sublayers are found from child names and classes, looking
through a list of sublayers (T5) and a group around one layer (ALBERT); for post-norm encoders
the part is the sublayer's output before add-and-norm; where a norm follows the sublayer before
the add (Gemma-2/3, OLMo-2 "sandwich" norms) that norm's output is the part. :data:`OVERRIDES`
lists the few families the rule reads wrong.
"""

from __future__ import annotations

import re

__all__ = ["OVERRIDES", "missing_part_error", "sublayer_paths"]

# the generic rule reads these wrong: (attention, mlp) paths relative to a block. GTE-style
# encoders name their post-norm add-and-norms ``post_attention_layernorm``/``post_mlp_layernorm``,
# which elsewhere (Gemma-2, OLMo-2) are norms applied to the sublayer before the add.
OVERRIDES: dict[str, tuple[str, str]] = {
    "gte": ("self_attn", "mlp"),
    "nomic_bert": ("self_attn", "mlp"),
    "jina_embeddings_v3": ("self_attn", "mlp"),
    # a short convolution follows each sublayer before the add
    "inkling_text": ("attn_sconv", "mlp_sconv"),
    # sandwich norms under other names
    "hyperclovax": ("post_norm1", "post_norm2"),
}

_SKIP = re.compile(r"(^|_)(norm|ln|layernorm|layer_norm|dropout|drop|act|activation|rotary)"
                   r"|norm$|dropout$|^ln\d*$|_hc$|^cross|crossattention|encoder_attn", re.I)
_ATTN = re.compile(r"att(n|ention)?($|_)|^attention|selfattention|^attn", re.I)
_EXACT = ("self_attn", "self_attention", "attention", "attn", "mlp", "ffn", "feed_forward")
_MLP = re.compile(r"mlp|ffn|feed_?forward|^ff$|moe|experts?$|denserelu|layerff", re.I)
# a norm placed on a sublayer's output before the add (Gemma-2/3, OLMo-2 "sandwich" norms)
# (``post_self_attn_layernorm`` first: GLM-4 also has a pre-MLP ``post_attention_layernorm``)
_POST_ATTN_NORM = (re.compile(r"^post_self_att(n|ention)_(layer)?norm$"),
                   re.compile(r"^post_att(n|ention)_(layer)?norm$"),
                   # LFM-3: the token mixer (attention or a short convolution) is the "operator"
                   re.compile(r"^post_operator_(layer)?norm$"))
_POST_MLP_NORM = (re.compile(r"^post_(feedforward|mlp|ffn)_(layer)?norm$"),)


def _is_norm(module) -> bool:
    import torch

    if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
        return True
    name = type(module).__name__.lower()
    return name.endswith(("norm", "norm1p")) and not any(True for _ in module.children())


def _out_features(module):
    return getattr(module, "out_features", None) or getattr(module, "nf", None)


def _children(block):
    """Named children, looking through a ``ModuleList`` of sublayers (T5's ``layer.0``)."""
    import torch

    for name, child in block.named_children():
        if isinstance(child, torch.nn.ModuleList):
            for i, sub in child.named_children():
                yield f"{name}.{i}", sub
        else:
            yield name, child


def _sublayer_output(path: str, module, width: int) -> str:
    """Path of what the sublayer at ``path`` adds to the stream (before any add-and-norm).

    BERT-style sublayers add and normalise inside (``attention.output.dense``); a sublayer
    that holds a hidden-width norm next to its projection (ALBERT, MPNet, T5) is read at the
    projection (or the inner module) that runs before that norm.
    """
    kids = dict(module.named_children())
    out = kids.get("output")
    if out is not None and hasattr(out, "dense") and _out_features(out.dense) == width:
        return f"{path}.output.dense"
    norms = [c for c in kids.values() if _is_norm(c) and _norm_width(c) == width]
    if norms or _adds_residual(module):
        rest = [(n, c) for n, c in kids.items()
                if not _is_norm(c) and not _SKIP.search(n) and not _is_plain_op(c)]
        linear = [n for n, c in rest if _out_features(c) == width]
        if linear:
            return f"{path}.{linear[-1]}"
        inner = [n for n, c in rest if _out_features(c) is None]
        if len(inner) == 1:
            return f"{path}.{inner[0]}"
    return path


def _adds_residual(module) -> bool:
    """A sublayer whose forward takes the residual and adds it itself (BLOOM)."""
    import inspect

    try:
        return "residual" in inspect.signature(type(module).forward).parameters
    except (TypeError, ValueError):
        return False


def _is_plain_op(module) -> bool:
    return len(list(module.parameters(recurse=False))) == 0 and not list(module.children())


def _norm_width(norm):
    shape = getattr(norm, "normalized_shape", None)
    if shape:
        return shape[-1]
    w = getattr(norm, "weight", None)
    return w.shape[-1] if w is not None and w.dim() == 1 else None


def sublayer_paths(block, width: int, model_type: str | None = None) -> dict[str, str | None]:
    """``{"attn_out": path, "mlp_out": path}`` relative to ``block`` (``None``: not found)."""
    if model_type in OVERRIDES:
        attn, mlp = OVERRIDES[model_type]
        return {"attn_out": attn, "mlp_out": mlp}
    kids = list(_children(block))
    names = [n for n, _ in kids]
    post_attn = next((n for pat in _POST_ATTN_NORM for n in names if pat.match(n)), None)
    post_mlp = next((n for pat in _POST_MLP_NORM for n in names if pat.match(n)), None)
    if post_attn and post_mlp:  # norms on the sublayer outputs, before the add
        return {"attn_out": post_attn, "mlp_out": post_mlp}

    def role(pattern):
        exact = [(n, c) for n, c in kids if n in _EXACT]  # "mlp" before "mlp_input"
        for n, c in exact + kids:
            last = n.rsplit(".", 1)[-1]
            label = last if not last.isdigit() else type(c).__name__
            if _SKIP.search(label) or _is_norm(c):
                continue
            if pattern.search(label) or (last.isdigit() and pattern.search(type(c).__name__)):
                w = _out_features(c)
                if w is None or w == width:
                    return n, c
        return None

    found = role(_ATTN)
    attn = _sublayer_output(*found, width) if found else None
    found = role(_MLP)
    if attn is None and found is None and len(kids) == 1:  # a group around one layer (ALBERT)
        inner = sublayer_paths(kids[0][1], width)
        return {k: v and f"{kids[0][0]}.{v}" for k, v in inner.items()}
    if found is not None:
        mlp = _sublayer_output(*found, width)
    else:
        out = dict(block.named_children()).get("output")  # BERT: intermediate + output
        if out is not None and hasattr(out, "dense"):
            mlp = "output.dense"
        else:  # fc1/fc2 directly in the block (OPT, BART): the last projection to the stream
            linear = [n for n, c in kids if _out_features(c) == width and "." not in n
                      and n != attn]
            mlp = linear[-1] if linear else None
    return {"attn_out": attn, "mlp_out": mlp}


def missing_part_error(model, part, blocks_path, block) -> ValueError:
    mt = getattr(model.config, "model_type", type(model).__name__)
    kids = [n for n, _ in _children(block)]
    return ValueError(
        f"part {part!r}: no {'attention' if part == 'attn_out' else 'MLP'} sublayer found in "
        f"{type(block).__name__} (model_type={mt!r}); its submodules are {kids}. Name the one "
        f"to read as a module path, e.g. parts=['{blocks_path}.{{layer}}.{kids[0] if kids else ''}']."
    )


