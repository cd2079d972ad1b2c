"""Inside attention: where each block's attention is, and the per-head parts it offers.

Where the attention is and its head sizes: :mod:`embetter_plug.arch.attention`.

Per-head parts (names follow TransformerLens; one entry per head on the part axis, named
``{part}.h{head}``):

- ``attn_z``       each head's output before the output projection (``d_head`` wide);
- ``attn_result``  each head's contribution through the output projection (``d_model`` wide,
  the projection's bias kept apart: the heads plus the bias sum to the projection's output);
- ``attn_q``       queries per query head, after rotary embeddings where the model has them;
- ``attn_k``/``attn_v`` keys and values per key/value head (GQA: fewer than query heads);
- ``attn_entropy``, ``attn_sink``, ... one number per query head and token: see
  :mod:`embetter_plug._attn_metrics`.
"""

from __future__ import annotations

import difflib
import re

from . import blocks as _arch
from .attention import (AttentionNotFound, AttnInfo, attention_calls, attention_layers, attn_info,
                        blocks, head_counts, head_counts_of, layer_infos)
from ..layout import PartName

HEAD_PARTS = ("attn_z", "attn_result", "attn_q", "attn_k", "attn_v")
METRICS = ("attn_entropy", "attn_sink", "attn_distance", "attn_density", "attn_value_norm",
           "attn_result_norm", "attn_weighted_value_norm")
# metrics that need to know which tokens are image tokens (image+text samples)
MODALITY_METRICS = ("attn_image",)
ATTN_PARTS = HEAD_PARTS + METRICS + MODALITY_METRICS
# TransformerLens hook names (``hook_z``, ``attn.hook_z``, ``blocks.{l}.attn.hook_z``)
TL_ALIASES = {"hook_z": "attn_z", "hook_result": "attn_result", "hook_q": "attn_q",
              "hook_k": "attn_k", "hook_v": "attn_v", "hook_rot_q": "attn_q",
              "hook_rot_k": "attn_k"}
_TL = re.compile(r"^(?:blocks\.(\{l\}|\{layer\}|\d+)\.)?(?:attn\.)?(hook_[a-z_]+)$")


def _width_group(part: str) -> str:
    if part in ("attn_z", "attn_q", "attn_k", "attn_v"):
        return "d_head"
    return "scalar" if part in METRICS + MODALITY_METRICS else "d_model"


def canonical(part: str) -> str:
    """Our name for a TransformerLens hook name; other names pass through."""
    m = _TL.match(part)
    if m is None:
        return part
    layer, hook = m.groups()
    if hook in ("hook_pattern", "hook_attn_scores"):
        raise ValueError(f"part {part!r}: attention patterns are (tokens x tokens) per text, not a "
                         "vector per text; read them with embetter_plug.attention_patterns, or "
                         "ask for pattern metrics such as 'attn_entropy'.")
    if hook not in TL_ALIASES:
        raise ValueError(f"part {part!r}: TransformerLens hook {hook!r} is not an attention part "
                         f"here; known hooks {sorted(TL_ALIASES)}.")
    if layer is not None and layer.isdigit():
        raise ValueError(f"part {part!r} names block {layer}; parts apply to every requested "
                         f"layer: pass layers=[{layer}] and parts={TL_ALIASES[hook]!r}.")
    return TL_ALIASES[hook]


def is_attn_part(part: str) -> bool:
    """An attention part, or one head's entry of it (``attn_result.h3``)."""
    return part in ATTN_PARTS or split_head(part)[0] in ATTN_PARTS


