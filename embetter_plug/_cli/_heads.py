"""Per-head views for the command line: a layer x head table and heatmap per attention part."""

from __future__ import annotations

from pathlib import Path


def _per_head_parts(frame) -> list[str]:
    from embetter_plug._attn_arch import split_head

    return sorted({split_head(p)[0] for p in frame["part"] if split_head(p)[1] is not None})


def report_heads(results, out: Path | None) -> None:
    """Print the primary metric as a layer x head table for each per-head part of ``results``
    (a :class:`~embetter_plug.ProbeResults`); with ``out``, also draw them in ``heads.png``."""
    from embetter_plug._attn_arch import split_head
    from embetter_plug.attention import head_scores

    summary = results.summary()
    bases = _per_head_parts(summary)
    if not bases:
        return
    metric = results.primary_metric
    tables = {}
    for base in bases:
        rows = summary[summary["part"].map(lambda p: split_head(p)[0] == base)]
        for ctx, group in (rows.groupby(results.context, sort=False) if results.context
                           else [((), rows)]):
            label = " ".join(map(str, ctx if isinstance(ctx, tuple) else (ctx,)))
            tables[f"{base} {label}".strip()] = head_scores(group, metric)
    for name, table in tables.items():
        print(f"{name}: {metric} per layer (rows) x head (columns)")
        print(table.round(3).to_string())
    if out is not None:
        _heatmaps(tables, metric, out / "heads.png")
        print(f"wrote {out / 'heads.png'}")


def _heatmaps(tables: dict, value: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embetter_plug.attention import plot_head_heatmap

    width = max(5.0, 2 + 0.5 * max(t.shape[1] for t in tables.values()))
    fig, axes = plt.subplots(len(tables), 1, squeeze=False,
                             figsize=(width, 1.5 + 2.2 * len(tables)))
    for ax, (name, table) in zip(axes[:, 0], tables.items()):
        plot_head_heatmap(table, title=f"{name}: {value}", ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------- one text's pattern in the report
#: tokens of the text shown in the report's pattern view (the page holds layers x heads x n^2)
PATTERN_MAX_TOKENS = 64


def pattern_row(value: str):
    """An argparse ``type`` for ``--pattern-text``: ``auto``, ``none`` or a row number >= 0."""
    import argparse

    from ._data import int_at_least

    if value in ("auto", "none"):
        return value
    try:
        return int_at_least(0)(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{value!r}: use a row number (0 is the first data "
                                         "row), 'auto' or 'none'.") from None


def reads_heads(parts: str) -> bool:
    """Whether the comma-separated ``parts`` read attention per head (``attn_z``, metrics...)."""
    from embetter_plug._attn_arch import canonical, is_attn_part

    found = False
    for p in str(parts).split(","):
        try:
            found |= is_attn_part(canonical(p.strip()))
        except ValueError:  # the encoder reports a bad part
            continue
    return found


def pattern_text(texts: list[str], choice, parts: str, data: str | None) -> str | None:
    """The text whose pattern the report shows: row ``choice``; with ``auto`` the first row
    when ``parts`` read attention heads; ``None`` for none. Checked before any model loads."""
    if choice == "none" or (choice == "auto" and not reads_heads(parts)):
        return None
    row = 0 if choice == "auto" else choice
    if row >= len(texts):
        raise ValueError(f"--pattern-text {row}: {data or 'the built-in data'} has "
                         f"{len(texts)} rows (0..{len(texts) - 1}).")
    return texts[row]


def pattern_of(enc, text, label: str):
    """The :class:`~embetter_plug.attention.AttentionPattern` of ``text`` (or of an image+text
    sample, its image tokens grouped per run: :meth:`AttentionPattern.grouped`) in the layers
    ``enc`` reads (its first :data:`PATTERN_MAX_TOKENS` entries), or ``None`` with a note when
    the model cannot give one (an attention implementation without patterns, no readable
    heads)."""
    from embetter_plug._mm_batching import image_token_ids
    from embetter_plug.attention import attention_patterns

    sample = not isinstance(text, str)
    try:
        pat = attention_patterns(enc, None, [text], layers=list(enc.layer_indices_),
                                 max_length=(enc.max_length_ if sample else
                                             min(enc.max_length_, PATTERN_MAX_TOKENS)),
                                 batch_size=1)[0]
    except (ValueError, MemoryError) as exc:
        print(f"{label}: no attention pattern in the report: {exc}", flush=True)
        return None
    if not sample:
        return pat
    tok = enc.processor_.tokenizer
    pat = pat.grouped(tok.convert_ids_to_tokens(image_token_ids(enc.model_, enc.processor_)))
    if len(pat.tokens) > PATTERN_MAX_TOKENS:
        n = PATTERN_MAX_TOKENS
        pat = type(pat)(pat.text, pat.tokens[:n], pat.layers, pat.heads,
                        pat.pattern[..., :n, :n])
    return pat


def image_attention_of(enc, sample, label: str):
    """Where on the picture the sample's text looks (the mean over its text tokens), or
    ``None`` with a note where the model's image tokens cannot be laid out on the picture."""
    from embetter_plug.image_attention import image_attention

    try:
        return image_attention(enc, sample=sample, layers=list(enc.layer_indices_))
    except (ValueError, MemoryError) as exc:
        print(f"{label}: no attention on the picture in the report: {exc}", flush=True)
        return None
