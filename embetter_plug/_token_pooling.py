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


def pool_tokens(hidden, mask, poolings: Sequence[str | float]):
    """Pool ``hidden`` ``(B, T, H)`` with ``mask`` ``(B, T)`` into ``(B, len(poolings), H)`` float32.

    ``mask`` is 1 on real tokens, 0 on padding, and may sit on either side.
    """
    import torch

    hidden = hidden.float()
    maskf = mask.to(hidden.dtype)
    n_real = maskf.sum(1).clamp(min=1)  # (B,)
    out = []
    positions = None
    for p in poolings:
        if p == "mean":
            out.append((hidden * maskf[..., None]).sum(1) / n_real[:, None])
        elif p in ("max", "min"):
            fill = float("-inf") if p == "max" else float("inf")
            masked = hidden.masked_fill(~mask.bool()[..., None], fill)
            out.append(masked.amax(1) if p == "max" else masked.amin(1))
        else:
            if positions is None:
                # rank of each real token within its text: 0..n_real-1 (padding gets -1)
                positions = (mask.long().cumsum(1) - 1).masked_fill(~mask.bool(), -1)
            if p in ("cls", "first"):
                target = torch.zeros_like(n_real, dtype=torch.long)
            elif p == "lasttoken":
                target = n_real.long() - 1
            else:
                target = torch.round(float(p) * (n_real - 1)).long()
            idx = (positions == target[:, None]).float().argmax(1)
            out.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), idx])
    return torch.stack(out, 1)
