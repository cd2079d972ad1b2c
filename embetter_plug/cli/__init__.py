"""Command line: `embetter-plug probe|extract|cache ...`.

Each subcommand lives in `embetter_plug.cli.<name>` with `add_parser(subparsers)` and
`run(args) -> int`; it is imported only when used, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import warnings

SUBCOMMANDS = {
    "probe": "find where a model encodes your labels: a cross-validated probe per layer x part",
    "extract": "write the activations of a CSV's texts to disk",
    "cache": "inspect or clear the activation cache",
    "map": "a labelling map of a CSV's texts: one HTML page to search, select and export rows",
    "attention": "attention metrics per layer and head (entropy, sink, distance, norms) for a CSV",
    "train": "the best classifier for a labelled CSV: recipes compared by CV within a CPU budget",
    "predict": "apply a saved pipeline (train's best_pipeline) to a CSV",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embetter-plug",
        description="Transformer activations as scikit-learn features: probe, extract, cache.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(f"embetter_plug.cli.{name}")
        except ModuleNotFoundError:
            continue
        module.add_parser(sub, name, help_text)
    return parser


#: options whose value may be a list of negative numbers, e.g. ``--layers -2,-1``
NEGATIVE_LISTS = ("--layers", "--heads")
_NUMBERS = re.compile(r"^-\d+(\s*,\s*-?\d+)*,?$")


def negative_values(argv: list[str]) -> list[str]:
    """``--layers -2,-1`` as ``--layers=-2,-1``: argparse reads a value that starts with ``-``
    (and is not one plain number) as an option."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] in NEGATIVE_LISTS and _NUMBERS.match(out[i + 1]):
            out[i:i + 2] = [f"{out[i]}={out[i + 1]}", None]
    return [a for a in out if a is not None]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch's OpenMP threads sleep when idle instead of spinning (which burns several times the
    # CPU of the work on a busy machine); read once, when torch loads, so set before it does
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(negative_values(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 2
    from ._data import show_progress

    args.progress = show_progress(args)  # --progress, --quiet, or whether stderr is a terminal
    if not args.progress:  # no weight-loading bars either
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():
        warnings.showwarning = _warning_once()
        return _run(args)


def _warning_once():
    """``warnings.showwarning`` for the command line: ``warning: <message>`` once per message
    (Python's own form names this file's ``sys.exit(main())`` line, once per place warned)."""
    said = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text not in said:
            said.add(text)
            print(f"warning: {text}", file=sys.stderr, flush=True)

    return show


def _run(args) -> int:
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:  # the command says what it kept so far and how to resume
        note = getattr(args, "on_interrupt", None)
        print(f"\ninterrupted{': ' + str(note) if note is not None else ''}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, KeyError) as exc:
        # a KeyError's str() adds quotes around its message
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"embetter-plug {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
