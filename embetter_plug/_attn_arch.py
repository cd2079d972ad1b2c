"""Inside attention: where each block's attention is, and the per-head parts it offers.

Found from the model's own structure, for every family whose attention calls transformers'
attention function (``AttentionInterface``):

- the *core* attention module of a block is the submodule whose ``forward`` calls that function
  (``self_attn``, ``attn``, ``attention.self`` ...);
- its *output projection* is the ``Linear``/``Conv1D`` writing the hidden size that the core's
  forward calls first after its attention function (``o_proj`` also after a gate, ``c_proj``,
  ``dense``, ``out_proj``, T5's ``o``), else the first one registered after the core in the block
  (``attention.output.dense``, ``out_lin``).

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
import functools
import inspect
import re
from dataclasses import dataclass

from . import _arch

HEAD_PARTS = ("attn_z", "attn_result", "attn_q", "attn_k", "attn_v")
METRICS = ("attn_entropy", "attn_sink", "attn_distance", "attn_density", "attn_value_norm",
           "attn_result_norm", "attn_weighted_value_norm")
ATTN_PARTS = HEAD_PARTS + METRICS
# TransformerLens hook names (``hook_z``, ``attn.hook_z``, ``blocks.{l}.attn.hook_z``)
TL_ALIASES = {"hook_z": "attn_z", "hook_result": "attn_result", "hook_q": "attn_q",
              "hook_k": "attn_k", "hook_v": "attn_v", "hook_rot_q": "attn_q",
              "hook_rot_k": "attn_k"}
_TL = re.compile(r"^(?:blocks\.(\{l\}|\{layer\}|\d+)\.)?(?:attn\.)?(hook_[a-z_]+)$")
_HEAD_NAME = re.compile(r"^(attn_[a-z_]+)\.h(\d+)$")


def _width_group(part: str) -> str:
    if part in ("attn_z", "attn_q", "attn_k", "attn_v"):
        return "d_head"
    return "scalar" if part in METRICS else "d_model"


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
    rest by :func:`embetter_plug._arch.validate_parts`. Widths must agree (one encoder, one
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


@dataclass(frozen=True)
class AttnInfo:
    """One block's attention: the core module, its output projection and the head sizes."""

    core: object
    o_proj: object
    n_heads: int
    n_kv_heads: int
    d_head: int
    hidden: int

    def w_o(self, device=None):
        """Output projection weight as ``(n_heads, d_head, hidden)`` (``x @ W`` form); a weight
        offloaded by accelerate (on the meta device between forwards) is read from where it is
        kept, onto ``device``."""
        w = self.o_proj.weight
        if w.device.type == "meta":
            w = _offloaded_weight(self.o_proj, device)
        if type(self.o_proj).__name__ != "Conv1D":  # nn.Linear stores (out, in)
            w = w.t()
        return w.reshape(self.n_heads, self.d_head, self.hidden)


def _offloaded_weight(module, device):
    """The weight of an accelerate-offloaded ``module``, loaded for this read only."""
    try:
        from accelerate.utils import align_module_device, has_offloaded_params
    except ImportError:  # accelerate before 1.1
        raise RuntimeError("the output projection's weight is offloaded (on the meta device "
                           "between forwards); reading attn_result needs accelerate>=1.1 "
                           "(pip install -U accelerate).") from None
    if not has_offloaded_params(module):
        raise ValueError("the output projection's weight is on the meta device and not "
                         "offloaded by accelerate: the model's weights were never loaded.")
    with align_module_device(module, device):
        return module.weight.detach().clone()


@functools.lru_cache(maxsize=None)
def _calls_interface(cls) -> bool:
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in src


def _out_width(module) -> int | None:
    name = type(module).__name__
    if name == "Conv1D":
        return int(module.weight.shape[1])
    if name == "Linear" or hasattr(module, "out_features"):
        return getattr(module, "out_features", None)
    return None


def _in_width(module) -> int:
    return int(module.weight.shape[0] if type(module).__name__ == "Conv1D"
               else module.weight.shape[1])


_INTERFACE_CALL = re.compile(r"(?<![\w.])attention_interface\s*\(")
_SELF_CALL = re.compile(r"self\.([A-Za-z_]\w*)\s*\(")


@functools.lru_cache(maxsize=None)
def _called_after_attention(cls) -> tuple[str, ...]:
    """Names of the submodules ``cls.forward`` calls after its attention function, in order."""
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ()
    calls = list(_INTERFACE_CALL.finditer(src))
    return tuple(_SELF_CALL.findall(src[calls[-1].end():])) if calls else ()


def _is_projection_to(module, hidden: int) -> bool:
    return hasattr(module, "weight") and _out_width(module) == hidden


def _output_projection(block, core, hidden: int):
    """The projection writing ``hidden`` features that the attention's output goes through:
    the first such submodule the core's forward calls after its attention function (``o_proj``
    after a gate, T5's ``o``; the last one inside a wrapper module), else the first one
    registered after the core in the block's child that holds it (BERT's
    ``attention.output.dense``)."""
    from torch import nn

    for name in _called_after_attention(type(core)):
        module = getattr(core, name, None)
        found = [m for m in module.modules() if _is_projection_to(m, hidden)] \
            if isinstance(module, nn.Module) else []
        if found:  # the projection, or the last one inside a wrapper around it
            return found[-1]
    top = next(c for _, c in block.named_children()
               if c is core or any(m is core for m in c.modules()))
    inside = {id(m) for m in core.modules()}
    seen_core = False
    for m in top.modules():
        if m is core:
            seen_core = True
        elif seen_core and id(m) not in inside and _is_projection_to(m, hidden):
            return m
    return None


