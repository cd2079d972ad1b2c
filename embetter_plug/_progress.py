"""Progress bars: one bar over a whole job, which the steps inside it advance.

A long job made of several calls (streamed extraction: one encoder call per shard) opens
:func:`overall`; while it is open, :func:`iterate` inside those calls advances that one bar
instead of starting a bar of its own, so the user sees a single bar with one estimate for
the whole job.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Iterator

__all__ = ["overall", "iterate", "advance_to"]

_current: ContextVar[Any] = ContextVar("embetter_plug_progress", default=None)


@contextlib.contextmanager
def overall(total: int, *, desc: str, unit: str, disable: bool, initial: int = 0):
    """Open one bar over ``total`` units for everything run inside the ``with`` block.

    Examples
    --------
    >>> from embetter_plug._progress import iterate, overall
    >>> with overall(6, desc="rows", unit="row", disable=True) as bar:
    ...     for chunk in ([1, 2], [3, 4, 5, 6]):
    ...         _ = list(iterate([chunk], total=1, desc="inner", unit="batch", disable=True,
    ...                          size=len))
    ...     bar.n
    6
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable,
               dynamic_ncols=True)
    if disable:  # a disabled bar keeps no count; count anyway for callers that read ``n``
        bar.n = initial
    token = _current.set(bar)
    try:
        yield bar
    finally:
        _current.reset(token)
        bar.close()


def iterate(items: Iterable, *, total: int | None, desc: str, unit: str, disable: bool,
            size: Callable[[Any], int]) -> Iterator:
    """Yield ``items``, advancing the open :func:`overall` bar by ``size(item)`` per item, or,
    outside one, a bar of their own (``total`` items) unless ``disable``."""
    bar = _current.get()
    if bar is None:
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, disable=disable,
                        dynamic_ncols=True)
        return
    for item in items:
        yield item
        _advance(bar, size(item))


def _advance(bar, n: int) -> None:
    if bar.disable:  # tqdm does not count when disabled
        bar.n += n
    else:
        bar.update(n)


def advance_to(bar, n: int) -> None:
    """Set ``bar`` to ``n`` (e.g. the rows stored so far), forwards only."""
    if n > bar.n:
        _advance(bar, n - bar.n)
