"""Where a model's blocks are and which submodule writes each part, found from the model itself.

Part names follow TransformerLens:

- ``resid_pre``  the residual stream entering block ``l`` (the block's input);
- ``resid_post`` block ``l``'s output, before any final norm;
- ``attn_out``   what the attention sublayer adds to the residual stream;
- ``mlp_out``    what the MLP sublayer adds to the residual stream.

For pre-norm families (sequential or parallel residual)
``resid_post == resid_pre + attn_out + mlp_out``; where a norm follows the sublayer before the
add (Gemma-2/3, OLMo-2) that norm's output is the part. For post-norm encoders (BERT and
friends, BART's encoder, DistilBERT) ``attn_out``/``mlp_out`` are the sublayer outputs before
add-and-norm.

Discovery is generic: the blocks are the ``nn.ModuleList`` on the forward path of
:func:`runner` whose length is the configuration's layer count; within a block the attention and
MLP sublayers are found by role (child names and classes), with a small override table where
the generic rule reads a family wrong. Encoder-decoder models expose their encoder stack;
multimodal wrappers their language stack.

A part may also be a module path: a template with ``{layer}`` (``"model.layers.{layer}.mlp"``) is
read in every requested layer; a fixed path (``"transformer.h.5.mlp"``) is read once and its vector
repeats along the layer axis.
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

from ._sublayers import OVERRIDES, missing_part_error, sublayer_paths  # noqa: F401

PARTS = ("resid_post", "attn_out", "mlp_out", "resid_pre")
ALIASES = {"rs": "resid_post", "attn": "attn_out", "mlp": "mlp_out", "resid": "resid_post"}

def canonical_part(part: str) -> str:
    """Map an alias (``rs``, ``attn``, ``mlp``) to its TransformerLens name; paths pass through."""
    return ALIASES.get(part, part)


def is_module_path(part: str) -> bool:
    return part not in PARTS and "." in part or "{layer}" in part


def validate_parts(parts) -> list[str]:
    """Canonical list of parts; unknown names raise with the valid choices."""
    if isinstance(parts, str):
        parts = [parts]
    try:
        parts = list(parts)
    except TypeError:
        raise TypeError(f"parts must be a name or a list of names, got {parts!r}.") from None
    if not parts:
        raise ValueError("parts is empty; give at least one of " f"{list(PARTS)}.")
    out = []
    for p in parts:
        if not isinstance(p, str):
            raise TypeError(f"part {p!r} is not a string; valid parts are {list(PARTS)}.")
        c = canonical_part(p)
        if c not in PARTS and not is_module_path(c):
            raise ValueError(
                f"unknown part {p!r}; valid parts are {list(PARTS)} (aliases "
                f"{sorted(ALIASES)}), or a module path such as 'model.layers.{{layer}}.mlp'."
            )
        out.append(c)
    if len(set(out)) != len(out):
        raise ValueError(f"parts {parts!r} name the same part twice.")
    return out


# ------------------------------------------------------------------------------ the model
def base_model(model):
    """The bare transformer inside a model with a head (``GPT2LMHeadModel`` -> ``GPT2Model``)."""
    return getattr(model, "base_model", model)


def text_config(config):
    """The language part of a configuration (``text_config`` of a multimodal one, else itself)."""
    get = getattr(config, "get_text_config", None)
    try:
        return get() if callable(get) else config
    except (TypeError, ValueError):  # older signatures, or several text configs
        return config


def _is_multimodal(config) -> bool:
    return text_config(config) is not config


def runner(model):
    """The module the extractor calls with ``input_ids`` and ``attention_mask``.

    The base model of a decoder-only model or encoder; the encoder of an encoder-decoder model
    (T5, BART); the language model of a multimodal wrapper (Gemma-3, LLaVA).
    """
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False) and callable(getattr(model, "get_encoder", None)):
        enc = model.get_encoder()
        if enc is not None:
            return enc
    if _is_multimodal(cfg) and callable(getattr(model, "get_decoder", None)):
        dec = model.get_decoder()
        if dec is not None and dec is not model:
            return dec
    return base_model(model)


def config_n_blocks(config) -> int | None:
    """Number of blocks of the exposed stack a configuration declares (``None``: unknown)."""
    cfg = text_config(config)
    names = ("encoder_layers", "num_layers") if getattr(cfg, "is_encoder_decoder", False) else ()
    for name in (*names, "num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        n = getattr(cfg, name, None)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def hidden_size(model) -> int:
    """Width of the residual stream (from the text sub-config where the config nests one)."""
    cfg = text_config(model.config)
    for name in ("hidden_size", "d_model", "n_embd", "dim", "embed_dim"):
        h = getattr(cfg, name, None)
        if isinstance(h, int) and h > 0:
            return h
    raise ValueError(f"{type(model).__name__} (model_type="
                     f"{getattr(model.config, 'model_type', None)!r}): its "
                     f"{type(model.config).__name__} names no hidden size (hidden_size, d_model, "
                     "n_embd, dim, embed_dim); pass parts as module paths and check their width.")


def _path_of(model, module) -> str:
    return next((n for n, m in model.named_modules() if m is module), "")


def _block_lists(model):
    import torch

    run = runner(model)
    lists = [(name, m) for name, m in run.named_modules()
             if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    # nearest the root first, lists of one block class before mixed ones
    lists.sort(key=lambda nm: (len({type(c) for c in nm[1]}) > 1, nm[0].count("."), nm[0]))
    prefix = _path_of(model, run)
    return [((f"{prefix}.{name}" if prefix else name), m) for name, m in lists], run


def find_blocks(model):
    """``(path, ModuleList)`` of the exposed stack's blocks; the path is relative to ``model``.

    The blocks are the ``nn.ModuleList`` inside :func:`runner` whose length is the layer count
    of the (text) configuration; among several, the one nearest the root, of identical classes
    first. A stack that reuses its blocks (ALBERT: ``g`` blocks, each run ``n / g`` times in a
    row) gives its ``g`` blocks; :func:`block_calls` says which call is which layer.
    """
    n = config_n_blocks(model.config)
    lists, run = _block_lists(model)
    if n is None:
        longest = max((len(m) for _, m in lists), default=0)
        exact = [(name, m) for name, m in lists if len(m) == longest]
    else:
        exact = [(name, m) for name, m in lists if len(m) == n]
        if not exact and _shares_blocks(model.config):
            exact = [(name, m) for name, m in lists if n % len(m) == 0]
    if not exact:
        mt = getattr(model.config, "model_type", type(model).__name__)
        found = {name: len(m) for name, m in lists}
        raise ValueError(
            f"no block list of {n} layers found in {type(run).__name__} (model_type={mt!r}; "
            f"module lists: {found}). Name modules directly with module-path parts, e.g. "
            "parts=['<path to blocks>.{layer}'] (print(model) shows the paths)."
        )
    unrolled = _unrolled_lists(exact, _registration_order(model))
    if unrolled is not None:  # no block modules: the attention list stands for the blocks
        return unrolled["attn_out"]
    return exact[0]


def _registration_order(model) -> list[str]:
    run = runner(model)
    prefix = _path_of(model, run)
    return [f"{prefix}.{n}" if prefix else n for n, _ in run.named_modules()]


def _unrolled_lists(exact, order):
    """``{"first", "last", "attn_out", "mlp_out": (path, ModuleList)}`` where the layers have no
    block module: sibling lists of the layer count, one of attention modules and one of MLPs
    (XLM, FlauBERT: ``attentions``, ``layer_norm1``, ``ffns``, ``layer_norm2``), in the order
    they are registered; else ``None``."""
    from ._sublayers import _ATTN, _MLP

    parent = exact[0][0].rpartition(".")[0]
    siblings = [(p, m) for p, m in exact if p.rpartition(".")[0] == parent]
    if len(siblings) < 2:
        return None
    leaf = {p: p.rpartition(".")[2] for p, _ in siblings}
    attn = next((pm for pm in siblings if _ATTN.search(leaf[pm[0]])), None)
    mlp = next((pm for pm in siblings if _MLP.search(leaf[pm[0]])), None)
    if attn is None or mlp is None:
        return None
    registered = sorted(siblings, key=lambda pm: order.index(pm[0]))
    return {"first": registered[0], "last": registered[-1], "attn_out": attn, "mlp_out": mlp}


def unrolled_layers(model):
    """The lists a stack without block modules runs per layer (see :func:`find_blocks`), or
    ``None`` for a stack of blocks."""
    n = config_n_blocks(model.config)
    lists, _ = _block_lists(model)
    exact = [(name, m) for name, m in lists if len(m) == n] if n is not None else []
    return _unrolled_lists(exact, _registration_order(model)) if exact else None


def _shares_blocks(config) -> bool:
    """Whether the configuration declares fewer distinct blocks than layers (ALBERT's
    ``num_hidden_groups``)."""
    cfg = text_config(config)
    groups = getattr(cfg, "num_hidden_groups", None)
    return isinstance(groups, int) and 0 < groups < (config_n_blocks(config) or 0)


def block_calls(model) -> list[tuple[Any, int, int]]:
    """``(block, occurrence, calls per forward)`` of each layer: ``(blocks[l], 0, 1)`` for a
    plain stack; for one that reuses each of its ``g`` blocks ``r = n / g`` times in a row,
    layer ``l`` is call ``l % r`` of block ``l // r``."""
    _, blocks = find_blocks(model)
    n = config_n_blocks(model.config) or len(blocks)
    r = max(1, n // len(blocks))
    return [(blocks[layer // r], layer % r, r) for layer in range(n)]


def n_blocks(model) -> int:
    return len(block_calls(model))


def is_decoder(model) -> bool:
    """Whether the exposed stack attends causally (decoder-only), decided from the model.

    Encoder-decoder models expose their (bidirectional) encoder. Otherwise the ``is_causal``
    flags of the attention modules decide; where none says, the model type's task mappings
    (causal-LM without masked-LM) and ``config.is_decoder``.
    """
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        return False
    try:
        _, blocks = find_blocks(model)
        flags = {m.is_causal for m in blocks.modules()
                 if isinstance(getattr(m, "is_causal", None), bool)}
    except ValueError:
        flags = set()
    if len(flags) == 1:
        return flags.pop()
    if getattr(text_config(cfg), "is_decoder", False):
        return True
    try:
        from transformers.models.auto import modeling_auto as auto
    except ImportError:  # pragma: no cover
        return False
    mt = getattr(text_config(cfg), "model_type", None)
    return (mt in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and mt not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)


is_decoder_only = is_decoder


def positions_from_padding(model) -> bool:
    """Whether the embeddings derive positions from the padding in ``input_ids`` themselves.

    RoBERTa-style embeddings count positions from ``padding_idx + 1`` past the padding
    (``create_position_ids_from_input_ids``); such models must not get ``position_ids``.
    """
    return any(callable(getattr(type(m), "create_position_ids_from_input_ids", None))
               for m in runner(model).modules())


def token_limit(model, tokenizer) -> int:
    """The most tokens one text may have: the tokenizer's limit, the configured positions and,
    for RoBERTa-style embeddings that count positions from ``padding_idx + 1``, the position
    table less those offsets (``max_position_embeddings - padding_idx - 1``); 512 when none is
    known. The encoder and :func:`embetter_plug.attention.patterns.attention_patterns` both use it."""
    config = text_config(model.config)
    cands = [getattr(tokenizer, "model_max_length", None),
             getattr(config, "max_position_embeddings", None),
             getattr(config, "n_positions", None)]
    if positions_from_padding(model):
        for m in runner(model).modules():
            if callable(getattr(type(m), "create_position_ids_from_input_ids", None)):
                table = getattr(m, "position_embeddings", None)
                pad = getattr(m, "padding_idx", getattr(table, "padding_idx", None))
                if table is not None and pad is not None:
                    cands.append(int(table.num_embeddings) - int(pad) - 1)
    cands = [int(c) for c in cands if c and 0 < c < 1_000_000]
    return min(cands) if cands else 512


def takes_position_ids(model) -> bool:
    """Whether the extractor passes mask-aware ``position_ids``: to decoders that accept them.

    Encoders get none (their position schemes vary: offsets, padding-derived, relative) and
    are padded on the right instead, where their own positions are right (see
    :func:`padding_side`).
    """
    import inspect

    run = runner(model)
    try:
        accepts = "position_ids" in inspect.signature(run.forward).parameters
    except (TypeError, ValueError):
        accepts = False
    return accepts and is_decoder(model) and not positions_from_padding(model)


def padding_side(model, requested: str) -> str:
    """``requested`` where positions follow the mask, else ``"right"`` (the real tokens then
    sit at positions ``0..n-1``, as in an unpadded forward)."""
    if requested == "left" and (takes_position_ids(model) or positions_from_padding(model)):
        return "left"
    return "right"


def resolve_targets(model, layers: Sequence[int], parts: Sequence[str]):
    """List ``(module, kind, layer_pos or None, part_pos[, occurrence, None, calls per
    forward])`` for every requested activation (see :class:`embetter_plug.extraction.hooks.Target`).

    ``kind`` is ``"pre"`` (the module's input: ``args[0]`` or ``kwargs["hidden_states"]`` of a
    forward pre-hook) or ``"post"`` (its output, the first tensor of a tuple); ``layer_pos`` is
    ``None`` for a fixed module path, whose vector fills every layer row.
    """
    named = [p for p in parts if p in PARTS]
    unrolled = None
    if named:
        blocks_path, _ = find_blocks(model)
        calls = block_calls(model)
        width = hidden_size(model)
        mt = getattr(text_config(model.config), "model_type", None)
        unrolled = unrolled_layers(model)
    targets = []
    for pi, part in enumerate(parts):
        if part in PARTS and unrolled is not None:  # per-layer lists, no block modules
            key, kind = {"resid_pre": ("first", "pre"), "resid_post": ("last", "post")}.get(
                part, (part, "post"))
            for li, layer in enumerate(layers):
                targets.append((unrolled[key][1][layer], kind, li, pi))
        elif part in PARTS:
            for li, layer in enumerate(layers):
                block, occurrence, repeats = calls[layer]
                if part in ("resid_pre", "resid_post"):
                    module, kind = block, "pre" if part == "resid_pre" else "post"
                else:
                    path = sublayer_paths(block, width, mt)[part]
                    if path is None:
                        raise missing_part_error(model, part, blocks_path, block)
                    module, kind = block.get_submodule(path), "post"
                targets.append((module, kind, li, pi, occurrence, None, repeats))
        elif "{layer}" in part:
            for li, layer in enumerate(layers):
                targets.append((find_module(model, part.format(layer=layer)), "post", li, pi))
        else:
            targets.append((find_module(model, part), "post", None, pi))
    return targets


def find_module(model, path: str):
    """Resolve ``path`` on ``model``, or on its base model (so both ``transformer.h.0`` and
    ``h.0`` work for GPT-2). Raises a ``ValueError`` that lists close matches."""
    names = dict(model.named_modules())
    base = base_model(model)
    prefix = next((n for n, m in names.items() if m is base and n), "")
    candidates = [path, f"{prefix}.{path}" if prefix else path]
    # a head model's path ("transformer.h.0") on a bare model ("h.0")
    bare_prefix = getattr(model, "base_model_prefix", "") or prefix
    if bare_prefix and path.startswith(bare_prefix + "."):
        candidates.append(path[len(bare_prefix) + 1:])
    for c in candidates:
        if c in names:
            return names[c]
    # compare like with like: each form of the path with the model's names, with and without
    # the base model's prefix
    pool = [n for n in names if n] + [n[len(prefix) + 1:] for n in names if prefix
                                      and n.startswith(prefix + ".")]
    close = list(dict.fromkeys(m for c in candidates
                               for m in difflib.get_close_matches(c, pool, n=5, cutoff=0.6)))[:5]
    raise ValueError(
        f"module path {path!r} does not exist in {type(model).__name__}"
        + (f"; close matches: {close}" if close else "")
        + ". print(model) lists the module paths."
    )
