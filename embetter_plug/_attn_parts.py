"""How each per-head part and attention metric is read and pooled (see :mod:`._attn_arch`).

Every target here is a :class:`~embetter_plug._hooks.Target` with a ``fn(received, pool)`` that
returns the pooled ``(batch, n_poolings, width)`` of one head:

- ``attn_z``/``attn_result`` read the output projection's input (a forward pre-hook), so they
  work with any attention implementation and leave it alone;
- ``attn_q``/``attn_k``/``attn_v`` and the metrics read the attention function's call through
  the tap of :mod:`._attn_tap` (kind ``"attn"``); the softmax pattern is computed for the layers
  asked for only, one layer at a time, and reduced at once to one number per query token and
  head, so no ``S x S`` pattern outlives its layer.

Metrics, per query token ``i`` and query head ``h`` (``p`` the post-softmax row over keys ``j``):

- ``attn_entropy``  ``-sum_j p_ij log p_ij`` (nats);
- ``attn_sink``     ``p_i,first``: attention to the text's first token;
- ``attn_distance`` ``sum_j p_ij |i - j|``: mean attention distance in tokens;
- ``attn_density``  the fewest keys that hold 90% of the row's mass;
- ``attn_value_norm``  ``||v_i||`` of the key/value head that ``h`` reads;
- ``attn_result_norm`` ``||z_ih W_O[h]||``: the norm of the head's output written toward the
  residual stream;
- ``attn_weighted_value_norm`` ``sum_j p_ij ||v_j||``: value norms weighted by the attention;
- ``attn_image`` ``sum_{j image} p_ij``: the attention mass on image tokens (image+text samples;
  pooled with ``text:mean`` it is how much the text attends to the picture).

Each is then pooled over query tokens with the encoder's token pooling, like any part.
"""

from __future__ import annotations

from . import _attn_tap
from ._hooks import register_tap

__all__ = ["PatternBudget", "check_implementation", "head_target", "token_metric"]

PATTERN_METRICS = ("attn_entropy", "attn_sink", "attn_distance", "attn_density",
                   "attn_weighted_value_norm", "attn_image")
DENSITY_MASS = 0.9
# float32 (B, heads, S, S) copies alive while one layer's metrics are computed: the scores, the
# pattern, the sorted pattern, its cumulative sum and one elementwise temporary
PATTERN_COPIES = 5

register_tap("attn", _attn_tap.attach)


def _linear_only(pool) -> bool:
    return all(p not in ("max", "min") for p in getattr(pool, "poolings", ("max",)))


class _ZHead:
    def __init__(self, h, info):
        self.h, self.info = h, info

    def __call__(self, z, pool):
        d = self.info.d_head
        return pool(z[..., self.h * d:(self.h + 1) * d])


class _ResultHead:
    """``z_h @ W_O[h]``; with only linear poolings (mean, positions) the pooled ``z_h`` is
    projected, which is the same vector for a fraction of the work."""

    def __init__(self, h, info):
        self.h, self.info = h, info

    def __call__(self, z, pool):
        d = self.info.d_head
        w = self.info.w_o(z.device)[self.h]  # (d_head, hidden)
        zh = z[..., self.h * d:(self.h + 1) * d]
        if _linear_only(pool):
            return pool(zh) @ w.float()
        return pool(zh @ w)


class _QKVHead:
    def __init__(self, which, h):
        self.which, self.h = which, h

    def __call__(self, call, pool):
        x = {"q": call.query, "k": call.key, "v": call.value}[self.which]
        return pool(x[:, self.h])  # (B, S, d)


