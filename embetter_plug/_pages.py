"""Writing the self-contained HTML pages (probe report, attention patterns, labelling map):
templates filled in one pass, text checked to be writable before any work, files written whole.

- :func:`fill` substitutes ``__NAME__`` placeholders in one pass, so a user's title that holds
  ``__DATA__`` stays text and is never substituted itself.
- :func:`utf8_problem` / :func:`check_writable` find text that UTF-8 cannot hold (a lone
  surrogate, e.g. from a file name that is not UTF-8), so a caller can refuse it before its
  compute; :func:`display_name` makes such a name printable instead.
- :func:`write_page` encodes the whole page first and writes it through a temporary file, so a
  failure leaves no page (and no empty file that blocks the rerun).
- :func:`plotly_text` escapes text that plotly would read as markup (its legend and titles
  render ``<a href>``, ``<b>`` ...).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

__all__ = ["fill", "utf8_problem", "check_writable", "display_name", "write_page", "plotly_text"]

_PLACEHOLDER = re.compile(r"__([A-Z]+)__")


def fill(template: str, **values: str) -> str:
    """``template`` with each ``__NAME__`` replaced by ``values["NAME"]``, in one pass (the
    values are never scanned for placeholders); placeholders not given stay as they are.

    Examples
    --------
    >>> fill("<title>__TITLE__</title>__DATA__", TITLE="a __DATA__ title", DATA="{}")
    '<title>a __DATA__ title</title>{}'
    """
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def utf8_problem(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8 (a lone surrogate at some position), or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return (f"{text[max(0, e.start - 20):e.start + 20]!r} holds {text[e.start]!r} at "
                f"position {e.start}, which UTF-8 cannot encode (a lone surrogate: bytes of a "
                "name that is not UTF-8, or half of a character)")


def check_writable(texts, what: str) -> None:
    """Raise a ValueError naming ``what`` and the row when a text of ``texts`` (a str, or a
    sequence of str or None) cannot be written as UTF-8.

    Examples
    --------
    >>> check_writable(["fine", "also \\ud800 not"], "texts")
    Traceback (most recent call last):
    ...
    ValueError: texts[1]: 'also \\ud800 not' holds '\\ud800' at position 5, which UTF-8 cannot encode (a lone surrogate: bytes of a name that is not UTF-8, or half of a character); fix or drop it before writing the page.
    """
    rows = [(what, texts)] if isinstance(texts, str) else [
        (f"{what}[{i}]", t) for i, t in enumerate(texts)]
    for where, text in rows:
        problem = isinstance(text, str) and utf8_problem(text)
        if problem:
            raise ValueError(f"{where}: {problem}; fix or drop it before writing the page.")


def display_name(name: str) -> str:
    """``name`` (e.g. a file's name) as printable text: bytes that are not UTF-8 become
    U+FFFD.

    Examples
    --------
    >>> display_name("data_\\udcff")
    'data_�'
    """
    if utf8_problem(name) is None:
        return name
    try:  # a file name's bytes, as the file system gave them
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # other lone surrogates
        return name.encode("utf-8", "replace").decode("utf-8")


def write_page(path, page: str, *, what: str = "the page") -> Path:
    """Write ``page`` to ``path`` whole (temporary file, then rename): on any failure (text UTF-8
    cannot hold, a full disk) no file, and no empty one, is left at ``path``."""
    from .store.io import atomic_write

    problem = utf8_problem(page)
    if problem:
        raise ValueError(f"{what} cannot be written to {str(path)!r}: {problem}.")
    path = Path(path)
    atomic_write(path, page.encode("utf-8"))
    return path


def plotly_text(text) -> str:
    """``text`` for a plotly legend, title or label: ``&``, ``<`` and ``>`` escaped, so that
    no part of it is read as markup (plotly shows the characters).

    Examples
    --------
    >>> plotly_text('<a href="https://example.com">click</a> & more')
    '&lt;a href="https://example.com"&gt;click&lt;/a&gt; &amp; more'
    """
    return html.escape(str(text), quote=False)
