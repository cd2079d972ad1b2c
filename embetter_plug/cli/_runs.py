"""Where a command's results go when no ``--out`` is given, and what an interrupted run kept.

A command without ``--out`` writes into a new folder ``embetter-plug-runs/<command>-<time>``
under the current folder, so every run leaves its results behind and never replaces an
earlier run's. A command records, as it goes, a sentence about what is kept so far
(:class:`InterruptNote`); ``embetter-plug`` prints it when the user presses Ctrl-C.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

RUNS_DIR = "embetter-plug-runs"


def new_run_folder(command: str, root: str | os.PathLike = RUNS_DIR) -> Path:
    """A folder name ``root/<command>-<YYYYmmdd-HHMMSS>`` that does not exist yet (not created).

    Raises ``PermissionError`` when ``root`` (or the nearest folder above it that exists) is not
    writable, before any work starts.
    """
    root = Path(root)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out, k = root / f"{command}-{stamp}", 1
    while out.exists():
        k += 1
        out = root / f"{command}-{stamp}-{k}"
    existing = next(p for p in (root, *root.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create the run folder {str(out)!r}: {str(existing)!r} is "
                              "not writable; pass --out DIR to write the results elsewhere.")
    return out


def open_hint(path: Path) -> str:
    """How to open a written HTML file: its ``file://`` address (most terminals make it a link)."""
    return f"open the report in a browser: {Path(path).resolve().as_uri()}"


class InterruptNote:
    """What an interrupted command kept and how to resume; updated as the command goes.

    Examples
    --------
    >>> note = InterruptNote("nothing was written yet", "run the same command again")
    >>> note.kept = "results.csv with the finished models"
    >>> str(note)
    'kept: results.csv with the finished models; run the same command again'
    """

    def __init__(self, kept, resume: str):
        self.kept = kept  # a sentence, or a function that returns one when asked
        self.resume = resume

    def __str__(self) -> str:
        kept = self.kept() if callable(self.kept) else self.kept
        kept = kept if kept.startswith("nothing") else f"kept: {kept}"
        return f"{kept}; {self.resume}"


def prepare_out(out: str | None, command: str, outputs, *, overwrite: bool = False,
                resumable: bool = False) -> Path:
    """Create ``--out`` before any model loads; refuse a file, or an earlier run's ``outputs``
    (unless ``overwrite``, or ``resumable``: the command picks up what that run finished).

    Without ``--out``: a new run folder (created when the first results are written).
    """
    if out is None:
        return new_run_folder(command)
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out!r} is a file; give a folder (new or empty) for "
                         f"{', '.join(outputs)}.")
    earlier = [n for n in outputs if (path / n).exists()]
    if earlier and not (overwrite or resumable):
        raise ValueError(f"--out {out!r} already holds an earlier run's {earlier}; pass "
                         "--overwrite to replace them, or choose another folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"--out {out!r} cannot be created: {exc.strerror or exc}.") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out!r} is not writable; choose another folder.")
    return path
