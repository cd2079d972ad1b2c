"""Per-head views for the command line: a layer x head table and heatmap per attention part."""

from __future__ import annotations

from pathlib import Path


def report_heads(results, out: Path | None) -> None:
    """Print the primary metric as a layer x head table for each per-head part of ``results``
    (a :class:`~embetter_plug.ProbeResults`); with ``out``, also draw them in ``heads.png``."""
    from embetter_plug.probe.heads import head_tables, heatmap_figure

    tables = head_tables(results)
    if not tables:
        return
    metric = results.primary_metric
    for name, table in tables.items():
        print(f"{name}: {metric} per layer (rows) x head (columns)")
        print(table.round(3).to_string())
    if out is not None:
        import matplotlib.pyplot as plt

        fig = heatmap_figure(tables, metric)
        fig.savefig(out / "heads.png", dpi=110)
        plt.close(fig)
        print(f"wrote {out / 'heads.png'}")


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
    from embetter_plug.arch.heads import canonical, is_attn_part

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
    """The :class:`~embetter_plug.attention.patterns.AttentionPattern` of ``text`` (or of an image+text
    sample, its image tokens grouped per run: :meth:`AttentionPattern.grouped`) in the layers
    ``enc`` reads (its first :data:`PATTERN_MAX_TOKENS` entries), or ``None`` with a note when
    the model cannot give one (an attention implementation without patterns, no readable
    heads)."""
    from embetter_plug.inputs.multimodal import image_token_ids
    from embetter_plug.attention.patterns import attention_patterns

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
    from embetter_plug.attention.image import image_attention

    try:
        return image_attention(enc, sample=sample, layers=list(enc.layer_indices_))
    except (ValueError, MemoryError) as exc:
        print(f"{label}: no attention on the picture in the report: {exc}", flush=True)
        return None
