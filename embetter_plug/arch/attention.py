"""Where each block's attention is, and its head sizes, found from the model's own structure.

For every family whose attention calls transformers' attention function (``AttentionInterface``):

- the *core* attention module of a block is the submodule whose ``forward`` calls that function
  (``self_attn``, ``attn``, ``attention.self`` ...);
- its *output projection* is the ``Linear``/``Conv1D`` writing the hidden size that the core's
  forward calls first after its attention function (``o_proj`` also after a gate, ``c_proj``,
  ``dense``, ``out_proj``, T5's ``o``), else the first one registered after the core in the block
  (``attention.output.dense``, ``out_lin``).
- the head count is the core's own (``num_heads``...) where it keeps one, else the
  configuration's; ``d_head`` is the projection's input width over the heads.

Hybrid models have attention in some blocks only (:func:`attention_layers`).

A family whose modeling code never calls the attention function (BLOOM, Falcon, MPT, DeBERTa,
MPNet, BERT-era encoders with their own attention code) still has heads before its output
projection: there the core is the block's attention sublayer (found as for ``attn_out``), the
output projection the last ``Linear``/``Conv1D`` writing the hidden size in it (or the sublayer
itself), and only ``attn_z``/``attn_result`` can be read (``interface=False``).
"""

from __future__ import annotations

import functools
import inspect
import re
import threading
import weakref
from dataclasses import dataclass

from . import blocks as _arch

__all__ = ["AttnInfo", "attention_calls", "attention_layers", "attn_info", "blocks",
           "head_counts", "head_counts_of", "layer_infos"]


@dataclass(frozen=True)
class AttnInfo:
    """One block's attention: the core module, its output projection and the head sizes."""

    core: object
    o_proj: object
    n_heads: int
    n_kv_heads: int
    d_head: int
    hidden: int
    interface: bool = True  # the core calls transformers' attention function

    def w_o(self, device=None):
        """Output projection weight as ``(n_heads, d_head, hidden)`` (``x @ W`` form); a weight
        offloaded by accelerate (on the meta device between forwards) is read from where it is
        kept, onto ``device``."""
        w = self.o_proj.weight
        if w.device.type == "meta":
            w = offloaded_param(self.o_proj, device)
        if type(self.o_proj).__name__ != "Conv1D":  # nn.Linear stores (out, in)
            w = w.t()
        return w.reshape(self.n_heads, self.d_head, self.hidden)



class AttentionNotFound(ValueError):
    """Reading the model (its modules and modeling source) did not find an attention that can
    give per-head parts; a forward observed at run time may still find it."""

def offloaded_param(module, device, name: str = "weight"):
    """Parameter ``name`` of an accelerate-offloaded ``module``, loaded for this read only."""
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
        return getattr(module, name).detach().clone()


# attention seen at run time (:func:`observe`): runner -> True once observed; attention module ->
# (attention-function calls per run of its block, output projection or None)
_OBSERVED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CORES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_OBSERVE_LOCK = threading.Lock()


def observe(model, sequence) -> None:
    """Record which modules called the attention function in one forward of ``model``, and the
    first projection writing the hidden size that ran after each (``sequence``: ``("attn",
    calling module)`` and ``("proj", projection)`` in call order; see
    :func:`embetter_plug.attention.tap.recording`). From then on :func:`attn_info` finds the
    attention of ``model`` from this record, not from its source text."""
    cores: dict = {}
    pending: dict = {}  # core -> calls since the last projection
    for kind, module in sequence:
        if kind == "attn":
            pending[module] = pending.get(module, 0) + 1
            continue
        for core, n in pending.items():
            calls, proj = cores.get(core, (0, None))
            cores[core] = (max(calls, n), proj or module)
        pending = {}
    for core, n in pending.items():  # no projection after it
        calls, proj = cores.get(core, (0, None))
        cores[core] = (max(calls, n), proj)
    run = _arch.runner(model)
    with _OBSERVE_LOCK:  # the new record in before the stale one out: readers never see none
        _CORES.update(cores)
        for m in run.modules():
            if m not in cores:
                _CORES.pop(m, None)
        _OBSERVED[run] = True


def _observed(model) -> bool:
    return _OBSERVED.get(_arch.runner(model), False)


def writes(module, hidden: int) -> bool:
    """Whether ``module`` is a projection (``Linear``/``Conv1D``) writing ``hidden`` features."""
    return _is_projection_to(module, hidden)


def _calls_interface(cls) -> bool:
    return _source_calls_interface(getattr(cls, "forward", None))


@functools.lru_cache(maxsize=None)
def _source_calls_interface(forward) -> bool:
    """Keyed by the forward function itself: a class whose forward is replaced is read anew."""
    try:
        src = inspect.getsource(forward)
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


def _called_after_attention(cls) -> tuple[str, ...]:
    """Names of the submodules ``cls.forward`` calls after its attention function, in order."""
    return _source_called_after(getattr(cls, "forward", None))


