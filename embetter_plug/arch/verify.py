"""Check what discovery reads against what the model itself returns, on the user's own model.

Discovery (:mod:`._arch`, :mod:`._attn_find`) is tested on tiny builds of every architecture
transformers ships, but a user's model may be remote code, a patched kernel or a newer release.
So at ``fit`` the encoder runs a short text (a handful of tokens) through the model and compares:

- ``resid_pre``/``resid_post`` of every block (what the hooks read) with the model's own
  ``output_hidden_states`` of the same forward (``hidden_states[l]`` and ``hidden_states[l + 1]``;
  the last block's output is left out, where a final norm may apply). A model that returns no
  hidden states is checked as far as it can be: each block's input must be the previous block's
  output, and that it could not be checked further is logged once;
- for per-head parts, the attention calls seen at run time (through transformers'
  ``AttentionInterface``, :func:`._attn_tap.recording`): the module that calls the attention
  function is the attention, the first projection writing the hidden size after the call its
  output projection (:func:`._attn_find.observe`); the head numbers must be the call's, and the
  heads of ``attn_result`` plus the projection's bias must sum to the projection's output; for the
  pattern metrics, the pattern times the values must give the attention function's own output;
- with ``batch_size > 1``, the extractor's vectors of the short text in a padded batch (beside a
  longer one) against the same text alone: a model whose forward depends on the padding (Fourier
  mixing, landmark or hashed attention) cannot be read in batches.

A disagreement is a :class:`VerificationError` naming the model class, the part, the layer and
the error size, and saying how to pass module paths instead. A forward that fails inside the model
is reported the same way, at ``fit`` rather than in the middle of ``transform``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading


from . import blocks as _arch, heads as _attn_arch, attention as _attn_find
from ..attention import tap as _attn_tap
from ..attention.parts import PATTERN_METRICS, check_implementation
from ..extraction.loading import input_device
from ._verify_common import VerificationError, describe, relative_error, tolerance, way_out

__all__ = ["Observation", "VerificationError", "check", "observe", "verify_extractor"]

logger = logging.getLogger("embetter_plug")

TEXTS = ("The cat sat on the mat.", "Models read text one token at a time, left to right.")
N_TOKENS = 7  # the short text's tokens (a handful; odd, so a model that pads to a multiple of a chunk shows)
# largest relative error (max |read - truth| / max |truth|) taken as agreement: the same forward
# gives the same tensors; a padded batch differs by rounding of the model's dtype
SAME_FORWARD = 1e-5
_SAID: set = set()
_SAID_LOCK = threading.Lock()


@dataclasses.dataclass
class Observation:
    """One forward of the short text: the reads of every block, the hidden states, and (when
    recorded) the attention calls and the projections writing the hidden size, in call order."""

    model: object
    targets: list = dataclasses.field(default_factory=list)  # resolved resid targets, all layers
    reads: dict = dataclasses.field(default_factory=dict)  # (id(module), kind) -> [tensor, ...]
    hidden_states: tuple | None = None
    events: list = dataclasses.field(default_factory=list)  # ("attn", call) / ("proj", m, x, y)
    untapped: bool = False  # some attention could not be tapped (flash attention)
    padded: dict | None = None  # the reads of the short text padded beside a longer one
    n_tokens: int = 0  # of the short text
    sublayers: list = dataclasses.field(default_factory=list)  # (part, target): attn/mlp_out
    padded_rows: tuple = ()  # (side, tokens of the short text, tokens of the batch)


def _say_once(model, what: str) -> None:
    key = (type(model).__name__, what)
    with _SAID_LOCK:
        if key in _SAID:
            return
        _SAID.add(key)
    logger.warning("verification of %s: %s", type(model).__name__, what)


def _short_ids(tokenizer, max_length: int) -> tuple[list[int], list[int]]:
    """The short text's ids (a handful) and a longer text's, both within ``max_length``."""
    ids = list(tokenizer(TEXTS[0])["input_ids"])
    longer = list(tokenizer(TEXTS[1])["input_ids"])[:max_length]
    return ids[:max(2, min(N_TOKENS, max_length - 2))], longer


def _forward_failed(model, what: str, exc: Exception) -> VerificationError:
    return VerificationError(
        f"{describe(model)}: the model's own forward fails on {what} during the check at "
        f"fit ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}), so its activations "
        "cannot be read this way. " + way_out(model))


def _keep(store, key):
    """A hook keeping a copy of what ``key`` reads in ``store[0]`` (this thread's calls only)."""
    def hook(module, args, kwargs_or_output, *rest):
        if threading.get_ident() != owner:
            return
        x = args[0] if key[1] == "pre" and args else (
            kwargs_or_output.get("hidden_states") if key[1] == "pre" else kwargs_or_output)
        x = x[0] if isinstance(x, (tuple, list)) else getattr(x, "last_hidden_state", x)
        if hasattr(x, "detach"):
            store[0].setdefault(key, []).append(x.detach().clone())

    owner = threading.get_ident()
    return hook


def _needs_tap(parts) -> bool:
    """Parts read through the attention function (q/k/v, metrics), not the projection."""
    return any(_attn_arch.split_head(p)[0] not in ("attn_z", "attn_result")
               for p in parts if _attn_arch.is_attn_part(p))


def _attention_parts(parts) -> bool:
    return any(_attn_arch.split_head(p)[1] is not None or _attn_arch.is_attn_part(p)
               for p in parts)


def observe(model, tokenizer, parts, *, max_length: int = 512, autocast_dtype=None,
            padding_side: str | None = None):
    """Run the short text once through ``model``'s stack with the reads of every block hooked
    and ``output_hidden_states``; with per-head ``parts``, record the attention calls and hand
    them to :func:`embetter_plug.arch.attention.observe` (attention found at run time). With
    ``padding_side`` (batches will be padded), run it again padded beside a longer text.

    Returns an :class:`Observation`; a forward that fails inside the model raises
    :class:`VerificationError`."""
    import torch

    from ..extraction.hooks import hook_manager

    obs = Observation(model)
    named = [p for p in parts if p in _arch.PARTS]
    attention = _attention_parts(parts)
    if named or attention:  # both rest on the blocks discovery found
        n = _arch.n_blocks(model)
        obs.targets = _arch.resolve_targets(model, list(range(n)), ["resid_pre", "resid_post"])
        sub = [p for p in named if p in ("attn_out", "mlp_out")]
        obs.sublayers = [(sub[t[3]], t) for t in _arch.resolve_targets(model, list(range(n)),
                                                                        sub)] if sub else []
    if not obs.targets and not attention:
        return obs  # parts named by module path: nothing the model's outputs could confirm
    if any(_attn_arch.split_head(p)[0] in PATTERN_METRICS for p in parts):
        check_implementation(_arch.text_config(model.config))  # its message, before a forward
    store = [obs.reads]
    handles = []
    for t in list(obs.targets) + [t for _, t in obs.sublayers]:
        module, kind = t[0], t[1]
        key = (id(module), kind)
        if any(h[0] == key for h in handles):
            continue
        hook = _keep(store, key)
        handle = (module.register_forward_pre_hook(hook, with_kwargs=True) if kind == "pre"
                  else module.register_forward_hook(hook))
        handles.append((key, handle))
    run = _arch.runner(model)
    if attention:
        hidden = _arch.hidden_size(model)
        owner = threading.get_ident()

        def keep_proj(module, args, output):
            if threading.get_ident() == owner and args and store[0] is obs.reads:
                obs.events.append(("proj", module, args[0].detach().clone(),
                                   _first(output).detach().clone()))

        for m in run.modules():
            if hasattr(m, "weight") and _attn_find.writes(m, hidden):
                handles.append((None, m.register_forward_hook(keep_proj)))
    ids, longer = _short_ids(tokenizer, max_length)
    obs.n_tokens = len(ids)
    device = input_device(model)
    kwargs = {"input_ids": torch.tensor([ids], device=device),
              "attention_mask": torch.ones((1, len(ids)), dtype=torch.long, device=device),
              "output_hidden_states": True}
    if _accepts(run, "use_cache"):
        kwargs["use_cache"] = False
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    def keep_call(call):
        if store[0] is obs.reads:  # the short text alone
            obs.events.append(("attn", call))

    record = (_attn_tap.recording(model, keep_call) if attention
              else contextlib.nullcontext([]))
    try:
        with hook_manager(model).attached({}), torch.inference_mode(), autocast, \
                record as refused:
            obs.untapped = bool(refused)
            if refused and _needs_tap(parts):  # the encoder's own message, before any forward
                _attn_tap._tap_name(refused[0]._attn_implementation)
            try:
                with _no_lasting_capture_hooks(model):
                    out = run(**kwargs)
            except Exception as exc:  # noqa: BLE001 - any failure inside the model's forward
                raise _forward_failed(model, f"a short text of {len(ids)} tokens", exc) from exc
            if padding_side and obs.targets and len(longer) > len(ids):
                store[0] = obs.padded = {}
                obs.padded_rows = _run_padded(model, run, tokenizer, [ids, longer],
                                              padding_side, device)
    finally:
        for _, h in handles:
            h.remove()
    hs = getattr(out, "hidden_states", None)
    obs.hidden_states = tuple(hs) if hs else None
    if attention and not obs.untapped:
        _attn_find.observe(model, [("attn", e[1].module) if e[0] == "attn" else ("proj", e[1])
                                   for e in obs.events])
    return obs


@contextlib.contextmanager
def _no_lasting_capture_hooks(model):
    """transformers installs forward hooks that collect ``hidden_states`` on the first forward
    that asks for them, for good (and they cannot be pickled): the model is left as it was."""
    flag = "_output_capturing_hooks_installed"
    before = {id(m): (set(m._forward_hooks), flag in vars(m)) for m in model.modules()}
    try:
        yield
    finally:
        for m in model.modules():
            keys, had_flag = before.get(id(m), (set(), False))
            for key in [k for k, fn in m._forward_hooks.items() if k not in keys
                        and "output_capturing_hook" in getattr(fn, "__qualname__", "")]:
                del m._forward_hooks[key]
            if flag in vars(m) and not had_flag:
                delattr(m, flag)


def _run_padded(model, run, tokenizer, seqs, requested_side, device):
    """Run ``seqs`` as one padded batch, as the extractor pads it (side, mask, positions)."""
    import torch

    from ..extraction import batching as _batching

    side = _arch.padding_side(model, requested_side)
    ids, mask, positions = _batching.pad_batch(seqs, _batching.pad_id(tokenizer, model.config),
                                               side)
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if _arch.takes_position_ids(model):
        kwargs["position_ids"] = positions.to(device)
    if _accepts(run, "use_cache"):
        kwargs["use_cache"] = False
    try:
        with torch.inference_mode():
            run(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise _forward_failed(model, "a padded batch of two short texts", exc) from exc
    return side, len(seqs[0]), max(len(s) for s in seqs)


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _accepts(module, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- checks
def check(obs: Observation, extractor) -> None:
    """Compare what ``extractor`` reads with the truths of ``obs`` (see the module's text);
    raise :class:`VerificationError` on a disagreement."""
    import torch

    model = obs.model
    if obs.targets:
        _check_blocks(obs)
    heads = [p for p in extractor.parts if _attn_arch.split_head(p)[1] is not None]
    if heads:
        if obs.untapped:
            _say_once(model, "its attention implementation cannot be tapped, so the attention "
                             "found in its blocks is not checked at run time")
        else:
            from ._verify_heads import check_heads

            with torch.inference_mode():
                check_heads(obs, extractor, heads)
    if extractor.batch_size > 1:
        if obs.padded is not None:
            _check_padded_blocks(obs)
        else:  # parts named by module path: the extractor's own vectors
            _check_padding(model, extractor)


def _check_blocks(obs: Observation) -> None:
    model = obs.model
    n = _arch.n_blocks(model)
    read = {}
    for t in obs.targets:
        t = tuple(t) + (0,) * (5 - len(t))
        module, kind, layer, part, occurrence = t[:5]
        got = obs.reads.get((id(module), kind), [])
        if occurrence >= len(got):
            raise VerificationError(
                f"{describe(model)}: block {layer}'s {'input' if kind == 'pre' else 'output'} "
                f"(module {_arch._path_of(model, module)!r}) never ran in the model's forward, "
                "so the blocks discovery found are not the ones the model runs. "
                + way_out(model))
        value = read[("resid_pre", "resid_post")[part], layer] = got[occurrence][0]
        if value.dim() != 2 or value.shape[0] != obs.n_tokens:
            raise VerificationError(
                f"{describe(model)}: block {layer}'s "
                f"{'input' if kind == 'pre' else 'output'} has shape {tuple(value.shape)} for a "
                f"text of {obs.n_tokens} tokens, not (tokens, hidden): the model changes the "
                "sequence (downsampling, an internal pad or prompt) or its layout, so the "
                "tokens cannot be pooled with the attention mask. " + way_out(model))
    width = _arch.hidden_size(model)
    for name, layer, value in [(p, layer, v) for (p, layer), v in read.items()] + [
            (part, t[2], obs.reads.get((id(t[0]), t[1]), [None])[0]) for part, t in obs.sublayers]:
        if value is not None and tuple(value.shape[-2:]) != (obs.n_tokens, width):
            raise VerificationError(
                f"{describe(model)}: part {name!r} at layer {layer} reads shape "
                f"{tuple(value.shape)} for a text of {obs.n_tokens} tokens, not (tokens, "
                f"{width}): it is not on the residual stream's width (a bottleneck, several "
                "streams). " + way_out(model))
    hs = obs.hidden_states
    if hs is not None and len(hs) in (n, n + 1):
        # hidden_states[0] is the first block's input (n + 1 entries), or the entries are the
        # blocks' outputs (Mamba, RWKV: then a last, normed one may follow)
        offsets = (1, 0) if len(hs) == n + 1 else (0,)
        failures = [_disagreement(model, read, _hidden_pairs(hs, n, o)) for o in offsets]
        if all(failures):
            raise failures[0]
        return
    why = ("returns no hidden states" if hs is None else
           f"returns {len(hs)} hidden states for {n} blocks")
    _say_once(model, f"it {why}, so its blocks are checked against each other only (each "
                     "block's input is the previous block's output)")
    failure = _disagreement(model, read, [("resid_pre", layer, read["resid_post", layer - 1],
                                           f"the output of block {layer - 1}")
                                          for layer in range(1, n)])
    if failure:
        raise failure


def _hidden_pairs(hs, n: int, offset: int) -> list:
    """``(part, layer, truth, what)`` with ``hs[l + offset]`` the output of block ``l`` (the last
    block's left out: a final norm may apply to its entry)."""
    pairs = []
    for layer in range(n):
        if layer + offset - 1 >= 0:
            pairs.append(("resid_pre", layer, hs[layer + offset - 1][0],
                          f"hidden_states[{layer + offset - 1}]"))
        if layer < n - 1:
            pairs.append(("resid_post", layer, hs[layer + offset][0],
                          f"hidden_states[{layer + offset}]"))
    return pairs


def _disagreement(model, read, pairs) -> VerificationError | None:
    """The error for the first of ``pairs`` whose read differs from its truth, else ``None``."""
    for part, layer, truth, what in pairs:
        got = read[part, layer]
        if got.shape != truth.shape:
            return VerificationError(
                f"{describe(model)}: part {part!r} at layer {layer} as discovery reads it has "
                f"shape {tuple(got.shape)}, the model's own {what} {tuple(truth.shape)}, so the "
                "blocks or their inputs and outputs are not where discovery looks. "
                + way_out(model))
        err = relative_error(got, truth)
        if not err <= SAME_FORWARD:
            return VerificationError(
                f"{describe(model)}: part {part!r} at layer {layer} as discovery reads it "
                f"differs from the model's own {what} by {err:.3g} (relative max error), so "
                "the blocks or their inputs and outputs are not where discovery looks. "
                + way_out(model))
    return None


def _check_padded_blocks(obs: Observation) -> None:
    """Every block's input and output for the short text padded in a batch against the text
    alone, on its real tokens."""
    model = obs.model
    side, k, n_batch = obs.padded_rows
    tol = tolerance(next(model.parameters()).dtype)
    for t in sorted(obs.targets, key=lambda t: (t[2], t[3])):  # by layer, input first
        t = tuple(t) + (0,) * (5 - len(t))
        module, kind, layer, part, occurrence = t[:5]
        alone = obs.reads.get((id(module), kind), [])
        padded = obs.padded.get((id(module), kind), [])
        if occurrence >= min(len(alone), len(padded)):
            continue  # said by the check of the blocks
        a, b = alone[occurrence][0], padded[occurrence][0]
        if b.dim() != 2 or a.shape[-1] != b.shape[-1]:
            continue  # not (tokens, hidden): said by the check of the blocks
        if b.shape[0] != n_batch:
            raise VerificationError(
                f"{describe(model)}: a padded batch of {n_batch} tokens gives states for "
                f"{b.shape[0]} positions at layer {layer}: the model pads or cuts the sequence "
                "inside its forward (e.g. to a multiple of a chunk length), so its states cannot "
                "be lined up with the tokens. Use batch_size=1 with texts the model does not "
                "pad, or another model.")
        b = b[b.shape[0] - k:] if side == "left" else b[:k]
        err = relative_error(b, a)
        if not err <= tol:
            name = ("resid_pre", "resid_post")[part]
            raise VerificationError(
                f"{describe(model)}: part {name!r} at layer {layer} of a text in a padded "
                f"batch differs from the same text alone by {err:.3g} (relative max error): "
                "the model's forward depends on the padding. Use batch_size=1 (no padding), "
                "or verify=False to accept the difference.")


def _check_padding(model, extractor) -> None:
    """The short text in a padded batch beside a longer one against the same text alone."""
    import torch

    ext = dataclasses.replace(extractor, batch_size=2, verbose=False, warn_truncation=False)
    text = " ".join(TEXTS[0].split()[:4])
    try:  # longest first: [long, short] padded in one batch, then the short text alone
        both = ext.extract([TEXTS[1], text, text])
        batch, alone = both[1:2], both[2:3]
    except ValueError as exc:
        if _raised_here(exc):  # the package's own message: which model it is said too
            raise VerificationError(f"{describe(model)}: {exc}") from exc
        raise _forward_failed(model, "a padded batch of two short texts", exc) from exc
    except Exception as exc:  # noqa: BLE001
        if _raised_here(exc):
            raise
        raise _forward_failed(model, "a padded batch of two short texts", exc) from exc
    tol = tolerance(extractor.autocast_dtype or next(model.parameters()).dtype)
    names = extractor.part_names()
    for li, layer in enumerate(extractor.layers):
        for pi, name in enumerate(names):
            err = relative_error(torch.from_numpy(batch[0, li, pi]),
                                  torch.from_numpy(alone[0, li, pi]))
            if not err <= tol:
                raise VerificationError(
                    f"{describe(model)}: part {name!r} at layer {layer} of a text in a padded "
                    f"batch differs from the same text alone by {err:.3g} (relative max "
                    "error): the model's forward depends on the padding. Use batch_size=1 "
                    "(no padding), or verify=False to accept the difference.")


def _raised_here(exc: Exception) -> bool:
    """Whether ``exc`` is one of this package's own errors (raised in its code, not inside the
    model's forward): those already say what is wrong."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(sys.modules[__name__.split(".")[0]].__file__))
    tb, last = exc.__traceback__, ""
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return os.path.abspath(last).startswith(package + os.sep)


def verify_extractor(extractor) -> None:
    """Check ``extractor``'s reading of its model (see the module's text): for runners other
    than the encoder, which does it in ``fit`` (``verify=True``)."""
    side = getattr(extractor.tokenizer, "padding_side", "right")
    obs = observe(extractor.model, extractor.tokenizer, extractor.parts,
                  max_length=extractor.max_length, autocast_dtype=extractor.autocast_dtype,
                  padding_side=side if extractor.batch_size > 1 else None)
    check(obs, extractor)
