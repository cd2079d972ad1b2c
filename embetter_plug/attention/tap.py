"""Read an attention module's q, k, v, mask and output through transformers' attention registry.

In transformers 5.x every attention module calls one function looked up by name in
``AttentionInterface`` (``config._attn_implementation``), with the query after rotary embeddings
``(B, heads, S, d)``, the keys and values before ``repeat_kv`` ``(B, kv_heads, S, d)`` and the
model's own mask, and gets back ``(output (B, S, heads, d), weights or None)``.

While a capture needs it, the configuration of a tapped module names a tap registered here
(``"embetter_tap:<original>"``) that calls the model's *original* implementation (SDPA stays
SDPA, eager stays the modeling file's own eager function) and hands everything to the capture of
the calling thread. The tap is registered with the original implementation's mask function in
``AttentionMaskInterface``, so the mask is exactly the one the model would build (causal,
sliding-window, bidirectional). The name is switched back when the last capture on that
configuration ends; a thread without a capture going through the tap meanwhile gets the
original implementation's result unchanged.

The post-softmax pattern is computed only when a target asks for it (:meth:`AttnCall.pattern`):
the eager implementation's weights when the model runs eager, otherwise the modeling file's own
``eager_attention_forward`` on the same q, k and mask (soft-capping and windows included).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref

__all__ = ["AttnCall", "PATTERN_IMPLEMENTATIONS", "attach", "original_implementation",
           "recording"]

PREFIX = "embetter_tap:"
# implementations whose mask we can turn into the eager one (patterns need it)
PATTERN_IMPLEMENTATIONS = ("eager", "sdpa")

_LOCK = threading.Lock()
_DELIVER: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SWITCHED: dict = {}  # id(config) -> [config, original name, users]
_RECORDING = threading.local()  # .recorder: this thread's recorder of every call


def eager_function(module):
    """The modeling file's own ``eager_attention_forward`` of ``module``."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise ValueError(f"{type(module).__name__}'s modeling file has no eager attention "
                         "function; its attention patterns cannot be computed.")
    return fn


def _functions():
    """transformers' registries of attention functions and of their mask functions (the public
    mapping objects; ``register`` is their public way in)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS, ALL_MASK_ATTENTION_FUNCTIONS


def _eager_call(module, query, key, value, attention_mask, **kwargs):
    """What the module runs when its configuration says ``"eager"``: the modeling file's eager
    function, or GPT-2's upcast-and-reordered attention where the module asks for it (its
    forward takes that branch only when the implementation is named ``"eager"``)."""
    upcast = getattr(module, "_upcast_and_reordered_attn", None)
    if getattr(module, "reorder_and_upcast_attn", False) and callable(upcast):
        return upcast(query, key, value, attention_mask)
    return eager_function(module)(module, query, key, value, attention_mask, **kwargs)


def _make_tap(orig: str):
    def tap(module, query, key, value, attention_mask, **kwargs):
        impl = _eager_call if orig == "eager" else _functions()[0][orig]
        deliver = _DELIVER.get(module)
        recorder = getattr(_RECORDING, "recorder", None)
        if deliver is None and recorder is None:
            return impl(module, query, key, value, attention_mask, **kwargs)
        call = AttnCall(module, query, key, value, attention_mask, kwargs, impl=impl,
                        returns_weights=orig == "eager")
        if deliver is not None:
            deliver(call)
        if recorder is not None:
            recorder(call)
        return call.result()

    return tap


def _tap_name(orig) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    functions, masks = _functions()
    if not isinstance(orig, str) or (orig != "eager" and orig not in functions):
        raise ValueError(f"attention implementation {orig!r} cannot be tapped; load the model "
                         "with attn_implementation='sdpa' or 'eager'.")
    if orig not in masks:
        raise ValueError(f"attention implementation {orig!r} has no mask function registered "
                         "in transformers' AttentionMaskInterface, so it cannot be tapped "
                         "with the model's own mask; load the model with "
                         "attn_implementation='sdpa' or 'eager'.")
    name = PREFIX + orig
    if name not in functions:
        AttentionInterface.register(name, _make_tap(orig))
        AttentionMaskInterface.register(name, masks[orig])
    return name


def _switch(config) -> None:
    """Name the tap in ``config`` (under ``_LOCK``); one more user of the switch."""
    entry = _SWITCHED.get(id(config))
    if entry is None:
        orig = config._attn_implementation
        config._attn_implementation = _tap_name(orig)
        entry = _SWITCHED[id(config)] = [config, orig, 0]
    entry[2] += 1


def _switch_back(config) -> None:
    """One user less (under ``_LOCK``); the last one puts the original name back."""
    entry = _SWITCHED[id(config)]
    entry[2] -= 1
    if entry[2] == 0:
        config._attn_implementation = entry[1]
        del _SWITCHED[id(config)]


class _Handle:
    def __init__(self, module, config):
        self.module, self.config = module, config

    def remove(self):
        with _LOCK:
            _DELIVER.pop(self.module, None)
            _switch_back(self.config)


def attach(module, deliver) -> _Handle:
    """Send each call of ``module``'s attention function to ``deliver(AttnCall)``."""
    config = module.config
    with _LOCK:
        _switch(config)
        _DELIVER[module] = deliver
    return _Handle(module, config)


