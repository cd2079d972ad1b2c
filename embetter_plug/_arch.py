"""Per-family registry: where the blocks are and which submodule writes each part.

Part names follow TransformerLens:

- ``resid_pre``  the residual stream entering block ``l`` (the block's input);
- ``resid_post`` block ``l``'s output, before any final norm;
- ``attn_out``   what the attention sublayer adds to the residual stream;
- ``mlp_out``    what the MLP sublayer adds to the residual stream.

For pre-norm families ``resid_post == resid_pre + attn_out + mlp_out``. For post-norm encoders
(BERT and friends) ``attn_out``/``mlp_out`` are the sublayer outputs before add-and-norm.

A part may also be a module path: a template with ``{layer}`` (``"model.layers.{layer}.mlp"``) is
read in every requested layer; a fixed path (``"transformer.h.5.mlp"``) is read once and its vector
repeats along the layer axis.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

PARTS = ("resid_post", "attn_out", "mlp_out", "resid_pre")
ALIASES = {"rs": "resid_post", "attn": "attn_out", "mlp": "mlp_out", "resid": "resid_post"}


@dataclass(frozen=True)
class ArchSpec:
    """Module paths, relative to the base model, of one architecture family."""

    blocks: str
    attn_out: str
    mlp_out: str
    post_norm: bool = False


_LLAMA_LIKE = ArchSpec("layers", "self_attn", "mlp")
_GEMMA2_LIKE = ArchSpec("layers", "post_attention_layernorm", "post_feedforward_layernorm")
_BERT_LIKE = ArchSpec("encoder.layer", "attention.output.dense", "output.dense", post_norm=True)

REGISTRY: dict[str, ArchSpec] = {
    "gpt2": ArchSpec("h", "attn", "mlp"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": ArchSpec("layers", "self_attn", "block_sparse_moe"),
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "phi": ArchSpec("layers", "self_attn", "mlp"),  # parallel attn + mlp, both added
    "olmo": _LLAMA_LIKE,
    "olmo2": ArchSpec("layers", "post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma2": _GEMMA2_LIKE,
    "gemma3": _GEMMA2_LIKE,
    "gemma3_text": _GEMMA2_LIKE,
    "gpt_neox": ArchSpec("layers", "post_attention_dropout", "post_mlp_dropout"),
    "opt": ArchSpec("decoder.layers", "self_attn", "fc2"),
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "mpnet": ArchSpec("encoder.layer", "attention.o", "output.dense", post_norm=True),
    "distilbert": ArchSpec("transformer.layer", "attention.out_lin", "ffn", post_norm=True),
}

# families whose embeddings derive positions from the padding in input_ids themselves (RoBERTa
# counts from padding_idx + 1); every other family gets mask-aware position_ids from us
POSITIONS_FROM_PADDING = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer",
                          "data2vec-text", "xlm-roberta-xl"}

ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "electra", "mpnet", "distilbert"}


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


def get_spec(model) -> ArchSpec | None:
    return REGISTRY.get(getattr(model.config, "model_type", None))


def unknown_arch_error(model) -> ValueError:
    mt = getattr(model.config, "model_type", type(model).__name__)
    return ValueError(
        f"architecture model_type={mt!r} is not in embetter_plug's registry "
        f"(known: {sorted(REGISTRY)}). Name its modules directly: pass parts as module-path "
        "templates, e.g. parts=['model.layers.{layer}', 'model.layers.{layer}.mlp'] "
        "(print(model) shows the paths), or add an ArchSpec to embetter_plug._arch.REGISTRY."
    )


def base_model(model):
    """The bare transformer inside a model with a head (``GPT2LMHeadModel`` -> ``GPT2Model``)."""
    return getattr(model, "base_model", model)


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


def n_blocks(model) -> int:
    spec = get_spec(model)
    if spec is not None:
        return len(find_module(base_model(model), spec.blocks))
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    if n is None:
        raise unknown_arch_error(model)
    return int(n)


def config_n_blocks(config) -> int | None:
    """Number of blocks a configuration declares (``None`` when it does not say)."""
    for cfg in (config, getattr(config, "text_config", None)):
        n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def is_decoder_only(model) -> bool:
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        return False
    return getattr(cfg, "model_type", "") not in ENCODER_TYPES and not _looks_bidirectional(cfg)


def _looks_bidirectional(cfg) -> bool:
    archs = getattr(cfg, "architectures", None) or []
    return any("MaskedLM" in a or "ForPreTraining" in a for a in archs)


def text_config(config):
    """The configuration of the language stack (a multimodal config's text sub-config)."""
    getter = getattr(config, "get_text_config", None)
    if getter is not None:
        try:
            return getter()
        except (TypeError, ValueError):
            pass
    return getattr(config, "text_config", None) or config


def hidden_size(model) -> int:
    cfg = model.config
    for c in (cfg, text_config(cfg)):
        n = getattr(c, "hidden_size", None)
        if isinstance(n, int):
            return n
    raise ValueError(f"cannot tell the hidden size of {type(model).__name__}.")


def runner(model):
    """The module the extractor calls with ``input_ids`` and ``attention_mask``."""
    return base_model(model)


def positions_from_padding(model) -> bool:
    return getattr(model.config, "model_type", None) in POSITIONS_FROM_PADDING


is_decoder = is_decoder_only


def resolve_targets(model, layers, parts):
    """List ``(module, kind, layer_pos or None, part_pos)`` for every requested activation.

    ``kind`` is ``"pre"`` (the module's input) or ``"post"`` (its output); ``layer_pos`` is
    ``None`` for a fixed module path, whose vector fills every layer row.
    """
    spec = get_spec(model)
    base = base_model(model)
    blocks = find_module(base, spec.blocks) if spec is not None else None
    targets = []
    for pi, part in enumerate(parts):
        if part in PARTS:
            if spec is None:
                raise unknown_arch_error(model)
            for li, layer in enumerate(layers):
                block = blocks[layer]
                if part == "resid_pre":
                    targets.append((block, "pre", li, pi))
                elif part == "resid_post":
                    targets.append((block, "post", li, pi))
                else:
                    targets.append((find_module(block, getattr(spec, part)), "post", li, pi))
        elif "{layer}" in part:
            for li, layer in enumerate(layers):
                targets.append((find_module(model, part.format(layer=layer)), "post", li, pi))
        else:
            targets.append((find_module(model, part), "post", None, pi))
    return targets
