"""Shared pieces of the subcommands: integer option types, reading a CSV, checking its cells.

Errors name the option and the CSV line (the header is line 1, the first data row line 2), so
a user can find the cell in an editor or a spreadsheet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._utils import format_positions

BUILTIN = "the built-in data"


def int_at_least(minimum: int):
    """An argparse ``type``: an int >= ``minimum`` (argparse names the option in its error)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer; use an integer >= {minimum}.") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {number}.")
        return number

    parse.__name__ = f"integer >= {minimum}"  # argparse shows this for unparsable values
    return parse


positive_int = int_at_least(1)


def add_progress_arguments(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--quiet``: bars by default when stderr is a terminal."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--progress", action="store_true", default=None,
                   help="show progress bars even when stderr is not a terminal (by default "
                        "they show on a terminal)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def show_progress(args) -> bool:
    """Whether this run shows progress bars: ``--progress``, else not ``--quiet`` on a terminal."""
    import sys

    if getattr(args, "quiet", False):
        return False
    if getattr(args, "progress", None):
        return True
    return hasattr(args, "quiet") and sys.stderr.isatty()


def read_csv(path: str | None):
    """``(frame, name)`` of a CSV read with ``keep_default_na=False`` (the built-in data when None).

    The frame keeps its default index, so ``where(frame.index, path)`` names the file's lines.
    """
    import pandas as pd

    if path is None:
        from embetter_plug import load_builtin_dataset

        return load_builtin_dataset(), "new_dataset"
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--data {path!r} does not exist.")
    if p.is_dir():
        raise ValueError(f"--data {path!r} is a folder; give a CSV file.")
    try:
        df = pd.read_csv(p, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"--data {path!r} is empty; give a CSV file with a header line (the "
                         "column names) and one row per sample.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"--data {path!r} cannot be read as a comma-separated CSV file "
                         f"({_first_line(exc)}){_delimiter_hint(p)}.") from None
    if not isinstance(df.index, pd.RangeIndex):  # pandas made the extra fields an index
        raise ValueError(f"--data {path!r}: rows have more fields than the header line's "
                         f"{len(df.columns)} column names ({list(df.columns)}); put cells that "
                         "hold commas in double quotes, or name every column in the header.")
    if df.empty:
        raise ValueError(f"--data {path!r} holds a header line ({list(df.columns)}) but no rows; "
                         "add one row per sample.")
    if len(df.columns) == 1:
        hint = _delimiter_hint(p)
        if hint:
            raise ValueError(f"--data {path!r} has a single column {df.columns[0]!r}{hint}.")
    from embetter_plug._pages import display_name

    return df, display_name(p.stem)  # written in pages, CSVs


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _delimiter_hint(path: Path) -> str:
    """``"; it looks tab-separated: ..."`` when the first line splits on another delimiter."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.readline()
    except OSError:
        return ""
    for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe")):
        if head.count(sep) > head.count(","):
            return (f"; its header line looks {name}-separated: save it with commas (for "
                    "example pandas' df.to_csv(path, index=False))")
    return ""


def check_columns(df, path: str | None, **columns: str) -> None:
    """Each ``option=column`` (e.g. ``text_col="text"``) must be a column of ``df``."""
    for opt, col in columns.items():
        if col not in df.columns:
            raise KeyError(f"--{opt.replace('_', '-')} {col!r} is not a column of {path or BUILTIN}; "
                           f"columns are {list(df.columns)}.")


def where(index, path: str | None) -> str:
    """``CSV line(s) [..]`` for row labels of a frame read by :func:`read_csv`."""
    idx = [int(i) for i in index]
    if path is None:
        return f"row(s) {format_positions(idx)} of {BUILTIN}"
    return f"{path!r} line(s) {format_positions([i + 2 for i in idx])} (the header is line 1)"


def check_cells(df, path: str | None, opt: str, col: str, what: str) -> None:
    """Refuse empty, whitespace-only or missing cells of ``col`` (read as ``""``), by CSV line."""
    values = df[col]
    blank = values.map(lambda v: v is None or (isinstance(v, str) and not v.strip())
                       or (isinstance(v, float) and v != v))
    if blank.any():
        raise ValueError(
            f"{opt} {col!r} has {int(blank.sum())} empty {what} at {where(df.index[blank], path)}; "
            f"remove those rows or fill them."
        )


def read_samples(df, path: str | None, text_col: str, image_col: str) -> list:
    """Image+text samples of a frame: ``image_col`` holds image paths (relative ones are read
    from the CSV's folder; an empty cell is a sample without an image), ``text_col`` the texts
    (optional: without that column the images stand alone). Missing files name their CSV line."""
    from embetter_plug.inputs.samples import check_inputs

    check_columns(df, path, image_col=image_col)
    base = Path(path).resolve().parent if path else Path.cwd()
    texts = df[text_col].tolist() if text_col in df.columns else [None] * len(df)
    rows = []
    for label, text, cell in zip(df.index, texts, df[image_col].tolist()):
        image = None
        if isinstance(cell, str) and cell.strip():
            image = Path(cell.strip()).expanduser()
            image = image if image.is_absolute() else base / image
            if not image.is_file():
                raise FileNotFoundError(
                    f"--image-col {image_col!r}: no image file {cell!r} at {where([label], path)} "
                    f"(relative paths are read from the CSV's folder, {str(base)!r}).")
        text = text if isinstance(text, str) and text.strip() else None
        if text is None and image is None:
            raise ValueError(f"{where([label], path)} has neither a text nor an image; remove "
                             "the row or fill it.")
        rows.append({"text": text, "image": image})
    labels = list(df.index)
    return check_inputs(rows, name="--data", where=lambda i: where([labels[i]], path))


def select_split(df, split: str | None, path: str | None):
    """Rows whose ``split`` column equals ``split`` (all rows when None); errors list the values."""
    if split is None:
        return df
    if "split" not in df.columns:
        raise KeyError(f"--split {split!r} needs a 'split' column; columns are {list(df.columns)}.")
    kept = df[df["split"].astype(str) == split]
    if kept.empty:
        values = sorted(map(str, df["split"].unique()))
        raise ValueError(f"--split {split!r} matches no rows of {path or BUILTIN}; "
                         f"values in 'split' are {values}.")
    return kept


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help with the description as written and each option's default (unless None or False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def add_image_dir_arguments(parser: argparse.ArgumentParser) -> None:
    """``--image-dir``, ``--prompt``, ``--hierarchy``: a labelled image folder instead of a CSV."""
    g = parser.add_argument_group("labelled image folder (instead of --data)")
    g.add_argument("--image-dir", default=None, metavar="DIR",
                   help="one sub-folder of images per class (DIR/<class>/<file>, the layout of "
                        "torchvision's ImageFolder); labels are the folder names, column 'label'")
    g.add_argument("--prompt", default=None, metavar="TEXT",
                   help="the text that goes with every image of --image-dir (a VLM's question); "
                        "without it the images stand alone")
    g.add_argument("--hierarchy", default=None, metavar="FILE",
                   help="label hierarchy for --image-dir: a CSV with columns label,parent or a "
                        "JSON tree; adds label columns level_1 (the top) ... down to the "
                        "folders' parents")


def read_image_dir(args):
    """``(samples, labels)`` of ``--image-dir`` (:func:`embetter_plug.read_image_folder`), every
    file checked before a model loads; options that read a CSV are refused with it."""
    from embetter_plug.inputs.image_folder import read_image_folder

    if args.image_dir is None:
        for opt in ("prompt", "hierarchy"):
            if getattr(args, opt, None) is not None:
                raise ValueError(f"--{opt} applies to --image-dir; give --image-dir DIR too.")
        return None
    given = [f"--{o.replace('_', '-')}" for o in ("data", "image_col", "split")
             if getattr(args, o, None) is not None]
    if given:
        raise ValueError(f"--image-dir reads its samples and labels from the folder; drop "
                         f"{', '.join(given)} (for a split, point --image-dir at its folder, "
                         "e.g. train/).")
    samples, labels = read_image_folder(args.image_dir, prompt=args.prompt,
                                        hierarchy=args.hierarchy)
    limit = getattr(args, "limit", None)
    if limit is not None:
        samples, labels = samples[:limit], labels.iloc[:limit]
    return samples, labels