def blocks(model, layers):
    """The block modules of ``layers`` (through the architecture registry)."""
    return [t[0] for t in _arch.resolve_targets(model, list(layers), ["resid_post"])]


def attn_info(model, block) -> AttnInfo:
    """Discover ``block``'s attention; a clear error when it cannot be found."""
    core = next((m for _, m in block.named_modules() if _calls_interface(type(m))), None)
    mt = getattr(model.config, "model_type", type(model).__name__)
    if core is None:
        raise ValueError(
            f"the attention of {type(block).__name__} (model_type={mt!r}) does not call "
            "transformers' attention function (AttentionInterface), so its heads, q/k/v and "
            "patterns cannot be read; per-head parts need a model whose modeling code uses it "
            "(most families in transformers 5.x do; docs/attention.md lists those that do "
            "not).")
    hidden = _arch.hidden_size(model)
    o_proj = _output_projection(block, core, hidden)
    n_heads, n_kv = _head_numbers(model, core)
    if o_proj is None:
        top = next(c for _, c in block.named_children()
                   if c is core or any(m is core for m in c.modules()))
        raise ValueError(f"no output projection (a Linear writing {hidden} features) found in "
                         f"{type(top).__name__} of model_type={mt!r}.")
    d_in = _in_width(o_proj)
    if d_in % n_heads:
        raise ValueError(f"the output projection of model_type={mt!r} reads {d_in} features, "
                         f"not a multiple of its {n_heads} heads.")
    return AttnInfo(core, o_proj, n_heads, n_kv, d_in // n_heads, hidden)


def _head_numbers(model, core) -> tuple[int, int]:
    """Query and key/value heads: the attention module's own counts where it keeps them (they
    may differ from the configuration's, or between layers), else the configuration's."""
    cfg = _arch.text_config(model.config)
    own = next((getattr(core, a) for a in ("num_heads", "num_attention_heads", "n_heads")
                if isinstance(getattr(core, a, None), int)), None)
    n_heads = int(own or getattr(cfg, "num_attention_heads"))
    n_kv = getattr(core, "num_key_value_heads", None)
    groups = getattr(core, "num_key_value_groups", None)
    if not isinstance(n_kv, int):
        n_kv = n_heads // groups if isinstance(groups, int) and groups > 0 and own is None \
            and not n_heads % groups else None
    if not isinstance(n_kv, int):
        n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    return n_heads, n_kv


def attention_calls(core) -> int:
    """How many times the forward of ``core`` calls the attention function (2 in differential
    attention, whose pattern is then a difference of two softmaxes)."""
    return _interface_calls(type(core))


@functools.lru_cache(maxsize=None)
def _interface_calls(cls) -> int:
    try:
        return len(_INTERFACE_CALL.findall(inspect.getsource(cls.forward))) or 1
    except (OSError, TypeError):
        return 1


def layer_infos(model, layers) -> list[AttnInfo]:
    """:func:`attn_info` of each of ``layers``; an error names the block and the layers whose
    attention can be read (hybrid models mix attention with other mixers)."""
    found = blocks(model, layers)
    out = []
    for layer, block in zip(layers, found):
        try:
            out.append(attn_info(model, block))
        except ValueError as exc:
            readable = attention_layers(model)
            hint = (f"; the layers with readable attention are {readable}: pass layers= "
                    "among them" if readable else "")
            raise ValueError(f"layer {layer}: {exc}{hint}") from None
    return out


def attention_layers(model, first: bool = False) -> list[int]:
    """Block indices whose attention can be read per head (only the first with ``first``)."""
    out = []
    for i, block in enumerate(blocks(model, range(_arch.n_blocks(model)))):
        try:
            attn_info(model, block)
        except ValueError:
            continue
        out.append(i)
        if first:
            break
    return out


def head_counts(model) -> dict:
    """``{"n_heads", "n_kv_heads", "d_head"}`` of the model's first block with attention."""
    readable = attention_layers(model, first=True) or [0]  # none: block 0 gives the error
    return head_counts_of(attn_info(model, blocks(model, readable)[0]))


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
        n = attention_calls(info.core)
        if parts and n > 1:
            raise ValueError(
                f"{sorted(set(parts))}: the attention of layer {layer} "
                f"({type(info.core).__name__}) calls the attention function {n} times per "
                "forward (differential attention), so its q/k/v and pattern are not one "
                "softmax's; attn_z and attn_result (before and through the output projection) "
                "can be read.")


def head_counts_of(info) -> dict:
    return {"n_heads": info.n_heads, "n_kv_heads": info.n_kv_heads, "d_head": info.d_head}


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
    ``(name, None)`` for any other part."""
    m = _HEAD_NAME.match(name.split("@")[0])
    return (m.group(1), int(m.group(2))) if m else (name, None)


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
    :func:`embetter_plug._arch.resolve_targets` (positions kept)."""
    from . import _attn_parts
    from ._hooks import Target

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
        budget = _attn_parts.PatternBudget(model, infos[0], len(layers))
        for li, info in enumerate(infos):
            for pi, part, h in asked:
                module, kind, fn = _attn_parts.head_target(part, h, info, budget)
                targets.append(Target(module, kind, li, pi, 0, fn))
    return targets
