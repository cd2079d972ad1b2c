"""`embetter-plug probe`: where in the model is the signal for your labels?

Reads a CSV (the built-in data set by default), extracts activations for every layer x part with
each `--model` (the built-in all-MiniLM-L6-v2 by default) and every `--token-pooling`, fits a
cross-validated probe (standardised logistic regression) per layer x part plus a dummy baseline,
and prints mean ± std of accuracy, macro-F1 and ROC-AUC. The best probe, marked `*`, has the
highest ROC-AUC (ties broken by macro-F1, then balanced accuracy, MCC and accuracy; R² for
numeric labels). Its score is chosen on the same folds, so optimistic: the line after it gives
the best probe's score from nested cross-validation (each fold scored by the probe that the other
folds chose), with a 95% interval; a warning says when that does not beat the dummy baseline
(or, with `--permutations`, when no probe's Holm-corrected permutation p-value is below 0.05).
`--control` adds selectivity (Hewitt & Liang) and `--mdl` MDL compression (Voita & Titov).

It writes its results to a new folder `embetter-plug-runs/probe-<date>-<time>` (or to
`--out DIR`) and prints its path: `results.csv` (tidy: dataset, model, pooling, layer, part,
metric, fold, score; rewritten after each model, so an interrupted run keeps the finished
ones), `probe.png`, `report.html` (interactive, self-contained: open it in a browser) and
`best_pipeline.joblib` (the best encoder + probe refitted on all rows; load it with
`joblib.load`, only from sources you trust), and the same as the folder `best_pipeline`, which
`embetter_plug.load_model` reads without pickle. With attention parts in `--parts` (or
`--pattern-text ROW`), the report also shows one text's attention pattern, per layer and head.
A DIR holding an earlier run's files is refused unless `--overwrite`. Progress bars show on a
terminal; `--quiet` turns them off.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

from ._data import (HelpFormatter, add_progress_arguments, check_cells, check_columns, read_samples,
                    int_at_least, positive_int, read_csv, where)
from ._runs import InterruptNote, new_run_folder, open_hint
from ._heads import (PATTERN_MAX_TOKENS, image_attention_of, pattern_of, pattern_row,
                     pattern_text)
from .extract import add_encoder_arguments, add_image_argument, encoder_from_args

DEFAULT_PARTS = "resid_post,attn_out,mlp_out"
BUILTIN_MODEL = "all-MiniLM-L6-v2"
OUTPUTS = ("results.csv", "best_pipeline.joblib", "best_pipeline", "probe.png", "report.html")
#: --task auto: numbers with more distinct values than this are a regression target
AUTO_MAX_CLASSES = 20
TABLE_METRICS = {"classification": ["accuracy", "f1", "roc_auc"],
                 "regression": ["mse", "r2", "spearman"]}


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__,
                                   formatter_class=HelpFormatter, conflict_handler="resolve")
    parser.add_argument("--data", default=None, help="CSV file (default: the built-in data set)")
    parser.add_argument("--text-col", default="text", help="column of texts")
    add_image_argument(parser)
    parser.add_argument("--label-col", default="label", help="column of labels (or numbers)")
    parser.add_argument("--name", default=None,
                        help="data set name in the results (default: the CSV's file name)")
    parser.add_argument("--max-samples", type=positive_int, default=None,
                        help="probe a stratified random subsample of this many rows")
    parser.add_argument("--cv", type=int_at_least(2), default=5,
                        help="number of cross-validation folds")
    parser.add_argument("--task", default="auto", choices=["auto", "classification", "regression"],
                        help=f"auto: numbers with more than {AUTO_MAX_CLASSES} distinct values, "
                             "or with fractions, are regression; the rest labels")
    parser.add_argument("--probe", default="logistic", choices=["logistic", "lda"],
                        help="probe model for labels: standardised logistic regression or "
                             "shrinkage LDA (numbers always use ridge regression)")
    parser.add_argument("--n-jobs", type=int, default=None, help="probes fitted in parallel")
    parser.add_argument("--seed", type=int, default=0, help="seed for --max-samples")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write results.csv, probe.png, report.html and best_pipeline.joblib "
                             "here (default: a new folder embetter-plug-runs/probe-<date>-<time>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier run in --out")
    add_progress_arguments(parser)
    parser.add_argument("--permutations", type=int_at_least(0), default=0, metavar="N",
                        help="permutation test per probe with N label permutations; p-values "
                             "Holm-corrected over the probes (N >= 20 x probes to reach 0.05)")
    parser.add_argument("--control", action="store_true",
                        help="probe a control task (a random label per text) too, and report "
                             "selectivity: task minus control score")
    parser.add_argument("--mdl", action="store_true",
                        help="report each probe's MDL (online code) compression (labels only)")
    parser.add_argument("--pattern-text", type=pattern_row, default="auto",
                        metavar="ROW|auto|none",
                        help="show one text's attention pattern in report.html (tokens on both "
                             "axes, a layer and head selector; one more forward pass of that "
                             f"text, cut to {PATTERN_MAX_TOKENS} tokens): the text in data row "
                             "ROW (0 is the first); auto: the first row when --parts reads "
                             "attention heads (attn_*); none: no pattern")
    add_encoder_arguments(parser)
    # several models and poolings in one run ("resolve" replaces the single-value options)
    parser.add_argument("--model", action="append", default=None,
                        help="hub name or local folder; repeat for several models "
                             "(default: the built-in all-MiniLM-L6-v2)")
    parser.add_argument("--token-pooling", action="append", default=None,
                        help="auto, lasttoken, mean, max, min, cls or a float in [0, 1]; repeat "
                             "(or separate with commas) for several, all from one forward pass "
                             "(default: auto)")
    parser.set_defaults(run=run, parts=DEFAULT_PARTS)
    return parser


def _read(args):
    """``(texts, y, dataset name, task)``, every cell and class count checked before extraction."""
    import numpy as np

    from embetter_plug.probe._metrics import detect_task, plain

    df, name = read_csv(args.data)
    image_col = getattr(args, "image_col", None)
    if image_col is None:
        check_columns(df, args.data, text_col=args.text_col, label_col=args.label_col)
        df = df[[args.text_col, args.label_col]]
        check_cells(df, args.data, "--text-col", args.text_col, "text(s)")
        args.pattern = pattern_text(df[args.text_col].tolist(), args.pattern_text, args.parts,
                                    args.data)
    else:  # image+text samples: the text column is optional
        check_columns(df, args.data, image_col=image_col, label_col=args.label_col)
        df = df[[c for c in (args.text_col, image_col, args.label_col) if c in df.columns]]
        row = pattern_text(list(range(len(df))), args.pattern_text, args.parts, args.data)
        args.pattern = (None if row is None else
                        read_samples(df.iloc[[row]], args.data, args.text_col, image_col)[0])
    check_cells(df, args.data, "--label-col", args.label_col, "label(s)")
    values = df[args.label_col].unique()
    if len(values) < 2:
        raise ValueError(f"--label-col {args.label_col!r} holds a single class "
                         f"({plain(values[0])!r}) in {args.data or 'the built-in data'}; a probe "
                         "needs at least two classes, or numbers that vary.")
    task, y = detect_task(df[args.label_col].to_numpy(), args.task, max_classes=AUTO_MAX_CLASSES)
    if args.task == "auto" and task == "regression":
        print(f"--task auto: --label-col {args.label_col!r} holds {len(np.unique(y))} distinct "
              "numbers, probed as regression (pass --task classification to treat them as "
              "classes)", flush=True)
    _check_class_counts(df, y, task, args)
    if args.max_samples is not None and args.max_samples < len(df):
        from sklearn.model_selection import train_test_split

        labels = df[args.label_col]
        strat = labels if task == "classification" else None
        df, _ = train_test_split(df, train_size=args.max_samples, stratify=strat,
                                 random_state=args.seed)
        task, y = detect_task(df[args.label_col].to_numpy(), task)
        _check_class_counts(df, y, task, args, f" in the --max-samples {args.max_samples} subsample")
    inputs = (df[args.text_col].tolist() if image_col is None
              else read_samples(df, args.data, args.text_col, image_col))
    return inputs, np.asarray(y), args.name or name, task


def _check_class_counts(df, y, task: str, args, scope: str = "") -> None:
    """Every label needs at least ``--cv`` rows, or a fold's scorer cannot work."""
    import numpy as np

    from embetter_plug.probe.offline import class_count_error

    if task != "classification":
        return
    message = class_count_error(y, args.cv, f"--cv {args.cv}")
    if message:
        rare = df.index[np.isin(y, [v for v, n in zip(*np.unique(y, return_counts=True))
                                    if n < args.cv])]
        numbers = " (or --task regression for numbers)" if y.dtype.kind in "biuf" else ""
        raise ValueError(f"{message}{scope} (at {where(rare, args.data)}); use a smaller "
                         f"--cv{numbers}, or drop or merge those classes.")


