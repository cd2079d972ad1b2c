"""The per-head part of the check at fit (see :mod:`embetter_plug.arch.verify`).

From the attention calls of the short text's forward (recorded through transformers'
``AttentionInterface``) and the projections writing the hidden size that ran: the attention of
each requested layer must have called the attention function, with the head numbers discovery
counts; its output projection must have run after the call, and the heads of ``attn_result``
plus its bias must sum to that projection's own output; for the pattern metrics, the pattern
applied to the values must be the attention function's own output.
"""

from __future__ import annotations

from . import heads as _attn_arch, attention as _attn_find
from .blocks import _path_of
from ..attention.parts import PATTERN_METRICS
from ._verify_common import VerificationError, describe, relative_error, tolerance, way_out

__all__ = ["check_heads"]


def _calls_of(obs, core):
    return [e[1] for e in obs.events if e[0] == "attn" and e[1].module is core]


def _proj_after(obs, call, o_proj):
    """The projection event of ``o_proj`` that runs after ``call``."""
    start = next(i for i, e in enumerate(obs.events) if e[0] == "attn" and e[1] is call)
    return next((e for e in obs.events[start + 1:] if e[0] == "proj" and e[1] is o_proj), None)


def check_heads(obs, extractor, heads) -> None:
    """Raise :class:`VerificationError` where a per-head reading disagrees with the calls."""
    model = obs.model
    layers = list(extractor.layers)
    infos = _attn_find.layer_infos(model, layers)
    wanted = {_attn_arch.split_head(p)[0] for p in heads}
    for layer, info in zip(layers, infos):
        where = f"{describe(model)}: the attention of layer {layer}"
        calls = _calls_of(obs, info.core) if info.interface else []
        if info.interface and not calls:
            raise VerificationError(
                f"{where} ({type(info.core).__name__}) never called the attention function in "
                "the model's forward, so it is not the module that attends. " + way_out(model))
        if calls:
            call = calls[-1]
            got = {"n_heads": call.query.shape[1], "n_kv_heads": call.key.shape[1]}
            want = {"n_heads": info.n_heads, "n_kv_heads": info.n_kv_heads}
            bad = {k: (want[k], got[k]) for k in got if got[k] != want[k]
                   and (k == "n_heads" or wanted - {"attn_z", "attn_result", "attn_q"})}
            if bad and len(calls) == 1:  # several calls: differential, z and result only
                raise VerificationError(
                    f"{where}: discovery counts other heads than the attention call has "
                    f"({', '.join(f'{k}: {a} found, {b} in the call' for k, (a, b) in bad.items())}"
                    "), so the per-head split would be wrong. " + way_out(model))
            _check_qkv_widths(where, call, info, wanted)
            proj = _proj_after(obs, call, info.o_proj)
        else:  # attention code of its own: the sublayer's projection as it ran
            proj = next((e for e in obs.events if e[0] == "proj" and e[1] is info.o_proj), None)
        if proj is None:
            raise VerificationError(
                f"{where}: its output projection "
                f"({_path_of(model, info.o_proj)!r}) did not run after the attention, "
                "so attn_z/attn_result would read another module. " + way_out(model))
        _, o_proj, z, y = proj
        w = info.w_o(z.device).float()
        summed = (z.float().reshape(*z.shape[:-1], info.n_heads, info.d_head)[..., None, :]
                  @ w).squeeze(-2).sum(-2)
        bias = getattr(o_proj, "bias", None)
        if bias is not None:
            if bias.device.type == "meta":  # offloaded by accelerate between forwards
                from .attention import offloaded_param

                bias = offloaded_param(o_proj, z.device, "bias")
            summed = summed + bias.float()
        err = relative_error(summed, y)
        if not err <= tolerance(y.dtype):
            raise VerificationError(
                f"{where}: the heads of attn_result plus the bias differ from the output "
                f"projection's own output by {err:.3g} (relative max error). " + way_out(model))
        if calls and wanted & set(PATTERN_METRICS) and layer == layers[0]:
            _check_pattern(model, where, calls[-1], info)


def _check_qkv_widths(where, call, info, wanted) -> None:
    """attn_q/attn_k/attn_v are ``d_head`` wide: the call's own q, k and v must be too (latent
    attention, for one, gives queries and keys wider than the values)."""
    tensors = {"attn_q": call.query, "attn_k": call.key, "attn_v": call.value}
    bad = {p: t.shape[-1] for p, t in tensors.items() if p in wanted and t.shape[-1] != info.d_head}
    if bad:
        raise VerificationError(
            f"{where}: the attention call's {', '.join(f'{p[5:]} heads are {w} wide' for p, w in bad.items())}"
            f", not the {info.d_head} discovery reads from the model, so {sorted(bad)} cannot be "
            "split into heads this way. Read attn_z/attn_result or module paths instead, or pass "
            "verify=False to skip this check.")


def _check_pattern(model, where, call, info) -> None:
    """The pattern the metrics read, times the values, must be the attention's own output."""
    own = call.output  # first: the model's own implementation gives it, not the pattern's rows
    p = call.pattern()  # (B, H, Q, K)
    v = call.value.float().repeat_interleave(info.n_heads // info.n_kv_heads, dim=1)
    out = (p @ v).transpose(1, 2)  # (B, Q, H, d)
    err = relative_error(out, own.float().reshape(out.shape)
                          if own.numel() == out.numel() else own)
    if not err <= 10 * tolerance(own.dtype):
        raise VerificationError(
            f"{where}: the attention pattern computed for the metrics, applied to the values, "
            f"differs from the attention function's own output by {err:.3g} (relative max "
            "error), so the patterns would be wrong. Read attn_z/attn_result or module paths "
            "instead, or pass verify=False to skip this check.")
