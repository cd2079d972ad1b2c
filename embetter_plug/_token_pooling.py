"""Token pooling: turn per-token activations ``(batch, tokens, hidden)`` into one vector per text.

Names follow sentence-transformers (``mean``, ``max``, ``cls``, ``lasttoken``) plus ``min`` and
``first``; a float in ``[0, 1]`` picks one token by its relative position among each text's real
tokens (``0.0`` is the first, ``0.5`` the middle, ``1.0`` the last). Every method reads the
attention mask, so it is right under left and right padding alike.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Sequence

POOLINGS = ("lasttoken", "mean", "max", "min", "cls", "first")


def validate_pooling(token_pooling: Any, *, is_decoder: bool | None = None) -> list[str | float]:
    """Return the token poolings as a non-empty list, resolving ``"auto"``.

    ``"auto"`` means ``lasttoken`` for decoder-only models and ``mean`` for encoders.
    """
    items: Sequence[Any]
    if isinstance(token_pooling, (str, Real)) and not isinstance(token_pooling, bool):
        items = [token_pooling]
    elif isinstance(token_pooling, (list, tuple)):
        items = list(token_pooling)
    else:
        raise TypeError(
            f"token_pooling must be a name, a float in [0, 1] or a list of those, got "
            f"{token_pooling!r}; valid names are {['auto', *POOLINGS]}."
        )
    if not items:
        raise ValueError("token_pooling is an empty list; give at least one pooling.")
    out: list[str | float] = []
    for p in items:
        if isinstance(p, str):
            if p == "auto":
                if is_decoder is None:
                    out.append(p)
                    continue
                p = "lasttoken" if is_decoder else "mean"
            if p not in POOLINGS:
                raise ValueError(
                    f"token_pooling {p!r} is not supported; valid values are "
                    f"{['auto', *POOLINGS]} or a float in [0, 1] (relative token position)."
                )
            out.append(p)
        elif isinstance(p, Real) and not isinstance(p, bool):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(
                    f"token_pooling position {p!r} is outside [0, 1]; 0.0 is the first real "
                    "token, 1.0 the last."
                )
            out.append(float(p))
        else:
            raise TypeError(f"token_pooling entry {p!r} is neither a name nor a float.")
    if len(set(map(str, out))) != len(out):
        raise ValueError(f"token_pooling {items!r} lists the same pooling twice.")
    return out


def pooling_name(p: str | float) -> str:
    """Display name of a pooling, e.g. ``"mean"`` or ``"pos0.5"``."""
    return p if isinstance(p, str) else f"pos{p:g}"


def make_pooler(mask, poolings: Sequence[str | float], pool_mask=None):
    """Return ``pool(hidden)`` mapping ``(B, T, H)`` to ``(B, len(poolings), H)`` float32.

    Everything that depends only on ``mask`` (``(B, T)``, 1 on real tokens, padding on either
    side) is computed here once per batch, so each hooked module pays only for the pooling.
    ``pool_mask`` (default ``mask``) marks the tokens that ``mean``/``max``/``min`` read, e.g. the
    text without its prompt template; positional poolings always count all real tokens.
    """
    import torch

    keep = mask.bool()
    n_real = keep.sum(1).clamp(min=1)  # (B,)
    agg = keep if pool_mask is None else pool_mask.bool() & keep
    n_agg = agg.sum(1).clamp(min=1)
    weights = (agg.float() / n_agg[:, None].float())[:, None, :]  # (B, 1, T): mean as a bmm
    rank = keep.long().cumsum(1) - 1  # rank of each real token within its text
    rows = torch.arange(mask.shape[0], device=mask.device)
    index = {}
    for p in poolings:
        if isinstance(p, str) and p in ("mean", "max", "min"):
            continue
        if p in ("cls", "first"):
            target = torch.zeros_like(n_real)
        elif p == "lasttoken":
            target = n_real - 1
        else:
            target = torch.round(float(p) * (n_real - 1).float()).long()
        index[p] = ((rank == target[:, None]) & keep).long().argmax(1)
    pad = ~agg[..., None]

    def pool(hidden):
        hidden = hidden.float()
        out = []
        for p in poolings:
            if p == "mean":
                out.append(torch.bmm(weights, hidden)[:, 0])
            elif p == "max":
                out.append(hidden.masked_fill(pad, float("-inf")).amax(1))
            elif p == "min":
                out.append(hidden.masked_fill(pad, float("inf")).amin(1))
            else:
                out.append(hidden[rows, index[p]])
        return torch.stack(out, 1)

    pool.poolings, pool.mask = tuple(poolings), mask  # for readers that need the token mask
    return pool
