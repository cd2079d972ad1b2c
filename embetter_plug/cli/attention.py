"""`embetter-plug attention`: attention metrics per layer and head for a CSV's texts.

Computes each metric (entropy, attention to the first token, mean attention distance, density,
value and head-output norms; `--metrics`) per text, layer and head on the fly, one layer's
pattern at a time, reduces it over query tokens (`--query-reduction`, default mean), and prints
the mean over texts as a layer x head table per metric. With `--out DIR` it writes
`attention_metrics.csv` (tidy: metric, layer, head, mean, std over texts) and one layer x head
heatmap per metric, `attention_<metric>.png`; a DIR holding an earlier run's files is refused
unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from ._data import HelpFormatter
from .extract import add_encoder_arguments, add_text_arguments, encoder_from_args, read_texts

METRICS_HELP = ("comma-separated attention metrics, or 'all': attn_entropy, attn_sink, "
                "attn_distance, attn_density, attn_value_norm, attn_result_norm, "
                "attn_weighted_value_norm; with --image-col also attn_image (attention to image "
                "tokens, in 'all' too)")


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__,
                                   formatter_class=HelpFormatter)
    add_text_arguments(parser)
    parser.add_argument("--metrics", default="all", help=METRICS_HELP)
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write attention_metrics.csv and attention_<metric>.png here")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier run in --out")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("--query-reduction", default=None, metavar="REDUCTION",
                        help="how each metric's per-query-token values become one value per "
                             "text: mean (default), max, lasttoken, first, 0.5, ... (the "
                             "encoder's token poolings)")
    add_encoder_arguments(parser)
    for action in parser._actions:  # the encoder's --token-pooling is this command's old name
        if action.dest == "token_pooling":
            action.help = "deprecated alias of --query-reduction"
    parser.set_defaults(run=run, token_pooling=None, parts=None)
    return parser


def query_reduction(args) -> str:
    """``--query-reduction``, or the value of its deprecated alias ``--token-pooling``."""
    if args.token_pooling is None:
        return args.query_reduction or "mean"
    if args.query_reduction is not None and args.query_reduction != args.token_pooling:
        raise ValueError(f"--query-reduction {args.query_reduction!r} and its deprecated alias "
                         f"--token-pooling {args.token_pooling!r} disagree; give "
                         "--query-reduction alone.")
    warnings.warn("`embetter-plug attention --token-pooling` was renamed --query-reduction and "
                  "will be removed in the next release; use --query-reduction "
                  f"{args.token_pooling}.", FutureWarning)
    return args.token_pooling


def run(args) -> int:
    from embetter_plug.arch.heads import METRICS, MODALITY_METRICS, validate_parts
    from embetter_plug.attention.patterns import head_scores, summarize_metrics

    reduction = query_reduction(args)
    known = list(METRICS) + (list(MODALITY_METRICS) if args.image_col else [])
    metrics = known if args.metrics == "all" else [
        m.strip() for m in args.metrics.split(",") if m.strip()]
    for m in metrics:
        if m not in known:
            validate_parts([m])  # close matches for a typo
            raise ValueError(f"--metrics {m!r} is not an attention metric; choose from "
                             f"{known} or 'all'" + ("" if args.image_col or m not in
                             MODALITY_METRICS else f" ({m} needs --image-col)") + ".")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {args.out!r} is a file; give a folder.")
        if (out / "attention_metrics.csv").exists() and not args.overwrite:
            raise ValueError(f"--out {args.out!r} already holds an earlier run's "
                             "attention_metrics.csv; pass --overwrite to replace it, or choose "
                             "another folder.")
        out.mkdir(parents=True, exist_ok=True)
    texts = read_texts(args.data, args.text_col, args.split, args.limit, args.image_col)
    enc = encoder_from_args(argparse.Namespace(**{**vars(args), "parts": ",".join(metrics),
                                                  "token_pooling": reduction}))
    frame = _frame(enc, texts)
    summary = summarize_metrics(frame)
    tables = {m: head_scores(summary, m) for m in metrics}
    for m, table in tables.items():
        print(f"{m}: mean over {len(texts)} texts, layer (rows) x head (columns)")
        print(table.round(3).to_string())
    if out is not None:
        summary.to_csv(out / "attention_metrics.csv", index=False)
        _plots(tables, out)
        print(f"wrote {out / 'attention_metrics.csv'} and {len(tables)} heatmaps in {out}")
    return 0


def _frame(enc, texts):
    """The tidy per-text frame of a metrics encoder (see ``attention_metrics``)."""
    from embetter_plug.attention.patterns import metrics_frame

    return metrics_frame(enc.fit(texts).transform(texts), enc.layout_)


def _plots(tables: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embetter_plug.attention.patterns import plot_head_heatmap

    for m, table in tables.items():
        ax = plot_head_heatmap(table, title=m)
        ax.figure.tight_layout()
        ax.figure.savefig(out / f"attention_{m}.png", dpi=110)
        plt.close(ax.figure)