def validate_parts(parts) -> list[str]:
    """Canonical parts: attention parts (and their TransformerLens aliases) checked here, the
    rest by :func:`embetter_plug.arch.blocks.validate_parts`. Widths must agree (one encoder, one
    width)."""
    items = [parts] if isinstance(parts, str) else parts
    try:
        items = list(items)
    except TypeError:
        return _arch.validate_parts(parts)  # its error
    out, rest = [], []
    for p in items:
        if isinstance(p, str):
            p = canonical(p)
            if p.startswith("attn_") and not is_attn_part(p) and p != "attn_out":
                close = difflib.get_close_matches(p, ATTN_PARTS + ("attn_out",), n=3, cutoff=0.6)
                raise ValueError(f"unknown attention part {p!r}"
                                 + (f"; did you mean {close}?" if close else "")
                                 + f" Attention parts: {list(ATTN_PARTS)}.")
        out.append(p)
        if not (isinstance(p, str) and is_attn_part(p)):
            rest.append(p)
    if rest:
        checked = iter(_arch.validate_parts(rest))
        out = [p if isinstance(p, str) and is_attn_part(p) else next(checked) for p in out]
    if len(set(out)) != len(out):
        raise ValueError(f"parts {parts!r} name the same part twice.")
    groups = {}
    for p in out:
        groups.setdefault(_width_group(split_head(p)[0]) if is_attn_part(p) else "d_model",
                          []).append(p)
    if len(groups) > 1:
        desc = "; ".join(f"{g}: {ps}" for g, ps in groups.items())
        raise ValueError(f"parts {out} have different widths ({desc}); one encoder gives one "
                         "width per entry, so use one encoder per width (e.g. one for "
                         "attn_z/attn_q/attn_k/attn_v, one for attn_result and resid parts, one "
                         "for the attention metrics) and combine their outputs.")
    return out


def check_same_heads(model, infos, layers, parts) -> None:
    """Per-head entries of several layers share one axis: each layer's head numbers (and, for
    ``d_head``-wide parts, head sizes) must be those of the model's first attention layer."""
    counts = head_counts(model)
    for layer, info in zip(layers, infos):
        other = head_counts_of(info)
        for p in parts:
            keys = ["n_kv_heads" if p in ("attn_k", "attn_v") else "n_heads"]
            keys += ["d_head"] if _width_group(p) == "d_head" else []
            bad = [k for k in keys if other[k] != counts[k]]
            if bad:
                first = attention_layers(model, first=True)[0]
                raise ValueError(
                    f"part {p!r}: layer {layer} has {', '.join(f'{k}={other[k]}' for k in bad)} "
                    f"but layer {first} has {', '.join(f'{k}={counts[k]}' for k in bad)}; per-"
                    "head parts need the head sizes of the model's first attention layer in "
                    "every requested layer" + (" (attn_result is d_model wide in every layer)"
                                               if bad == ["d_head"] else "") + ".")


def check_single_call(infos, layers, parts) -> None:
    """q/k/v, patterns and metrics read one call of the attention function per forward."""
    for layer, info in zip(layers, infos):
        if parts and not info.interface:
            raise AttentionNotFound(
                f"{sorted(set(parts))}: the attention of layer {layer} "
                f"({type(info.core).__name__}) has its own code instead of transformers' "
                "attention function, so its queries, keys, values and pattern cannot be read; "
                "attn_z and attn_result (before and through the output projection) can.")
        n = attention_calls(info.core)
        if parts and n > 1:
            raise ValueError(
                f"{sorted(set(parts))}: the attention of layer {layer} "
                f"({type(info.core).__name__}) calls the attention function {n} times per "
                "forward (differential attention), so its q/k/v and pattern are not one "
                "softmax's; attn_z and attn_result (before and through the output projection) "
                "can be read.")


def n_heads_of(part: str, counts: dict) -> int:
    return counts["n_kv_heads"] if part in ("attn_k", "attn_v") else counts["n_heads"]


def check_heads(heads) -> list[int] | str:
    """``"all"`` or the list of ints ``heads`` names (types checked, not ranges)."""
    from numbers import Integral

    if isinstance(heads, str):
        if heads != "all":
            raise ValueError(f"heads={heads!r}: use 'all', an int or a list of ints.")
        return heads
    items = [heads] if isinstance(heads, Integral) else heads
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"heads={heads!r}: use 'all', an int or a list of ints.") from None
    if not items:
        raise ValueError("heads is empty; give at least one head index or 'all'.")
    for h in items:
        if isinstance(h, bool) or not isinstance(h, Integral):
            raise TypeError(f"heads entry {h!r} is not an int.")
    return [int(h) for h in items]


