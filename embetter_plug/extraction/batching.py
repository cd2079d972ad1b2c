"""Tokenize, sort by token count, pad per batch (either side), with a prompt template.

Texts are tokenized in chunks of :data:`CHUNK_TEXTS`; within a chunk, batches are formed after
sorting by real token count (not characters), which keeps padding to a few percent on real text.
Chunking bounds the memory held by token ids, and lets the next chunk be tokenized while the
current one runs through the model (:func:`prefetch`). Truncation cuts the text, never the
template around it.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from .._utils import logger, warn_user

CHUNK_TEXTS = 4096  # texts tokenized (and length-sorted) at a time
# devices whose forward leaves the CPU free, so the next chunk is tokenized in a thread meanwhile
PREFETCH_ON = ("cuda",)


def split_template(prompt_template: str | None) -> tuple[str, str]:
    """``"Q: {text} A:"`` -> ``("Q: ", " A:")``; ``None`` -> ``("", "")``."""
    if prompt_template is None:
        return "", ""
    if not isinstance(prompt_template, str) or prompt_template.count("{text}") != 1:
        raise ValueError(
            f"prompt_template={prompt_template!r} must be a string with exactly one '{{text}}' "
            "placeholder, e.g. '{text}<end_of_turn>'."
        )
    prefix, suffix = prompt_template.split("{text}")
    return prefix, suffix


def tokenize(tokenizer, texts, prefix: str, suffix: str, max_length: int, *,
             spans: bool = False) -> tuple[list[list[int]], int] | tuple[list, int, list]:
    """Token ids of ``prefix + text + suffix`` for each text, at most ``max_length`` long.

    Returns ``(ids, n_truncated)``, with ``spans=True`` ``(ids, n_truncated, spans)`` where
    ``spans[i] = (start, stop)`` are the positions of text ``i``'s own tokens (template and
    special tokens outside). Only the text part is shortened, so the template's suffix (e.g. an
    end-of-turn token) always survives.
    """
    full = [prefix + t + suffix for t in texts]
    # verbose=False: no "sequence too long" message, the text is cut below
    enc = tokenizer(full, add_special_tokens=True, truncation=False, verbose=False,
                    return_offsets_mapping=spans)
    ids = enc["input_ids"]
    offsets = enc["offset_mapping"] if spans else None
    too_long = [i for i, s in enumerate(ids) if len(s) > max_length]
    kept = list(texts)  # each text as it is fed: truncated ones cut
    for i in too_long:
        ids[i], kept[i] = _truncate_one(tokenizer, texts[i], prefix, suffix, max_length, ids[i])
        if spans:
            offsets[i] = tokenizer(prefix + kept[i] + suffix, add_special_tokens=True,
                                   verbose=False, return_offsets_mapping=True)["offset_mapping"]
    if not spans:
        return ids, len(too_long)
    lo = len(prefix)
    out = []
    for i, offs in enumerate(offsets):
        hi = lo + len(kept[i])  # the suffix starts after the text that was kept
        inside = [k for k, (s, e) in enumerate(offs) if e > s and lo <= s < hi]
        out.append((inside[0], inside[-1] + 1) if inside else (0, len(ids[i])))
    return ids, len(too_long), out


def span_mask(spans, mask, side: str):
    """``(B, T)`` int64 mask that is 1 on each row's ``(start, stop)`` span of real tokens."""
    import torch

    out = torch.zeros_like(mask)
    lengths = mask.sum(1).tolist()
    width = mask.shape[1]
    for r, (start, stop) in enumerate(spans):
        shift = width - lengths[r] if side == "left" else 0
        out[r, shift + start:shift + stop] = 1
    return out


def _truncate_one(tokenizer, text, prefix, suffix, max_length, ids):
    """Shorten ``text`` until ``prefix + text + suffix`` fits, cutting at token boundaries."""
    for _ in range(8):
        excess = len(ids) - max_length
        if excess <= 0:
            return ids, text
        offsets = None
        if getattr(tokenizer, "is_fast", False):
            enc = tokenizer(prefix + text + suffix, add_special_tokens=True,
                            return_offsets_mapping=True, verbose=False)
            offsets = enc["offset_mapping"]
        lo, hi = len(prefix), len(prefix) + len(text)
        starts = [s for s, e in (offsets or []) if lo <= s < hi and e > s]
        if len(starts) > excess:
            text = text[: starts[-excess] - lo].rstrip()
        else:  # slow tokenizer or too little text: cut by tokens of the text alone
            text_ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            keep = max(len(text_ids) - excess, 0)
            text = tokenizer.decode(text_ids[:keep])
        ids = tokenizer(prefix + text + suffix, add_special_tokens=True, verbose=False)["input_ids"]
    if len(ids) > max_length:
        raise ValueError(
            f"the prompt template alone needs {len(ids)} tokens, more than max_length="
            f"{max_length}; shorten the template or raise max_length."
        )
    return ids, text


