"""What `embetter-plug probe` reads: inputs and one or more label columns, of a CSV (texts, or
images with `--image-col`) or of a labelled image folder (`--image-dir`), every cell and class
count checked before a model loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._data import check_cells, check_columns, read_csv, read_image_dir, read_samples, where
from ._heads import pattern_text
from .._pages import display_name

#: --task auto: numbers with more distinct values than this are a regression target
AUTO_MAX_CLASSES = 20


def read_targets(args):
    """``(inputs, targets, dataset name)``, ``targets`` ``{label column: (y, task)}``; every
    cell and class count checked before extraction."""
    from embetter_plug.probe.metrics import detect_task

    label_cols = [c.strip() for c in args.label_col.split(",") if c.strip()]
    if not label_cols or len(set(label_cols)) != len(label_cols):
        raise ValueError(f"--label-col {args.label_col!r}: give one column, or several "
                         "different ones separated by commas (e.g. coarse,fine).")
    df, name, inputs_of = _frame(args, label_cols)
    for col in label_cols:
        check_cells(df, args.data, "--label-col", col, "label(s)")
    tasks = {col: _task(df, col, args) for col in label_cols}
    if args.max_samples is not None and args.max_samples < len(df):
        from sklearn.model_selection import train_test_split

        classes = [c for c in label_cols if tasks[c] == "classification"]
        strat = (None if not classes else df[classes[0]] if len(classes) == 1
                 else df[classes].astype(str).agg("|".join, axis=1))  # every label's classes
        df, _ = train_test_split(df, train_size=args.max_samples, stratify=strat,
                                 random_state=args.seed)
        for col in label_cols:
            _, y = detect_task(df[col].to_numpy(), tasks[col])
            _check_class_counts(df, y, tasks[col], args, col,
                                f" in the --max-samples {args.max_samples} subsample")
    targets = {col: detect_task(df[col].to_numpy(), tasks[col])[::-1] for col in label_cols}
    return inputs_of(df), {c: (np.asarray(y), t) for c, (y, t) in targets.items()}, \
        display_name(args.name or name)


def _frame(args, label_cols):
    """``(frame, name, inputs of rows)`` of ``--data`` or ``--image-dir``; sets ``args.pattern``."""
    image_dir = read_image_dir(args)
    if image_dir is not None:
        samples, df = image_dir
        _check_label_columns(df, args.image_dir, label_cols)
        row = pattern_text(list(range(len(df))), args.pattern_text, args.parts, args.image_dir)
        args.pattern = None if row is None else samples[row]
        return df, Path(args.image_dir).name, lambda d: [samples[i] for i in d.index]
    df, name = read_csv(args.data)
    image_col = getattr(args, "image_col", None)
    if image_col is None:
        check_columns(df, args.data, text_col=args.text_col)
        _check_label_columns(df, args.data, label_cols)
        df = df[[args.text_col, *label_cols]]
        check_cells(df, args.data, "--text-col", args.text_col, "text(s)")
        args.pattern = pattern_text(df[args.text_col].tolist(), args.pattern_text, args.parts,
                                    args.data)
        return df, name, lambda d: d[args.text_col].tolist()
    # image+text samples: the text column is optional
    check_columns(df, args.data, image_col=image_col)
    _check_label_columns(df, args.data, label_cols)
    df = df[[c for c in (args.text_col, image_col, *label_cols) if c in df.columns]]
    row = pattern_text(list(range(len(df))), args.pattern_text, args.parts, args.data)
    args.pattern = (None if row is None else
                    read_samples(df.iloc[[row]], args.data, args.text_col, image_col)[0])
    return df, name, lambda d: read_samples(d, args.data, args.text_col, image_col)


def _check_label_columns(df, source, label_cols) -> None:
    for col in label_cols:
        check_columns(df, source, label_col=col)


def _task(df, col: str, args) -> str:
    """The task of label column ``col`` (said when ``--task auto`` picks regression)."""
    from embetter_plug.probe.metrics import detect_task, plain

    values = df[col].unique()
    if len(values) < 2:
        raise ValueError(f"--label-col {col!r} holds a single class ({plain(values[0])!r}) in "
                         f"{_source(args)}; a probe needs at least two classes, or numbers that "
                         "vary.")
    task, y = detect_task(df[col].to_numpy(), args.task, max_classes=AUTO_MAX_CLASSES)
    if args.task == "auto" and task == "regression":
        print(f"--task auto: --label-col {col!r} holds {len(np.unique(y))} distinct "
              "numbers, probed as regression (pass --task classification to treat them as "
              "classes)", flush=True)
    _check_class_counts(df, y, task, args, col)
    return task


def _source(args) -> str:
    return args.image_dir or args.data or "the built-in data"


def _check_class_counts(df, y, task: str, args, col: str, scope: str = "") -> None:
    """Every label needs at least ``--cv`` rows, or a fold's scorer cannot work."""
    from embetter_plug.probe.offline import class_count_error

    if task != "classification":
        return
    message = class_count_error(y, args.cv, f"--cv {args.cv}")
    if message:
        rare = df.index[np.isin(y, [v for v, n in zip(*np.unique(y, return_counts=True))
                                    if n < args.cv])]
        numbers = " (or --task regression for numbers)" if y.dtype.kind in "biuf" else ""
        at = (f"files {df.loc[rare, 'path'].tolist()[:10]} of {args.image_dir!r}"
              if args.image_dir else where(rare, args.data))
        what = f"--label-col {col!r}: " if "," in args.label_col else ""
        raise ValueError(f"{what}{message}{scope} (at {at}); use a smaller --cv{numbers}, or "
                         "drop or merge those classes.")
