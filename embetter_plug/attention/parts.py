"""How each per-head part and attention metric is read and pooled (see :mod:`._attn_arch`).

Every target here is a :class:`~embetter_plug.extraction.hooks.Target` with a ``fn(received, pool)`` that
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

from . import tap as _attn_tap
from ..extraction.hooks import register_tap
from .._utils import available_ram

__all__ = ["PatternBudget", "check_implementation", "head_target", "token_metric"]

PATTERN_METRICS = ("attn_entropy", "attn_sink", "attn_distance", "attn_density",
                   "attn_weighted_value_norm", "attn_image")
DENSITY_MASS = 0.9
# float32 (B, heads, S, S) copies alive while one layer's metrics are computed: the scores, the
# pattern, the sorted pattern, its cumulative sum and one elementwise temporary
PATTERN_COPIES = 5
# one chunk of query rows of one layer's pattern holds at most this many bytes, so the memory
# that metrics need stays near flat in the sequence length too
CHUNK_BYTES = 2**26

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


def token_metric(name: str, call, info, mask, modalities=None, wanted=()):
    """``(B, heads, S_q)`` float32 values of metric ``name`` for one attention call
    (``mask``: ``(B, S)``, 1 on real tokens; ``modalities``: ``{"image": (B, S)}`` masks).

    The pattern metrics of ``wanted`` are computed together, in one pass over the pattern
    (:func:`pattern_metrics`), the first time one of them is asked for."""
    import torch

    memo = call.memo
    if name in memo:
        return memo[name]
    groups = info.n_heads // info.n_kv_heads
    if name == "attn_value_norm":
        memo[name] = _value_norm(call, groups)
    elif name == "attn_result_norm":
        memo[name] = _result_norm(call.output, info)
    elif name in PATTERN_METRICS:
        names = [m for m in PATTERN_METRICS if m in wanted or m == name]
        memo.update(pattern_metrics(call, names, mask, modalities, groups))
    else:  # pragma: no cover - names are validated before
        raise ValueError(f"unknown attention metric {name!r}.")
    return memo[name]


def _result_norm(z, info):
    """``||z_h W_O[h]||`` as ``sqrt(z_h G_h z_h)`` with ``G_h = W_O[h] W_O[h]^T``: a
    ``d_head x d_head`` product per token and head instead of ``d_head x d_model``."""
    import torch

    w = info.w_o(z.device).double()
    gram = (w @ w.transpose(1, 2)).float()  # (H, d, d)
    b, s, h, d = z.shape
    zh = z.float().permute(2, 0, 1, 3).reshape(h, b * s, d)  # (H, B*S, d)
    sq = (torch.bmm(zh, gram) * zh).sum(-1).reshape(h, b, s)
    return sq.clamp_min(0).sqrt().transpose(0, 1)  # (B, H, S)


def _value_norm(call, groups):
    import torch

    if "vnorm" in call.memo:
        return call.memo["vnorm"]
    vnorm = torch.linalg.vector_norm(call.value, dim=-1, dtype=torch.float32)  # (B, kv, S)
    call.memo["vnorm"] = vnorm.repeat_interleave(groups, dim=1) if groups > 1 else vnorm
    return call.memo["vnorm"]


def _descending_cumsum(p):
    """Cumulative sums of each row sorted in descending order. Sorting short rows is many
    times faster in NumPy than in torch on the CPU; the sums are torch's either way."""
    import numpy as np
    import torch

    if p.device.type != "cpu":
        return p.sort(dim=-1, descending=True).values.cumsum(-1)
    ascending = np.sort(p.numpy(), axis=-1)
    return torch.from_numpy(ascending).flip(-1).cumsum(-1)


class _RowsOf:
    """Shapes of a pattern ``(batch, heads, S_q, tokens)``, for the memory it needs per row."""

    def __init__(self, batch, heads, tokens):
        self.batch, self.heads, self.tokens = batch, heads, tokens

    def check(self, free: int) -> int:
        row = PATTERN_COPIES * 4 * self.batch * self.heads * self.tokens
        if row > free:
            raise MemoryError(
                f"attention metrics on a batch of {self.batch} texts x {self.tokens} tokens "
                f"need about {row / 2**30:.2f} GiB for a single query token's pattern row "
                f"({self.batch} x {self.heads} heads x {self.tokens} floats, {PATTERN_COPIES} "
                f"working copies), but only {free / 2**30:.2f} GiB is free; use a smaller "
                "batch_size or max_length, or metrics that need no pattern (attn_value_norm, "
                "attn_result_norm).")
        return row


