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