def token_metric(name: str, call, info, mask, modalities=None):
    """``(B, heads, S_q)`` float32 values of metric ``name`` for one attention call
    (``mask``: ``(B, S)``, 1 on real tokens; ``modalities``: ``{"image": (B, S)}`` masks)."""
    import torch

    memo = call.memo
    if name in memo:
        return memo[name]
    groups = info.n_heads // info.n_kv_heads
    if name in ("attn_value_norm", "attn_weighted_value_norm"):
        vnorm = call.value.float().norm(dim=-1).repeat_interleave(groups, dim=1)  # (B, H, S)
        if name == "attn_value_norm":
            out = vnorm
        else:
            out = (call.pattern() @ vnorm[..., None])[..., 0]
    elif name == "attn_result_norm":
        z = call.output.float()  # (B, S, H, d)
        out = torch.einsum("bshd,hdm->bhsm", z, info.w_o(z.device).float()).norm(dim=-1)
    else:
        p = call.pattern()
        if name == "attn_entropy":
            out = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
        elif name == "attn_sink":
            first = mask.long().argmax(1)  # the first real token of each text
            out = p[torch.arange(p.shape[0], device=p.device), :, :, first.to(p.device)]
        elif name == "attn_distance":
            s_q, s_k = p.shape[-2:]
            i = torch.arange(s_q, device=p.device)[:, None] + (s_k - s_q)
            j = torch.arange(s_k, device=p.device)[None, :]
            out = (p * (i - j).abs().float()).sum(-1)
        elif name == "attn_image":
            if not modalities or "image" not in modalities:
                raise ValueError("attn_image needs image+text samples (which tokens are image "
                                 "tokens); plain texts have none.")
            image = modalities["image"].to(p.device).float()  # (B, S_k)
            out = (p * image[:, None, None, -p.shape[-1]:]).sum(-1)
        elif name == "attn_density":
            cum = p.sort(dim=-1, descending=True).values.cumsum(-1)
            out = ((cum < DENSITY_MASS).sum(-1) + 1).clamp(max=p.shape[-1]).float()
        else:  # pragma: no cover - names are validated before
            raise ValueError(f"unknown attention metric {name!r}.")
    memo[name] = out
    return out


class _MetricHead:
    def __init__(self, name, h, info):
        self.name, self.h, self.info = name, h, info
        self.check_batch = None  # set by head_target for pattern metrics

    def __call__(self, call, pool):
        values = token_metric(self.name, call, self.info, pool.mask,
                              getattr(pool, "modalities", None))[:, self.h]  # (B, S)
        return pool(values[..., None])


class PatternBudget:
    """Before each forward that computes patterns: is the implementation able to give them, and
    does one layer's pattern fit in free memory?"""

    def __init__(self, model, info, n_layers):
        self.model, self.info, self.n_layers = model, info, n_layers

    def bytes_needed(self, batch: int, tokens: int) -> int:
        return PATTERN_COPIES * 4 * batch * self.info.n_heads * tokens * tokens

    def check_batch(self, batch: int, tokens: int) -> None:
        check_implementation(self.info.core.config)
        need, free = self.bytes_needed(batch, tokens), free_memory(self.info.core)
        if need > free:
            fit = max(1, int(batch * free / need))
            raise MemoryError(
                f"attention metrics on a batch of {batch} texts x {tokens} tokens need about "
                f"{need / 2**30:.2f} GiB for one layer's patterns ({batch} x "
                f"{self.info.n_heads} heads x {tokens}^2 floats, {PATTERN_COPIES} working "
                f"copies), but only {free / 2**30:.2f} GiB is free; use batch_size={fit} or "
                "less, a smaller max_length, or metrics that need no pattern "
                "(attn_value_norm, attn_result_norm).")


def check_implementation(config) -> None:
    """Patterns need the mask of the eager or SDPA implementation: an error naming the one
    ``config`` runs otherwise."""
    impl = _attn_tap.original_implementation(config)
    if impl not in _attn_tap.PATTERN_IMPLEMENTATIONS:
        raise ValueError(
            f"attention patterns (and the metrics computed from them) need the mask of the "
            f"eager or SDPA implementation, but the model runs {impl!r}; load it with "
            "attn_implementation='sdpa' or 'eager', or call "
            "model.set_attn_implementation('sdpa').")


def free_memory(module) -> int:
    """Bytes free where ``module`` computes (GPU memory, or the host's available RAM)."""
    import torch

    device = next(module.parameters()).device
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def head_target(part: str, h: int, info, budget: PatternBudget):
    """``(module, kind, fn)`` reading head ``h`` of ``part``."""
    if part == "attn_z":
        return info.o_proj, "pre", _ZHead(h, info)
    if part == "attn_result":
        return info.o_proj, "pre", _ResultHead(h, info)
    if part in ("attn_q", "attn_k", "attn_v"):
        return info.core, "attn", _QKVHead(part[-1], h)
    fn = _MetricHead(part, h, info)
    if part in PATTERN_METRICS:
        fn.check_batch = budget.check_batch
    return info.core, "attn", fn