def length_sorted_batches(lengths, batch_size: int) -> list[np.ndarray]:
    """Index batches of ``batch_size`` texts, longest first, so each batch pads little."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class ChunkPlan(NamedTuple):
    """One tokenized chunk: its batches as ``(row indices, token id lists[, text spans])`` and
    truncations."""

    batches: list
    n_truncated: int


def chunk_size(batch_size: int) -> int:
    """Texts tokenized at a time: :data:`CHUNK_TEXTS`, and at least eight batches."""
    return max(CHUNK_TEXTS, 8 * batch_size)


def n_batches(n_texts: int, batch_size: int) -> int:
    """How many batches :func:`plan_chunks` forms for ``n_texts`` texts."""
    size = chunk_size(batch_size)
    full, rest = divmod(n_texts, size)
    return full * math.ceil(size / batch_size) + math.ceil(rest / batch_size)


def plan_chunks(tokenizer, texts, prefix: str, suffix: str, max_length: int,
                batch_size: int, *, spans: bool = False) -> Iterator[ChunkPlan]:
    """Tokenize ``texts`` chunk by chunk; yield each chunk's length-sorted batches.

    Row indices refer to positions in ``texts``. Nothing is tokenized before it is asked for.
    With ``spans``, each batch also carries its texts' token spans (see :func:`tokenize`).
    """
    size = chunk_size(batch_size)
    for lo in range(0, len(texts), size):
        ids, n_trunc, *sp = tokenize(tokenizer, texts[lo:lo + size], prefix, suffix, max_length,
                                     spans=spans)
        lengths = [len(s) for s in ids]
        batches = length_sorted_batches(lengths, batch_size)
        logger.debug("texts %d..%d: padding fraction %.3f", lo, lo + len(ids) - 1,
                     padding_fraction(lengths, batches))
        yield ChunkPlan([(b + lo, [ids[i] for i in b], *([[sp[0][i] for i in b]] if sp else []))
                         for b in batches], n_trunc)


_END = object()


def prefetch(items: Iterable) -> Iterator:
    """Yield from ``items`` while the next item is computed in a background thread.

    Fast tokenizers release the GIL, so the next chunk is tokenized while the current one runs
    through the model. At most one item is computed ahead.
    """
    it = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embetter-tokenize") as pool:
        ahead = pool.submit(next, it, _END)
        while True:
            item = ahead.result()
            if item is _END:
                return
            ahead = pool.submit(next, it, _END)
            yield item


def pad_id(tokenizer, config) -> int:
    """The id padding uses: the tokenizer's pad token, else its end token, else the model's."""
    for cand in (tokenizer.pad_token_id, tokenizer.eos_token_id,
                 getattr(config, "pad_token_id", None)):
        if cand is not None:
            return int(cand)
    return 0  # masked out anyway


def pad_batch(seqs: list[list[int]], pad_id: int, side: str):
    """``input_ids``, ``attention_mask`` and mask-aware ``position_ids`` as int64 tensors."""
    import torch

    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if side == "left":
            ids[r, width - len(s):] = torch.tensor(s)
            mask[r, width - len(s):] = 1
        else:
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    return ids, mask, position_ids


def padding_fraction(lengths, batches) -> float:
    """Share of padded tokens over all tokens fed to the model."""
    lengths = np.asarray(lengths)
    real = sum(int(lengths[b].sum()) for b in batches)
    total = sum(int(lengths[b].max()) * len(b) for b in batches)
    return 1.0 - real / total if total else 0.0


def report_truncated(n: int, n_seen: int, n_total: int, max_length: int, *,
                     warn: bool) -> None:
    """Log that ``n`` texts of a chunk were cut to ``max_length`` tokens; with ``warn`` (the
    model's own limit was hit, not a limit the user chose), also warn, in words that do not
    change between calls so Python shows the warning once per place in the user's code."""
    logger.info("%d text(s) longer than max_length=%d tokens truncated (%d of %d distinct texts "
                "tokenized so far; the prompt template is kept whole)", n, max_length, n_seen,
                n_total)
    if warn:
        warn_user(f"texts longer than the model's limit of {max_length} tokens were truncated (the "
                  "prompt template is kept whole); pass max_length= to choose the limit and "
                  "silence this. Counts are logged on the 'embetter_plug' logger (INFO).",
                  UserWarning)
