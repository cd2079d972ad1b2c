"""`embetter-plug cache info|clear`: inspect or empty the activation cache.

The cache folder is `--dir`, else `$EMBETTER_PLUG_CACHE`, else `~/.cache/embetter_plug`.
"""

from __future__ import annotations

import argparse

from ._data import HelpFormatter


def add_parser(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=__doc__,
                                   formatter_class=HelpFormatter)
    parser.add_argument("action", choices=["info", "clear"],
                        help="info: entries, size and models; clear: remove every entry")
    parser.add_argument("--dir", default=None,
                        help="cache folder (default: $EMBETTER_PLUG_CACHE, else ~/.cache/embetter_plug)")
    parser.set_defaults(run=run)
    return parser


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def run(args) -> int:
    from embetter_plug.store.cache import ActivationCache

    cache = ActivationCache(args.dir)
    if args.action == "clear":
        n = cache.clear()
        print(f"removed {n} entries from {cache.path}")
        return 0
    info = cache.info()
    print(f"activation cache: {info['path']}")
    print(f"  entries: {info['n_entries']} ({info['n_vectors']} vectors), size {_size(info['size_bytes'])}")
    if info["n_damaged"] or info["n_temp"]:
        print(f"  damaged entries: {info['n_damaged']}, leftover temporary files: {info['n_temp']}"
              " (`cache clear` removes them; damaged ones are also recomputed when read)")
    for label, n in sorted(info["labels"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:>8}  {label}")
    return 0