def select_heads(heads, part: str, counts: dict) -> list[int]:
    """Head indices of ``heads`` (``"all"``, int or list) for ``part``; out of range names the
    count."""
    n = n_heads_of(part, counts)
    items = check_heads(heads)
    if items == "all":
        return list(range(n))
    what = "key/value heads" if part in ("attn_k", "attn_v") else "attention heads"
    out = []
    for h in items:
        if not -n <= h < n:
            raise ValueError(f"head {h} is out of range for {part}: the model has {n} {what} "
                             f"(0..{n - 1}; negative counts from the end).")
        out.append(h % n)
    if len(set(out)) != len(out):
        raise ValueError(f"heads={heads!r} names the same head twice.")
    return out


def expand_parts(model, parts, heads) -> list[str]:
    """Replace each attention part by one ``{part}.h{head}`` entry per selected head."""
    if not any(is_attn_part(p) for p in parts):
        return list(parts)
    counts = head_counts(model)
    out = []
    for p in parts:
        base, head = split_head(p)
        if head is not None:  # one head named in the part: attn_result.h3
            out.append(f"{base}.h{select_heads(head, base, counts)[0]}")
        elif is_attn_part(p):
            out.extend(f"{p}.h{h}" for h in select_heads(heads, p, counts))
        else:
            out.append(p)
    if len(set(out)) != len(out):
        raise ValueError(f"parts {list(parts)} with heads={heads!r} name the same head twice.")
    return out


def split_head(name: str) -> tuple[str, int | None]:
    """``("attn_z", 3)`` for ``"attn_z.h3"`` (a pooling suffix ``@mean`` is dropped);
    ``(name, None)`` for any other part (see :class:`~embetter_plug.layout.PartName`)."""
    parsed = PartName.parse(name)
    return (parsed.part, parsed.head) if parsed.head is not None else (name, None)


def layout_meta(model, parts) -> dict:
    """``{"attention": {n_heads, n_kv_heads, d_head}}`` when ``parts`` holds per-head entries
    (the head of each entry is in its name: :func:`split_head`), else ``{}``."""
    if not any(split_head(p)[1] is not None for p in parts):
        return {}
    return {"attention": head_counts(model)}


def part_width(model, parts) -> int:
    """Width of every entry of ``parts`` (validated to agree)."""
    kinds = {_width_group(split_head(p)[0]) if split_head(p)[1] is not None else "d_model"
             for p in parts}
    kind = kinds.pop() if len(kinds) == 1 else "d_model"
    if kind == "d_head":
        return head_counts(model)["d_head"]
    return 1 if kind == "scalar" else _arch.hidden_size(model)


def resolve_targets(model, layers, parts):
    """Hook targets of ``parts`` in ``layers``: per-head entries here, the rest through
    :func:`embetter_plug.arch.blocks.resolve_targets` (positions kept)."""
    from ..attention import parts as _attn_parts
    from ..extraction.hooks import Target

    heads = [(pi, *split_head(p)) for pi, p in enumerate(parts)]
    plain = [(pi, p) for pi, (p, h) in enumerate(split_head(p) for p in parts) if h is None]
    targets = []
    if plain:
        for t in _arch.resolve_targets(model, layers, [p for _, p in plain]):
            t = Target(*t)
            targets.append(t._replace(part_pos=plain[t.part_pos][0]))
    asked = [(pi, part, h) for pi, part, h in heads if h is not None]
    if asked:
        infos = layer_infos(model, layers)
        check_same_heads(model, infos, layers, sorted({part for _, part, _ in asked}))
        check_single_call(infos, layers, [part for _, part, _ in asked
                                          if part not in ("attn_z", "attn_result")])
        budget = _attn_parts.PatternBudget(model, infos[0], len(layers),
                                            [part for _, part, _ in asked])
        for li, info in enumerate(infos):
            for pi, part, h in asked:
                module, kind, fn = _attn_parts.head_target(part, h, info, budget)
                targets.append(Target(module, kind, li, pi, 0, fn))
    return targets
