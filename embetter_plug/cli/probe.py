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
`--label-col coarse,fine` probes several label columns on one extraction (a table each, a
column of panels each in probe.png, the reports side by side; the saved pipeline predicts the
first); `--image-dir DIR` reads a labelled image folder (one sub-folder per class, with
`--hierarchy` a label column per level) instead of a CSV.

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

from ._data import (HelpFormatter, add_image_dir_arguments, add_progress_arguments, int_at_least,
                    positive_int)
from ._probe_data import AUTO_MAX_CLASSES, read_targets as _read
from .._pages import display_name
from ._runs import InterruptNote, open_hint, prepare_out
from ._heads import PATTERN_MAX_TOKENS, image_attention_of, pattern_of, pattern_row
from .extract import add_encoder_arguments, add_image_argument, encoder_from_args

DEFAULT_PARTS = "resid_post,attn_out,mlp_out"
BUILTIN_MODEL = "all-MiniLM-L6-v2"
OUTPUTS = ("results.csv", "best_pipeline.joblib", "best_pipeline", "probe.png", "report.html",
           "best_pipeline_no_signal.joblib", "best_pipeline_no_signal")
#: the saved best pipeline's name when no probe beats chance: the warning is in the file's name
NO_SIGNAL_PIPELINE = "best_pipeline_no_signal"
TABLE_METRICS = {"classification": ["accuracy", "f1", "roc_auc"],
                 "regression": ["mse", "r2", "spearman"]}


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__,
                                   formatter_class=HelpFormatter, conflict_handler="resolve")
    parser.add_argument("--data", default=None, help="CSV file (default: the built-in data set)")
    parser.add_argument("--text-col", default="text", help="column of texts")
    add_image_argument(parser)
    add_image_dir_arguments(parser)
    parser.add_argument("--label-col", default="label",
                        help="column of labels (or numbers); several separated by commas (e.g. "
                             "coarse,fine) are probed on one extraction, a table and plot each")
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
    return display_name(Path(model).name if Path(model).exists() else str(model))


def _with_pooling(results, enc):
    """Split ``part@pooling`` names into a ``pooling`` column (dummy rows get ``-``)."""
    from embetter_plug.layout import PartName
    from embetter_plug.probe import ProbeResults
    from embetter_plug.probe.results import ANY, DUMMY

    frame = results.frame_.copy()
    single = enc.layout_.meta["token_pooling"]
    names = [PartName.parse(p) for p in frame["part"]]
    frame["part"] = [str(n.without_pooling()) for n in names]
    frame.insert(0, "pooling", [single[0] if n.pooling is None else n.pooling for n in names])
    frame.loc[frame["part"] == DUMMY, "pooling"] = ANY
    return ProbeResults(frame, task=results.task)


def _check_out(args) -> Path:
    """Create ``--out`` before any model loads; refuse a file, or an earlier run's files."""
    return prepare_out(args.out, "probe", OUTPUTS, overwrite=args.overwrite)


