"""Token pooling: turn per-token activations ``(batch, tokens, hidden)`` into one vector per text.

Names follow sentence-transformers (``mean``, ``max``, ``cls``, ``lasttoken``) plus ``min`` and
``first``; a float in ``[0, 1]`` picks one token by its relative position among each text's real
tokens (``0.0`` is the first, ``0.5`` the middle, ``1.0`` the last). Every method reads the
attention mask, so it is right under left and right padding alike.

With images, a pooling may be limited to one modality: ``"image:mean"`` averages the image tokens
only, ``"text:lasttoken"`` takes the last text token (see :data:`MODALITIES`). Where a sample
holds several images, ``"image0:mean"``, ``"image1:mean"`` ... read the tokens of its first,
second ... image only (``"image:mean"`` reads those of all its images). A text with no token of
that modality gets NaN for that pooling.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Sequence

POOLINGS = ("lasttoken", "mean", "max", "min", "cls", "first")
MODALITIES = ("image", "text")


def is_modality(name: str) -> bool:
    """``"image"``, ``"text"`` or one image of several: ``"image0"``, ``"image1"`` ..."""
    return name in MODALITIES or (name.startswith("image") and name[5:].isdigit()
                                  and str(int(name[5:])) == name[5:])


def split_modality(p: str | float) -> tuple[str | None, str | float]:
    """``"image:mean"`` -> ``("image", "mean")``; ``"mean"`` -> ``(None, "mean")``."""
    if isinstance(p, str) and ":" in p:
        modality, base = p.split(":", 1)
        return modality, base
    return None, p


def validate_pooling(token_pooling: Any, *, is_decoder: bool | None = None,
                     auto: str | None = None) -> list[str | float]:
    """Return the token poolings as a non-empty list, resolving ``"auto"``.

    ``"auto"`` means ``auto`` when given (``"image:mean"`` for a vision tower), else
    ``lasttoken`` for decoder-only models and ``mean`` for encoders.
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
                if auto is not None:
                    p = auto
                elif is_decoder is None:
                    out.append(p)
                    continue
                else:
                    p = "lasttoken" if is_decoder else "mean"
            modality, base = split_modality(p)
            if base not in POOLINGS or (modality is not None and not is_modality(modality)):
                raise ValueError(
                    f"token_pooling {p!r} is not supported; valid values are "
                    f"{['auto', *POOLINGS]}, a float in [0, 1] (relative token position), or a "
                    f"name limited to one modality such as 'image:mean' (modalities "
                    f"{list(MODALITIES)}, or 'image0', 'image1' ... for one image of several)."
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


def make_pooler(mask, poolings: Sequence[str | float], pool_mask=None, modalities=None):
    """Return ``pool(hidden)`` mapping ``(B, T, H)`` to ``(B, len(poolings), H)`` float32.

    Everything that depends only on the masks (``mask``: ``(B, T)``, 1 on real tokens, padding
    on either side) is computed here once per batch, so each hooked module pays only for the
    pooling. ``pool_mask`` (default ``mask``) marks the tokens that ``mean``/``max``/``min`` read,
    e.g. the text without its prompt template; positional poolings count all real tokens.
    ``modalities`` maps ``"image"``/``"text"`` to ``(B, T)`` masks for modality-limited poolings
    (``"image:mean"``); such a pooling reads only that modality's real tokens.
    """
    import torch

    keep = mask.bool()
    agg = keep if pool_mask is None else pool_mask.bool() & keep
    plan = []  # per pooling: (kind, data, rows with no token to read)
    for p in poolings:
        modality, base = split_modality(p)
        if modality is None:
            sel = agg if base in ("mean", "max", "min") else keep
        else:
            if modalities and modality not in modalities and "image" in modalities \
                    and modality != "text":  # image<j> where no sample has a j-th image
                sel = torch.zeros_like(keep)
            elif not modalities or modality not in modalities:
                plan.append(("missing", p, None))  # an error only if a module is pooled so
                continue
            else:
                sel = keep & modalities[modality].bool()
            if modality == "text" and base in ("mean", "max", "min"):
                sel = sel & agg
        count = sel.sum(1)
        if base == "mean":
            data = (sel.float() / count.clamp(min=1)[:, None].float())[:, None, :]  # bmm weights
        elif base in ("max", "min"):
            data = ~sel[..., None]
        else:
            rank = sel.long().cumsum(1) - 1  # rank of each token among the selected ones
            if base in ("cls", "first"):
                target = torch.zeros_like(count)
            elif base == "lasttoken":
                target = (count - 1).clamp(min=0)
            else:
                target = torch.round(float(base) * (count - 1).clamp(min=0).float()).long()
            data = ((rank == target[:, None]) & sel).long().argmax(1)
        # rows with no token of the modality are NaN (no check, so no device sync, otherwise)
        plan.append((base, data, None if modality is None else count == 0))

    n_tokens = keep.shape[1]

    def pool(hidden):
        if hidden.shape[1] != n_tokens:  # a shape check: no device sync
            raise ValueError(
                f"the model returned states for {hidden.shape[1]} positions where the batch has "
                f"{n_tokens} tokens: it pads or cuts the sequence inside its forward (e.g. to a "
                "multiple of a chunk length), so its states cannot be lined up with the tokens. "
                "Such a model cannot be read per token.")
        hidden = hidden.float()
        out = []
        for base, data, empty in plan:
            if base == "missing":
                raise ValueError(f"token_pooling {data!r} needs to know which tokens are "
                                 f"{split_modality(data)[0]} tokens, and these inputs do not say "
                                 "(pass image+text samples).")
            if base == "mean":
                # float32 under autocast too (autocast would run bmm, the sum, in bfloat16)
                with torch.autocast(hidden.device.type, enabled=False):
                    v = torch.bmm(data, hidden)[:, 0]
            elif base == "max":
                v = hidden.masked_fill(data, float("-inf")).amax(1)
            elif base == "min":
                v = hidden.masked_fill(data, float("inf")).amin(1)
            else:  # one token per row: a gather (hidden[rows, data] is ~1000x slower on CPU)
                at = data.view(-1, 1, *([1] * (hidden.dim() - 2)))
                v = hidden.gather(1, at.expand(-1, 1, *hidden.shape[2:]))[:, 0]
            if empty is not None:
                v = v.masked_fill(empty[:, None], float("nan"))
            out.append(v)
        return torch.stack(out, 1)

    # for readers that need the token masks (attention metrics)
    pool.poolings, pool.mask, pool.modalities = tuple(poolings), mask, modalities
    return pool
