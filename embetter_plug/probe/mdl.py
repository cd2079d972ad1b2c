"""Minimum description length probing with the online code (Voita & Titov, 2020).

The rows are put in a random order and cut into blocks at growing fractions of the data. The
first block is sent with the uniform code (``log2(n_classes)`` bits a label); every later block
is sent with a probe trained on all rows before it, costing ``-log2 p(label)`` bits a row. The
total is the *online codelength*: short when a probe learns the labels from few rows, so a more
expressive probe family does not look better for free. *Compression* is the uniform code's
length (``n * log2(n_classes)``) divided by the online codelength.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["online_codelength", "block_ends", "FRACTIONS"]

#: block ends as fractions of the rows: 0.1%, 0.2%, 0.4%, ..., 12.5%, 25%, 50%, 100%
FRACTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
#: smallest probability used in a codelength (a probe that gives a label probability 0 would
#: otherwise cost infinitely many bits)
TINY = 1e-12


def block_ends(y, fractions=FRACTIONS) -> list[int]:
    """Where the blocks of ``y`` (already in transmission order) end.

    ``ceil(f * n)`` for each fraction, except that the first block is extended until it holds
    every class: a probe must have seen a label to give it a probability.

    Examples
    --------
    >>> block_ends([0, 0, 1, 0, 1, 1, 0, 1], fractions=(0.125, 0.5, 1.0))
    [3, 4, 8]
    """
    y = np.asarray(y)
    n = len(y)
    fractions = sorted(float(f) for f in fractions)
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise ValueError(f"MDL fractions must lie in (0, 1], got {list(fractions)}.")
    _, first_seen = np.unique(y, return_index=True)
    first = int(first_seen.max()) + 1
    ends = sorted({max(1, math.ceil(f * n)) for f in fractions} | {n})
    return [first, *(e for e in ends if e > first)]


def online_codelength(estimator, X, y, *, fractions=FRACTIONS, shuffle: bool = True,
                      random_state: Any = None) -> tuple[float, float]:
    """``(online codelength, uniform codelength)`` in bits of labels ``y`` given features ``X``.

    Parameters
    ----------
    estimator : classifier with ``predict_proba``
        Cloned and fitted once per block.
    X : array of shape (n_samples, n_features)
    y : array of shape (n_samples,)
    fractions : sequence of float
        Block ends as fractions of the rows (see :data:`FRACTIONS`).
    shuffle : bool, default=True
        Send the rows in a random order (``False``: in the order given).
    random_state : int, RandomState or None
        The random order.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 100)
    >>> X = rng.normal(size=(200, 3)) + 2 * y[:, None]
    >>> bits, uniform = online_codelength(LogisticRegression(), X, y, random_state=0)
    >>> uniform, bool(bits < uniform / 3)
    (200.0, True)
    """
    from sklearn.base import clone

    from .._utils import seed_from_random_state

    X, y = np.asarray(X), np.asarray(y)
    if not hasattr(estimator, "predict_proba"):
        raise TypeError(f"MDL probing needs probabilities; {type(estimator).__name__} has no "
                        "predict_proba.")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("MDL probing needs at least two classes.")
    if shuffle:
        order = np.random.RandomState(seed_from_random_state(random_state)).permutation(len(y))
        X, y = X[order], y[order]
    ends = block_ends(y, fractions)
    bits = ends[0] * math.log2(len(classes))
    for start, stop in zip(ends[:-1], ends[1:]):
        model = clone(estimator).fit(X[:start], y[:start])
        proba = model.predict_proba(X[start:stop])
        col = np.searchsorted(np.asarray(model.classes_), y[start:stop])
        p = proba[np.arange(stop - start), col]
        bits += float(-np.log2(np.maximum(p, TINY)).sum())
    return float(bits), float(len(y) * math.log2(len(classes)))
