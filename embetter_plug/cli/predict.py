"""`embetter-plug predict`: apply a saved pipeline (e.g. `train`'s best_pipeline) to a CSV.

Loads the folder with `embetter_plug.load_model` (no pickle) and writes the CSV's rows with a
`prediction` column, plus one `proba_<class>` column per class where the pipeline gives
probabilities.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._data import HelpFormatter, add_progress_arguments, check_cells, check_columns, read_csv


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__,
                                   formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a folder written by save_model (train's best_pipeline)")
    parser.add_argument("--data", required=True, help="CSV file")
    parser.add_argument("--text-col", default="text", help="column of texts")
    parser.add_argument("--out", required=True, metavar="CSV", help="where to write the predictions")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_progress_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def run(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {args.out!r} exists; pass --overwrite to replace it.")
    if not (Path(args.model) / "config.json").is_file():
        raise FileNotFoundError(f"--model {args.model!r} is not a folder written by save_model "
                                "(no config.json in it).")
    df, _ = read_csv(args.data)
    check_columns(df, args.data, text_col=args.text_col)
    check_cells(df, args.data, "--text-col", args.text_col, "text(s)")
    from embetter_plug import load_model

    pipe = load_model(args.model)
    texts = df[args.text_col].astype(str).tolist()
    df = df.copy()
    df["prediction"] = pipe.predict(texts)
    if hasattr(pipe, "predict_proba"):
        for cls, col in zip(pipe.classes_, pipe.predict_proba(texts).T):
            df[f"proba_{cls}"] = col
    df.to_csv(out, index=False)
    print(f"wrote {out}: {len(df)} predictions")
    return 0
