"""`embetter-plug map`: a labelling map of a CSV's texts, one self-contained HTML page.

Encodes the texts (through `--cache` when given), pools the chosen layers and parts into one
vector per text (concatenated), optionally tunes that space on the labelled rows (`--tuner`),
fits a logistic regression on the labelled rows for the prediction and uncertainty colourings
(unless `--no-classifier`), projects to 2-D and writes the page: hover for the text, colour by
label, prediction or uncertainty, search, and box/lasso selection that downloads the selected
rows with a label you type (CSV or JSON). Rows with an empty label cell are unlabelled: the map
is for labelling them. The page needs no server; open it in a browser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._data import HelpFormatter, check_cells, check_columns, read_csv
from .extract import add_encoder_arguments, encoder_from_args

TUNERS = ("none", "feedforward", "contrastive")


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__,
                                   formatter_class=HelpFormatter)
    parser.add_argument("--data", default=None, help="CSV file (default: the built-in data set)")
    parser.add_argument("--text-col", default="text", help="column of texts")
    parser.add_argument("--label-col", default=None,
                        help="column of labels, empty cells for unlabelled rows (default: 'label' "
                             "when the CSV has it, else every row is unlabelled)")
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--tuner", default="none", choices=TUNERS,
                        help="tune the space on the labelled rows first (FeedForwardTuner or "
                             "ContrastiveTuner with their defaults)")
    parser.add_argument("--no-classifier", action="store_true",
                        help="colour by label only (no prediction or uncertainty colouring)")
    parser.add_argument("--projection", default="pca", choices=["pca", "tsne", "umap"],
                        help="2-D projection (umap needs the umap-learn package)")
    parser.add_argument("--title", default=None, help="page title (default: the CSV's name)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tuner and the projection")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    add_encoder_arguments(parser)
    parser.set_defaults(run=run, layers="-1")
    return parser


def _check_out(args) -> Path:
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {args.out!r} is a folder; give an HTML file name such as "
                         f"{str(out / 'map.html')!r}.")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out {args.out!r}: the folder {str(out.parent)!r} does not "
                                "exist; create it first or choose another path.")
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {args.out!r} already exists; pass --overwrite to replace it, "
                         "or choose another name.")
    return out


def _check_installed(args) -> None:
    """plotly (and umap-learn for --projection umap), as a plain error message when missing."""
    from embetter_plug.labelling.page import require_plotly

    try:
        require_plotly()
        if args.projection == "umap":
            try:
                import umap  # noqa: F401
            except ImportError:
                raise ImportError("--projection umap needs the umap-learn package: pip install "
                                  "umap-learn (or use --projection pca or tsne).") from None
    except ImportError as exc:
        raise ValueError(str(exc)) from None


def _read(args):
    """``(texts, labels or None, name)``; labels are strings, None where the cell is empty."""
    df, name = read_csv(args.data)
    label_col = args.label_col or ("label" if "label" in df.columns else None)
    check_columns(df, args.data, text_col=args.text_col,
                  **({"label_col": label_col} if label_col else {}))
    check_cells(df, args.data, "--text-col", args.text_col, "text(s)")
    texts = df[args.text_col].astype(str).tolist()
    if label_col is None:
        return texts, None, name
    labels = [None if str(v).strip() == "" else str(v) for v in df[label_col].tolist()]
    return texts, labels, name


def _check_labels_for_training(labels, args) -> list[int]:
    """Rows with a label; a tuner or classifier needs two classes among them."""
    rows = [i for i, v in enumerate(labels or []) if v is not None]
    classes = sorted({labels[i] for i in rows})
    if args.tuner != "none" and len(classes) < 2:
        raise ValueError(f"--tuner {args.tuner} trains on the labelled rows, which need at least "
                         f"2 classes; found {len(rows)} labelled row(s) with classes {classes}. "
                         "Label a few rows of each class, or use --tuner none.")
    return rows if len(classes) >= 2 else []


def run(args) -> int:
    import numpy as np

    from embetter_plug import ContrastiveTuner, FeedForwardTuner, LabellingMap, LayerPooler
    from embetter_plug._pages import display_name

    _check_installed(args)
    out = _check_out(args)
    texts, labels, name = _read(args)
    train = _check_labels_for_training(labels, args)
    enc = encoder_from_args(args).fit(texts)
    X = LayerPooler().fit_transform(enc.transform(texts))
    print(f"encoded {len(texts)} texts: {X.shape[1]} features per text "
          f"(layers {list(enc.layout_.layers)}, parts {list(enc.layout_.parts)})", flush=True)
    y = np.asarray([labels[i] for i in train], dtype=object) if train else None
    if args.tuner != "none":
        tuner = {"feedforward": FeedForwardTuner, "contrastive": ContrastiveTuner}[args.tuner]
        X = tuner(random_state=args.seed).fit(X[train], y).transform(X)
        print(f"tuned on {len(train)} labelled rows with {tuner.__name__}: {X.shape[1]} features",
              flush=True)
    kwargs = {}
    if train and not args.no_classifier:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(max_iter=1000).fit(X[train], y)
        kwargs = {"proba": clf.predict_proba(X), "classes": clf.classes_}
    m = LabellingMap.from_embeddings(X, texts, labels, projection=args.projection,
                                     random_state=args.seed, title=display_name(args.title or name),
                                     **kwargs)
    m.save(out)
    n_labelled = sum(v is not None for v in labels or [])
    print(f"wrote {out}: {len(texts)} texts ({n_labelled} labelled), {args.projection} of "
          f"{X.shape[1]} features, colour by {', '.join(m.color_modes_)}")
    return 0