@contextlib.contextmanager
def recording(model, recorder):
    """While the block runs, hand every attention-function call this thread makes in ``model``
    to ``recorder(AttnCall)``, whichever module makes it (the module is the call's first
    argument): which modules call the attention function is seen at run time, not read from
    source. Yields the configurations that could not be tapped (flash attention, say)."""
    configs = {id(c): c for m in model.modules()
               for c in [getattr(m, "config", None)]
               if getattr(c, "_attn_implementation", None) is not None}
    switched, refused = [], []
    with _LOCK:
        for config in configs.values():
            if str(config._attn_implementation).startswith(PREFIX):
                continue  # tapped already (a composite config sets its parts' too): once only
            try:
                _switch(config)
                switched.append(config)
            except ValueError:
                refused.append(config)
    previous = getattr(_RECORDING, "recorder", None)
    _RECORDING.recorder = recorder
    try:
        yield refused
    finally:
        _RECORDING.recorder = previous
        with _LOCK:
            for config in switched:
                _switch_back(config)


def original_implementation(config) -> str:
    """The attention implementation of ``config`` as the model has it (not the tap)."""
    with _LOCK:
        entry = _SWITCHED.get(id(config))
    return entry[1] if entry is not None else config._attn_implementation


def additive_mask(mask, module, query, key):
    """The eager (additive float) form of the mask the attention function received."""
    import torch

    dtype = query.dtype
    if mask is None:
        q, k = query.shape[-2], key.shape[-2]
        if not getattr(module, "is_causal", False) or q == 1:
            return None  # no padding, bidirectional: nothing is masked
        full = torch.full((q, k), torch.finfo(dtype).min, dtype=dtype, device=query.device)
        return full.triu(k - q + 1)[None, None]
    if mask.dtype == torch.bool:
        return torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device),
                           torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=mask.device))
    return mask


class AttnCall:
    """One call of an attention function: ``query`` ``(B, heads, S, d)``, ``key``/``value``
    ``(B, kv_heads, S, d)``, the ``output`` ``(B, S, heads, d)`` and, on demand, the pattern.
    ``memo`` holds what several targets of the same call share.

    The output is computed when first read (or when the model goes on). Where targets have
    asked for the pattern of a model that runs SDPA before the output was read, the eager
    function that gave the pattern's rows also gave the output's rows, which are then what
    the layer returns (equal to SDPA's to float rounding), so that ``QK^T`` is not paid
    twice."""

    def __init__(self, module, query, key, value, mask, kwargs, *, impl,
                 returns_weights=False):
        self.module, self.query, self.key, self.value = module, query, key, value
        self.mask, self.kwargs = mask, kwargs
        self._output = self._weights = None
        self._impl, self._returns_weights = impl, returns_weights
        self._rows: list = []  # (lo, hi, output rows) given by the eager function
        self.memo: dict = {}

    def _run(self):
        self._output, weights = self._impl(self.module, self.query, self.key, self.value,
                                           self.mask, **self.kwargs)
        if weights is not None:
            self._weights = weights

    @property
    def output(self):
        if self._output is None:
            import torch

            rows, end = sorted(self._rows, key=lambda r: r[0]), 0
            for lo, hi, _ in rows:
                end = hi if lo == end else -1
            if rows and end == self.query.shape[-2]:  # the eager rows cover every query
                self._output = (rows[0][2] if len(rows) == 1
                                else torch.cat([r[2] for r in rows], dim=1))
            else:
                self._run()
            self._rows = []
        return self._output

    def result(self):
        """``(output, weights)`` as the original implementation returns them."""
        out = self.output
        return out, self._weights if self._returns_weights else None

    def _eager(self, lo, hi, value):
        s_q = self.query.shape[-2]
        if "additive" not in self.memo:
            self.memo["additive"] = additive_mask(self.mask, self.module, self.query, self.key)
        mask = self.memo["additive"]
        if mask is not None and mask.shape[-2] > 1 and (lo, hi) != (0, s_q):
            mask = mask[..., lo:hi, :]
        kwargs = {k: v for k, v in self.kwargs.items() if k not in ("is_causal", "dropout")}
        return eager_function(self.module)(self.module, self.query[..., lo:hi, :], self.key,
                                           value, mask, dropout=0.0, **kwargs)

    def pattern(self, lo: int = 0, hi: int | None = None):
        """Post-softmax weights ``(B, heads, S_q, S_k)`` as float32, or only the query rows
        ``lo:hi`` of them (ask for each row once: see the class's note on the output)."""
        s_q = self.query.shape[-2]
        hi = s_q if hi is None else hi
        whole = (lo, hi) == (0, s_q)
        if self._weights is None and self._returns_weights and self._output is None:
            self._run()  # the model runs eager: its own weights
        if self._weights is not None:
            return (self._weights if whole else self._weights[..., lo:hi, :]).float()
        if self._output is None and self._impl is not None:  # output rows come along
            out, w = self._eager(lo, hi, self.value)
            self._rows.append((lo, hi, out))
        else:  # on an empty value: only QK^T and the softmax
            w = self._eager(lo, hi, self.value[..., :0])[1]
        if whole:
            self._weights = w
        return w.float()
