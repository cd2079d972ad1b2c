"""`embetter-plug train`: the best classifier for your labelled texts, picked by cross-validation.

Compares, on the CSV's rows only, a sentence-transformers style embedding + logistic
regression, several layers' states + scaler + logistic regression (C chosen inside),
PlugClassifier, and fine-tuning the transformer (TransformerTuner), with k-fold CV (or one
validation split when `--budget` does not allow k folds; recipes that do not fit are skipped,
and a budget too small for any is an error before training). Each recipe's cost is estimated
first from one timed forward pass over a few texts. It prints the comparison (accuracy with a
95% interval), refits the winner on all rows and writes to a new folder
`embetter-plug-runs/train-<date>-<time>` (or `--out DIR`): `results.csv`, `recipes.png`,
`best_pipeline/` (read it with `embetter_plug.load_model` or `embetter-plug predict`, no
pickle) and `progress.json` (the finished recipes' out-of-fold predictions). Interrupted with
Ctrl-C, the same command with the same `--out` runs only the recipes that did not finish.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from ._data import (HelpFormatter, add_progress_arguments, check_cells, check_columns, int_at_least,
                    read_csv)
from ._runs import InterruptNote, prepare_out

OUTPUTS = ("results.csv", "recipes.png", "best_pipeline", "progress.json")
PROGRESS = "progress.json"


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__,
                                   formatter_class=HelpFormatter)
    parser.add_argument("--data", default=None, help="CSV file (default: the built-in data set)")
    parser.add_argument("--text-col", default="text", help="column of texts")
    parser.add_argument("--label-col", default="label", help="column of labels")
    parser.add_argument("--model", default=None,
                        help="hub name or local folder (default: the built-in all-MiniLM-L6-v2)")
    parser.add_argument("--budget", type=float, default=15.0, metavar="CPU-MINUTES",
                        help="CPU time for the comparison and the refit (all threads counted); "
                             "15 suits about 1,500 short texts, and costs grow about linearly "
                             "with rows")
    parser.add_argument("--cv", type=int_at_least(2), default=5, help="cross-validation folds")
    parser.add_argument("--epochs", type=int_at_least(1), default=3,
                        help="fine-tuning epochs (at most; early stopping may stop sooner)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and the recipes")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write results.csv, recipes.png and best_pipeline/ here (default: a "
                             "new folder embetter-plug-runs/train-<date>-<time>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run's files in --out instead of resuming it")
    add_progress_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def _read(args):
    df, _ = read_csv(args.data)
    check_columns(df, args.data, text_col=args.text_col, label_col=args.label_col)
    check_cells(df, args.data, "--text-col", args.text_col, "text(s)")
    check_cells(df, args.data, "--label-col", args.label_col, "label(s)")
    texts = df[args.text_col].astype(str).tolist()
    return texts, df[args.label_col].astype(str).to_numpy()


def _fingerprint(args, texts, y) -> str:
    """What must match for an earlier run's finished recipes to be reused."""
    h = hashlib.sha256()
    for part in (texts, y.tolist(), [args.model, args.cv, args.epochs, args.seed]):
        h.update(json.dumps(part, default=str).encode())
    return h.hexdigest()


def _earlier(out: Path, fingerprint: str, overwrite: bool) -> dict:
    """Out-of-fold predictions an interrupted run with the same data and settings finished."""
    file = out / PROGRESS
    if overwrite or not file.is_file():
        return {}
    saved = json.loads(file.read_text())
    if saved.get("fingerprint") != fingerprint:
        raise ValueError(f"--out {str(out)!r} holds a run on other data or settings; pass "
                         "--overwrite to replace it, or choose another folder.")
    return saved["predictions"]


def run(args) -> int:
    import numpy as np

    from embetter_plug.recipes import select_recipe

    out = prepare_out(args.out, "train", OUTPUTS, overwrite=args.overwrite, resumable=True)
    args.on_interrupt = note = InterruptNote("nothing was written yet", "run the same command "
                                             "again (with --out DIR) to go on from there")
    texts, y = _read(args)
    fingerprint = _fingerprint(args, texts, y)
    done = _earlier(out, fingerprint, args.overwrite) if args.out else {}
    if done:
        print(f"resuming: {sorted(done)} finished in the earlier run in {out}", flush=True)

    def keep(results, predictions):
        out.mkdir(parents=True, exist_ok=True)
        results.to_csv(out / "results.csv", index=False)
        (out / PROGRESS).write_text(json.dumps({
            "fingerprint": fingerprint,
            "predictions": {k: np.asarray(v).tolist() for k, v in predictions.items()}}))
        note.kept = f"{out / 'results.csv'} with the recipes {sorted(predictions)}"
        note.resume = f"run the same command again with --out {out} to go on from there"

    print(f"comparing recipes on {len(texts)} rows, {len(set(y))} classes, budget "
          f"{args.budget:g} CPU-minutes", flush=True)
    sel = select_recipe(texts, y, model=args.model, budget=args.budget, cv=args.cv,
                        random_state=args.seed, done=done, on_scored=keep,
                        tuner_params={"max_epochs": args.epochs, "verbose": args.progress},
                        verbose=args.progress)
    how = f"{args.cv}-fold CV" if sel.scheme == "cv" else "one validation split (20% of the rows)"
    print(f"{how}; accuracy with a 95% interval; CPU seconds estimated and measured")
    print(sel.table())
    print(f"best: {sel.best} (refitted on all {len(texts)} rows); {sel.cpu_s / 60:.1f} of "
          f"{args.budget:g} CPU-minutes used")
    from embetter_plug import save_model

    sel.results.to_csv(out / "results.csv", index=False)
    save_model(sel.pipeline, out / "best_pipeline")
    _plot(sel, out / "recipes.png")
    print(f"wrote {out}: results.csv, recipes.png, best_pipeline/ (embetter-plug predict "
          f"--model {out / 'best_pipeline'} --data new.csv --out predictions.csv)")
    return 0


def _plot(sel, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = sel.results[sel.results["status"] == "scored"]
    fig, ax = plt.subplots(figsize=(6.5, 0.6 + 0.5 * len(res)))
    acc = res["accuracy"].to_numpy()
    err = [acc - res["low"].to_numpy(), res["high"].to_numpy() - acc]
    colors = ["tab:orange" if r == sel.best else "tab:blue" for r in res["recipe"]]
    ax.barh(res["recipe"], acc, xerr=err, color=colors, capsize=3)
    ax.set_xlim(max(0.0, float(res["low"].min()) - 0.05), 1.0)
    ax.set_xlabel("accuracy (95% interval)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