def _estimator(args, task: str):
    from embetter_plug.probe import default_probe

    if task == "classification" and args.probe == "lda":
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"))
    return default_probe(task)


def _model_label(model) -> str:
    if model is None:
        return BUILTIN_MODEL
    return Path(model).name if Path(model).exists() else str(model)


def _with_pooling(results, enc):
    """Split ``part@pooling`` names into a ``pooling`` column (dummy rows get ``-``)."""
    from embetter_plug.probe import ProbeResults
    from embetter_plug.probe.results import ANY, DUMMY

    frame = results.frame_.copy()
    single = enc.layout_.meta["token_pooling"]
    split = frame["part"].str.split("@", n=1)
    frame["part"] = split.str[0]
    frame.insert(0, "pooling", [s[1] if len(s) > 1 else single[0] for s in split])
    frame.loc[frame["part"] == DUMMY, "pooling"] = ANY
    return ProbeResults(frame, task=results.task)


def _check_out(args) -> Path:
    """Create ``--out`` before any model loads; refuse a file, or an earlier run's files.

    Without ``--out``: a new run folder (created when the first results are written).
    """
    if args.out is None:
        return new_run_folder("probe")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} is a file; give a folder (new or empty) for "
                         f"{', '.join(OUTPUTS)}.")
    earlier = [n for n in OUTPUTS if (out / n).exists()]
    if earlier and not args.overwrite:
        raise ValueError(f"--out {args.out!r} already holds an earlier run's {earlier}; pass "
                         "--overwrite to replace them, or choose another folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"--out {args.out!r} cannot be created: {exc.strerror or exc}.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {args.out!r} is not writable; choose another folder.")
    return out


def run(args) -> int:
    from embetter_plug.probe import ProbeResults, probe_layers
    from embetter_plug.probe.offline import _splits
    from embetter_plug.probe.results import NO_BETTER

    out = _check_out(args)
    cache = (f"; the activations computed so far are kept in the cache {args.cache!r}, so it "
             "computes only the rest" if args.cache else
             " (it starts over: pass --cache DIR to keep activations across runs)")
    args.on_interrupt = note = InterruptNote("nothing was written yet",
                                             "run the same command again" + cache)
    texts, y, dataset, task = _read(args)
    _splits(args.cv, None, y, None, task, None)  # a bad --cv fails here, before any extraction
    poolings = ",".join(args.token_pooling or ["auto"])
    models = args.model or [None]
    labels = [_model_label(m) for m in models]
    if len(set(labels)) != len(labels):
        labels = [str(m) if m is not None else BUILTIN_MODEL for m in models]
    estimator = _estimator(args, task)
    all_results, encoders, best_slices, patterns = [], {}, {}, {}
    picture = None  # where on the pattern sample's picture its text looks (first model)
    for model, label in zip(models, labels):
        ns = argparse.Namespace(**{**vars(args), "model": model, "token_pooling": poolings})
        enc = encoder_from_args(ns)
        print(f"{label}: loading the model, then encoding {len(texts)} texts", flush=True)
        X = enc.fit(texts).transform(texts)
        if args.pattern is not None:
            pattern = pattern_of(enc, args.pattern, label)
            if pattern is not None:
                patterns[label] = pattern
            if not isinstance(args.pattern, str) and picture is None:
                picture = image_attention_of(enc, args.pattern, label)
        print(f"{label}: activations {X.shape} (text, layer, part, hidden); probing "
              f"{X.shape[1] * X.shape[2]} layer x part slices with {args.cv}-fold CV", flush=True)
        with warnings.catch_warnings():  # the summary says it once, for all models
            warnings.filterwarnings("ignore", message=NO_BETTER)
            res = probe_layers(X, y, estimator, cv=args.cv, layout=enc.layout_, task=task,
                               n_jobs=args.n_jobs, verbose=args.progress,
                               n_permutations=args.permutations, control=args.control,
                               mdl=args.mdl, random_state=args.seed)
        layer, part = res.best_  # keep this model's best slice: the saved pipeline's probe
        best_slices[label] = (layer, part, X[:, enc.layout_.layers.index(layer),
                                            enc.layout_.parts.index(part)].copy())
        del X
        all_results.append(_with_pooling(res, enc).with_context(model=label))
        encoders[label] = ns
        out.mkdir(parents=True, exist_ok=True)  # an interrupted run keeps the finished models
        ProbeResults.concat(all_results).with_context(dataset=dataset).to_csv(out / "results.csv")
        note.kept = f"{out / 'results.csv'} with the probes of {list(encoders)}"
        if args.out:  # the same command finds that file
            note.resume = "run the same command again with --overwrite" + cache
    results = ProbeResults.concat(all_results).with_context(dataset=dataset)
    _print_table(results, task)
    from ._heads import report_heads

    report_heads(results, out)  # per-head parts: a layer x head table (and heads.png)
    _write_outputs(results, out, args, encoders, best_slices, texts, y, estimator, patterns,
                   picture)
    return 0


def _print_table(results, task: str) -> None:
    metrics = [m for m in TABLE_METRICS[task] if m in results.metrics]
    table = results.table(metrics)
    fixed = [c for c in results.context if table[c].nunique() == 1]
    print("; ".join(f"{c}: {table[c].iloc[0]}" for c in fixed))
    print(table.drop(columns=fixed).to_string(index=False))
    best = results.best()
    where = ", ".join(f"{c}={best[c]}" for c in results.context if c not in fixed)
    print(f"best: layer {best['layer']} {best['part']}{' (' + where + ')' if where else ''} "
          f"{best['metric']} {best['mean']:.3f} ± {best['std']:.3f}")
    sf = results.selection_free()
    if sf is not None:
        print(f"best probe's {sf['metric']} on rows that did not choose it (nested CV): "
              f"{sf['mean']:.3f} [{sf['confidence']:.0%} CI {sf['low']:.3f}, {sf['high']:.3f}]; "
              "the best's own score above is chosen on its folds, so optimistic")
    verdict = results.verdict()
    if not verdict["beats_chance"]:
        print(f"warning: {verdict['message']}")


def _write_outputs(results, out: Path, args, encoders, best_slices, texts, y, estimator,
                   patterns, picture=None) -> None:
    import joblib
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    from embetter_plug import LayerPooler, save_model

    results.to_csv(out / "results.csv")
    best = results.best()
    pooling = best["pooling"][3:] if best["pooling"].startswith("pos") else best["pooling"]
    ns = argparse.Namespace(**{**vars(encoders[best["model"]]), "layers": str(best["layer"]),
                               "parts": best["part"], "token_pooling": pooling})
    encoder, raw_part = encoder_from_args(ns), best["part"]
    if len(",".join(args.token_pooling or ["auto"]).split(",")) > 1:  # parts named part@pooling
        raw_part = f"{best['part']}@{best['pooling']}"
    layer, part, X = best_slices.get(best["model"], (None, None, None))
    if (layer, part) == (best["layer"], raw_part):  # refit on the activations already computed
        X4 = X[:, None, None, :]
        pipe = Pipeline([("encoder", encoder.fit()), ("pooler", LayerPooler().fit(X4)),
                         ("probe", clone(estimator).fit(X, y))])
    else:  # pragma: no cover - a tie ranked differently across models: run the model again
        pipe = Pipeline([("encoder", encoder), ("pooler", LayerPooler()),
                         ("probe", clone(estimator))]).fit(texts, y)
    pipe.set_params(encoder__verbose=False)  # this run's progress setting stays with this run
    joblib.dump(pipe, out / "best_pipeline.joblib")
    save_model(pipe, out / "best_pipeline")  # the same, readable without pickle
    _plot(results, out / "probe.png")
    results.to_html(out / "report.html", title=f"Probes on {results.frame_['dataset'].iloc[0]}",
                    patterns=patterns or None,
                    image_attention=picture)
    print(f"wrote {out}{os.sep}: results.csv, probe.png, report.html and best_pipeline.joblib "
          f"(layer {best['layer']} {best['part']}, pooling {best['pooling']}, refitted on all "
          f"{len(texts)} rows; the folder best_pipeline is the same for "
          f"embetter_plug.load_model, without pickle)\n{open_hint(out / 'report.html')}")


def _plot(results, path: Path) -> None:
    """One panel per (model, pooling): the primary metric against layer, a line per part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embetter_plug import LayerMetricDisplay
    from embetter_plug.probe.results import DUMMY

    metric = results.primary_metric
    probes = results.frame_[results.frame_["part"] != DUMMY]
    panels = list(dict.fromkeys(zip(probes["model"], probes["pooling"])))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False,
                             sharey=True)
    for ax, (model, pooling) in zip(axes.ravel(), panels):
        LayerMetricDisplay.from_results(results, metric, where={"model": model, "pooling": pooling},
                                        ax=ax)
        ax.set_title(f"{model}, {pooling} pooling", fontsize="medium")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{results.frame_['dataset'].iloc[0]}: probe {metric} by layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
