"""Per-head probes as layer x head tables and heatmaps (the command line and the report)."""

from __future__ import annotations

import base64
import io

__all__ = ["head_tables", "heatmap_figure", "heatmap_png"]


def _per_head_parts(frame) -> list[str]:
    from ..arch.heads import split_head

    return sorted({split_head(p)[0] for p in frame["part"] if split_head(p)[1] is not None})


def head_tables(results) -> dict:
    """``{"<part> <context>": layer x head table}`` of the primary metric for each per-head part
    of ``results`` (a :class:`~embetter_plug.ProbeResults`); empty without per-head parts."""
    from ..arch.heads import split_head
    from ..attention.patterns import head_scores

    summary = results.summary()
    tables = {}
    for base in _per_head_parts(summary):
        rows = summary[summary["part"].map(lambda p: split_head(p)[0] == base)]
        for ctx, group in (rows.groupby(results.context, sort=False) if results.context
                           else [((), rows)]):
            label = " ".join(map(str, ctx if isinstance(ctx, tuple) else (ctx,)))
            tables[f"{base} {label}".strip()] = head_scores(group, results.primary_metric)
    return tables


def heatmap_figure(tables: dict, value: str):
    """One layer x head heatmap per table, stacked (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..attention.patterns import plot_head_heatmap

    width = max(5.0, 2 + 0.5 * max(t.shape[1] for t in tables.values()))
    fig, axes = plt.subplots(len(tables), 1, squeeze=False,
                             figsize=(width, 1.5 + 2.2 * len(tables)))
    for ax, (name, table) in zip(axes[:, 0], tables.items()):
        plot_head_heatmap(table, title=f"{name}: {value}", ax=ax)
    fig.tight_layout()
    return fig


def heatmap_png(tables: dict, value: str) -> str:
    """:func:`heatmap_figure` as a ``data:image/png;base64,...`` address."""
    import matplotlib.pyplot as plt

    fig = heatmap_figure(tables, value)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