def run(args) -> int:
    from embetter_plug.probe import ProbeResults, probe_layers
    from embetter_plug.probe.offline import make_splits
    from embetter_plug.probe.results import NO_BETTER

    out = _check_out(args)
    cache = (f"; the activations computed so far are kept in the cache {args.cache!r}, so it "
             "computes only the rest" if args.cache else
             " (it starts over: pass --cache DIR to keep activations across runs)")
    args.on_interrupt = note = InterruptNote("nothing was written yet",
                                             "run the same command again" + cache)
    texts, targets, dataset = _read(args)
    for y, task in targets.values():  # a bad --cv fails here, before any extraction
        make_splits(args.cv, None, y, None, task, None)
    first = next(iter(targets))  # the saved pipeline predicts the first label column
    poolings = ",".join(args.token_pooling or ["auto"])
    models = args.model or [None]
    labels = [_model_label(m) for m in models]
    if len(set(labels)) != len(labels):
        labels = [str(m) if m is not None else BUILTIN_MODEL for m in models]
    all_results = {col: [] for col in targets}
    encoders, best_slices, patterns = {}, {}, {}
    picture = None  # where on the pattern sample's picture its text looks (first model)
    for model, label in zip(models, labels):
        ns = argparse.Namespace(**{**vars(args), "model": model, "token_pooling": poolings})
        enc = encoder_from_args(ns)
        print(f"{label}: loading the model, then encoding {len(texts)} texts", flush=True)
        X = enc.fit(texts).transform(texts)  # once, for every label column
        if args.pattern is not None:
            pattern = pattern_of(enc, args.pattern, label)
            if pattern is not None:
                patterns[label] = pattern
            if not isinstance(args.pattern, str) and picture is None:
                picture = image_attention_of(enc, args.pattern, label)
            if not isinstance(args.pattern, str) and picture is None:
                picture = image_attention_of(enc, args.pattern, label)
        print(f"{label}: activations {X.shape} (text, layer, part, hidden); probing "
              f"{X.shape[1] * X.shape[2]} layer x part slices with {args.cv}-fold CV"
              + (f" for each of {list(targets)}" if len(targets) > 1 else ""), flush=True)
        for col, (y, task) in targets.items():
            with warnings.catch_warnings():  # the summary says it once, for all models
                warnings.filterwarnings("ignore", message=NO_BETTER)
                res = probe_layers(X, y, _estimator(args, task), cv=args.cv,
                                   layout=enc.layout_, task=task, n_jobs=args.n_jobs,
                                   verbose=args.progress, n_permutations=args.permutations,
                                   control=args.control, mdl=args.mdl, random_state=args.seed)
            if col == first:  # keep this model's best slice: the saved pipeline's probe
                layer, part = res.best_
                best_slices[label] = (layer, part, X[:, enc.layout_.layers.index(layer),
                                                    enc.layout_.parts.index(part)].copy())
            all_results[col].append(_with_pooling(res, enc).with_context(model=label))
        del X
        encoders[label] = ns
        out.mkdir(parents=True, exist_ok=True)  # an interrupted run keeps the finished models
        by_target = {c: ProbeResults.concat(r).with_context(dataset=dataset)
                     for c, r in all_results.items()}
        _tidy(by_target).to_csv(out / "results.csv")
        note.kept = f"{out / 'results.csv'} with the probes of {list(encoders)}"
        if args.out:  # the same command finds that file
            note.resume = "run the same command again with --overwrite" + cache
    from ._heads import report_heads

    for col, results in by_target.items():
        if len(targets) > 1:
            print(f"--label-col {col!r}:")
        _print_table(results, targets[col][1])
    report_heads(by_target[first], out)  # per-head parts: a layer x head table (and heads.png)
    _write_outputs(by_target, out, args, encoders, best_slices, texts, targets, patterns,
                   picture)
    return 0


def _tidy(by_target: dict):
    """One results table: a single label column's as it is, several with a ``target`` column."""
    from embetter_plug.probe import ProbeResults

    if len(by_target) == 1:
        return next(iter(by_target.values()))
    return ProbeResults.concat([r.with_context(target=c) for c, r in by_target.items()])


def _print_table(results, task: str) -> None:
    """The table (best ``*``, within noise of it ``~``), the ``best:`` line, the nested-CV line;
    on no signal the warning comes first."""
    verdict = results.verdict()
    if not verdict["beats_chance"]:
        print(f"warning: {verdict['message']}")
    metrics = [m for m in TABLE_METRICS[task] if m in results.metrics]
    table = results.table(metrics)
    fixed = [c for c in results.context if table[c].nunique() == 1]
    print("; ".join(f"{c}: {table[c].iloc[0]}" for c in fixed))
    print(table.drop(columns=fixed).to_string(index=False))
    best = results.best()
    where = ", ".join(f"{c}={best[c]}" for c in results.context if c not in fixed)
    print(f"best: layer {best['layer']} {best['part']}{' (' + where + ')' if where else ''} "
          f"{best['metric']} {best['mean']:.3f} ± {best['std']:.3f}; {_near_best_words(results)}")
    sf = results.selection_free()
    if sf is not None:
        print(f"best probe's {sf['metric']} on rows that did not choose it (nested CV): "
              f"{sf['mean']:.3f} [{sf['confidence']:.0%} CI {sf['low']:.3f}, {sf['high']:.3f}]; "
              "the best's own score above is chosen on its folds, so optimistic")


def _near_best_words(results, alpha: float = 0.05) -> str:
    """``"layers 2-4, all parts, are within noise of the best (~ ...)"``."""
    from embetter_plug.probe.results import DUMMY
    from embetter_plug.probe.stats import describe_probes

    near = results.near_best(alpha=alpha)
    rows = near[near["near_best"]]
    how = "a paired comparison over the same folds cannot tell them apart"
    if len(rows) <= 1:
        return (f"no other probe is within noise of it (each scores lower on the same folds, "
                f"p < {alpha})")
    parts = list(dict.fromkeys(results.frame_.loc[results.frame_["part"] != DUMMY, "part"]))
    context = [c for c in results.context if near[c].nunique() > 1]
    apart = near[~near["near_best"]]
    if 0 < len(apart) < len(rows) - 1:  # shorter to name the few that stand apart
        words = " and ".join(describe_probes(apart, context, parts).rsplit("; ", 1))
        return (f"all probes but {words} are within noise of the best (marked ~: {how}, "
                f"p >= {alpha})")
    return (f"{describe_probes(rows, context, parts)}, are within noise of the best "
            f"(marked ~: {how}, p >= {alpha})")