def query_chunk(call, free: int | None = None) -> int:
    """How many query rows of the pattern to compute at a time: as many as fit in free memory
    (``PATTERN_COPIES`` working copies) and in ``CHUNK_BYTES``, at least one."""
    b, h, s_q = call.query.shape[:3]
    free = free_memory(call.module) if free is None else free
    row = _RowsOf(b, h, call.key.shape[-2]).check(free)
    cap = max(1, CHUNK_BYTES // (4 * b * h * call.key.shape[-2]))
    return max(1, min(s_q, free // row, cap))


def pattern_metrics(call, names, mask, modalities, groups, chunk: int | None = None) -> dict:
    """``{name: (B, heads, S_q)}`` for the pattern metrics ``names`` of one attention call,
    from the pattern computed ``chunk`` query rows at a time (:func:`query_chunk`), so that
    no more than one chunk of one layer's pattern is alive at once."""
    import torch

    if "attn_image" in names and (not modalities or "image" not in modalities):
        raise ValueError("attn_image needs image+text samples (which tokens are image "
                         "tokens); plain texts have none.")
    s_q, s_k = call.query.shape[-2], call.key.shape[-2]
    chunk = query_chunk(call) if chunk is None else chunk
    vnorm = _value_norm(call, groups) if "attn_weighted_value_norm" in names else None
    first = mask.long().argmax(1)  # the first real token of each text
    image = None
    if "attn_image" in names:
        image = modalities["image"][:, -s_k:].float()
    out: dict = {m: [] for m in names}
    for lo in range(0, s_q, chunk):
        hi = min(s_q, lo + chunk)
        p = call.pattern(lo, hi)  # (B, H, c, S_k)
        for m in names:
            out[m].append(_chunk_metric(m, p, lo, s_q, first, image, vnorm))
        del p
    return {m: v[0] if len(v) == 1 else torch.cat(v, dim=-1) for m, v in out.items()}


def _chunk_metric(name, p, lo, s_q, first, image, vnorm):
    import torch

    if name == "attn_entropy":  # in place on one temporary: the cheapest of the forms tried
        return -p.clamp_min(1e-30).log_().mul_(p).sum(-1)
    if name == "attn_sink":
        idx = first.to(p.device)[:, None, None, None].expand(*p.shape[:-1], 1)
        return p.gather(-1, idx)[..., 0]
    if name == "attn_distance":
        s_k = p.shape[-1]
        i = torch.arange(lo, lo + p.shape[-2], device=p.device)[:, None] + (s_k - s_q)
        j = torch.arange(s_k, device=p.device)[None, :]
        return (p * (i - j).abs().to(p.dtype)).sum(-1)
    if name == "attn_image":
        return (p @ image.to(p.device)[:, None, :, None])[..., 0]
    if name == "attn_weighted_value_norm":
        return (p @ vnorm[..., None])[..., 0]
    if name == "attn_density":
        cum = _descending_cumsum(p)  # non-decreasing: counting the sums below the mass is a
        mass = torch.full((*cum.shape[:-1], 1), DENSITY_MASS, dtype=cum.dtype)  # search
        below = torch.searchsorted(cum, mass.to(cum.device))[..., 0]
        return (below + 1).clamp(max=p.shape[-1]).float()
    raise ValueError(f"unknown attention metric {name!r}.")  # pragma: no cover


class _MetricHead:
    def __init__(self, name, h, info, wanted=()):
        self.name, self.h, self.info, self.wanted = name, h, info, wanted
        self.check_batch = None  # set by head_target for pattern metrics

    def __call__(self, call, pool):
        key = ("pooled", self.name)
        pooled = call.memo.get(key)
        if pooled is None:  # every head of the call pooled at once: (B, n_poolings, heads)
            values = token_metric(self.name, call, self.info, pool.mask,
                                  getattr(pool, "modalities", None), self.wanted)
            pooled = call.memo[key] = pool(values.transpose(1, 2))
        return pooled[..., self.h:self.h + 1]


class PatternBudget:
    """Before each forward that computes patterns: is the implementation able to give them, and
    does one layer's pattern fit in free memory?"""

    def __init__(self, model, info, n_layers, metrics=()):
        self.model, self.info, self.n_layers = model, info, n_layers
        self.metrics = tuple(m for m in metrics if m in PATTERN_METRICS)

    def bytes_needed(self, batch: int, tokens: int) -> int:
        return PATTERN_COPIES * 4 * batch * self.info.n_heads * tokens * tokens

    def check_rows(self, batch: int, tokens: int) -> None:
        """Before a forward computing metrics: the pattern is computed a chunk of query rows
        at a time, so one row of it must fit (:func:`query_chunk` raises otherwise)."""
        check_implementation(self.info.core.config)
        _RowsOf(batch, self.info.n_heads, tokens).check(free_memory(self.info.core))

    def check_batch(self, batch: int, tokens: int) -> None:
        """Before a forward returning whole patterns: one layer's pattern must fit."""
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


def free_memory(module) -> float:
    """Bytes free where ``module`` computes (GPU memory, or the host's available RAM; infinite
    when the host does not say, so the check lets the batch run)."""
    import torch

    device = next(module.parameters()).device
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = available_ram()
    return float("inf") if free is None else free


def head_target(part: str, h: int, info, budget: PatternBudget):
    """``(module, kind, fn)`` reading head ``h`` of ``part``."""
    if part == "attn_z":
        return info.o_proj, "pre", _ZHead(h, info)
    if part == "attn_result":
        return info.o_proj, "pre", _ResultHead(h, info)
    if part in ("attn_q", "attn_k", "attn_v"):
        return info.core, "attn", _QKVHead(part[-1], h)
    fn = _MetricHead(part, h, info, budget.metrics)
    if part in PATTERN_METRICS:
        fn.check_batch = budget.check_rows
    return info.core, "attn", fn