@functools.lru_cache(maxsize=None)
def _source_called_after(forward) -> tuple[str, ...]:
    try:
        src = inspect.getsource(forward)
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
    ``attention.output.dense``), else the core's last one."""
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
    own = [m for m in core.modules() if _is_projection_to(m, hidden)]
    return own[-1] if own else None  # a forward that calls it another way: the core's last


def blocks(model, layers):
    """The block modules of ``layers`` (through the architecture registry)."""
    calls = _arch.block_calls(model)
    return [calls[layer][0] for layer in layers]


def attn_info(model, block) -> AttnInfo:
    """Discover ``block``'s attention; a clear error when it cannot be found.

    Where a forward of ``model`` was observed (:func:`observe`), the attention is the module
    that called the attention function and its output projection the first projection writing
    the hidden size that ran after it; otherwise both are read from the modeling source."""
    observed = _observed(model)
    if observed:
        core = next((m for m in block.modules() if m in _CORES), None)
    else:
        core = next((m for _, m in block.named_modules() if _calls_interface(type(m))), None)
    mt = getattr(model.config, "model_type", type(model).__name__)
    if core is None and not _uses_interface(model):
        return _own_attention_info(model, block, mt)
    if core is None:
        raise AttentionNotFound(
            f"the attention of {type(block).__name__} (model_type={mt!r}) does not call "
            "transformers' attention function (AttentionInterface), so its heads, q/k/v and "
            "patterns cannot be read; per-head parts need a model whose modeling code uses it "
            "(most families in transformers 5.x do; docs/attention.md lists those that do "
            "not).")
    hidden = _arch.hidden_size(model)
    seen = _CORES.get(core, (0, None))[1] if observed else None
    o_proj = seen if seen is not None else _output_projection(block, core, hidden)
    n_heads, n_kv = _head_numbers(model, core)
    if o_proj is None:
        top = next(c for _, c in block.named_children()
                   if c is core or any(m is core for m in c.modules()))
        raise AttentionNotFound(f"no output projection (a Linear writing {hidden} features) "
                                f"found in {type(top).__name__} of model_type={mt!r}.")
    d_in = _in_width(o_proj)
    if d_in % n_heads:
        raise ValueError(f"the output projection of model_type={mt!r} reads {d_in} features, "
                         f"not a multiple of its {n_heads} heads.")
    return AttnInfo(core, o_proj, n_heads, n_kv, d_in // n_heads, hidden)


def _uses_interface(model) -> bool:
    """Whether any module of the exposed stack calls the attention function (a hybrid model's
    other blocks then have no attention, rather than attention of their own)."""
    if _observed(model):
        return any(m in _CORES for m in _arch.runner(model).modules())
    return any(_calls_interface(type(m)) for m in _arch.runner(model).modules())


def _own_attention_info(model, block, mt: str) -> AttnInfo:
    """:class:`AttnInfo` of a family with attention code of its own: its attention sublayer
    and that sublayer's output projection; q/k/v and patterns cannot be read there."""
    hidden = _arch.hidden_size(model)
    path = _arch.sublayer_paths(block, hidden, mt).get("attn_out")
    module = block.get_submodule(path) if path else None
    o_proj = None
    if module is not None:
        own = [m for m in module.modules() if _is_projection_to(m, hidden)]
        o_proj = own[-1] if own else None
    try:
        n_heads, n_kv = _head_numbers(model, module) if o_proj is not None else (0, 0)
    except (AttributeError, TypeError):
        n_heads = n_kv = 0
    if o_proj is None or n_heads <= 0 or _in_width(o_proj) % n_heads:
        raise AttentionNotFound(
            f"the attention of {type(block).__name__} (model_type={mt!r}) neither calls "
            "transformers' attention function (AttentionInterface) nor has an attention "
            "sublayer with heads and an output projection writing the hidden size, so its "
            "heads cannot be read.")
    return AttnInfo(module, o_proj, n_heads, n_kv, _in_width(o_proj) // n_heads, hidden,
                    interface=False)


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
        n_kv = n_heads // groups if isinstance(groups, int) and groups > 0 \
            and not n_heads % groups else None
    if not isinstance(n_kv, int):
        n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    return n_heads, n_kv


def attention_calls(core) -> int:
    """How many times the forward of ``core`` calls the attention function (2 in differential
    attention, whose pattern is then a difference of two softmaxes); seen at run time where
    the model's forward was observed."""
    if core in _CORES:
        return _CORES[core][0]
    return _interface_calls(type(core))


def _interface_calls(cls) -> int:
    return _source_interface_calls(getattr(cls, "forward", None))


@functools.lru_cache(maxsize=None)
def _source_interface_calls(forward) -> int:
    try:
        return len(_INTERFACE_CALL.findall(inspect.getsource(forward))) or 1
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
            raise type(exc)(f"layer {layer}: {exc}{hint}") from None
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


def head_counts_of(info) -> dict:
    return {"n_heads": info.n_heads, "n_kv_heads": info.n_kv_heads, "d_head": info.d_head}