def _write_outputs(by_target: dict, out: Path, args, encoders, best_slices, texts, targets,
                   patterns, picture=None) -> None:
    import shutil

    import joblib
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    from embetter_plug import LayerPooler, save_model

    _tidy(by_target).to_csv(out / "results.csv")
    first = next(iter(by_target))
    results, (y, task) = by_target[first], targets[first]
    estimator = _estimator(args, task)
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
    signal = results.verdict()["beats_chance"]  # the saved pipeline's label column
    name = "best_pipeline" if signal else NO_SIGNAL_PIPELINE  # a noise probe says so in its name
    other = NO_SIGNAL_PIPELINE if signal else "best_pipeline"
    for stale in (out / f"{other}.joblib", out / other):  # an --overwrite of the other kind
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    joblib.dump(pipe, out / f"{name}.joblib")
    save_model(pipe, out / name)  # the same, readable without pickle
    _plot(by_target, out / "probe.png")
    from embetter_plug.probe import write_report

    write_report(by_target if len(by_target) > 1 else results, out / "report.html",
                 title=f"Probes on {results.frame_['dataset'].iloc[0]}",
                 patterns=patterns or None, image_attention=picture)
    target = f" for --label-col {first!r}" if len(by_target) > 1 else ""
    noise = "" if signal else " (no probe beats chance: this one is noise, see the warning)"
    print(f"wrote {out}{os.sep}: results.csv, probe.png, report.html and {name}.joblib{target} "
          f"(layer {best['layer']} {best['part']}, pooling {best['pooling']}, refitted on all "
          f"{len(texts)} rows{noise}; the folder {name} is the same for "
          f"embetter_plug.load_model, without pickle)\n{open_hint(out / 'report.html')}")


def _plot(by_target: dict, path: Path) -> None:
    """Write :func:`probe_figure` of ``by_target`` to ``path``."""
    fig = probe_figure(by_target)
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def probe_figure(by_target, signal: bool | None = None):
    """One panel per (model, pooling): the primary metric against layer, a line per part; one
    column of panels per label column when there are several. A label column where no probe
    beats chance (or ``signal=False``) carries a "no signal" mark on each panel and in the title.

    ``by_target``: ``{label column: ProbeResults}``, or one ``ProbeResults``."""
    from embetter_plug.probe import ProbeResults

    if isinstance(by_target, ProbeResults):
        by_target = {"": by_target}
    signals = {c: (r.verdict()["beats_chance"] if signal is None else signal)
               for c, r in by_target.items()}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embetter_plug import LayerMetricDisplay
    from embetter_plug.probe.results import DUMMY

    some = next(iter(by_target.values())).frame_
    probes = some[some["part"] != DUMMY]
    panels = list(dict.fromkeys(zip(probes["model"], probes["pooling"])))
    several = len(by_target) > 1
    # one label: a grid of up to 3 columns; several: a column per label, side by side
    ncols = len(by_target) if several else min(3, len(panels))
    nrows = len(panels) if several else -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False,
                             sharey="col" if several else True)
    for t, (col, results) in enumerate(by_target.items()):
        cells = axes[:, t] if several else axes.ravel()
        for ax, (model, pooling) in zip(cells, panels):
            LayerMetricDisplay.from_results(results, results.primary_metric,
                                            where={"model": model, "pooling": pooling}, ax=ax)
            name = f"{col}: " if several else ""
            ax.set_title(f"{name}{model}, {pooling} pooling", fontsize="medium")
            if not signals[col]:
                ax.text(0.5, 0.5, "no signal", transform=ax.transAxes, ha="center",
                        va="center", fontsize=28, color="#b00", alpha=0.35, rotation=20,
                        fontweight="bold", zorder=10)
        for ax in cells[len(panels):]:
            ax.set_visible(False)
    metrics = sorted({r.primary_metric for r in by_target.values()})
    title = (f"{some['dataset'].iloc[0]}: probe {', '.join(metrics)} by layer"
             + (f" for {', '.join(by_target)}" if several else ""))
    noise = [c for c, ok in signals.items() if not ok]
    if noise:
        what = f" for {', '.join(noise)}" if several else ""
        title = f"NO SIGNAL{what} (no probe beats chance) - {title}"
    fig.suptitle(title, color="#b00" if noise else "black")
    fig.tight_layout()
    return fig
