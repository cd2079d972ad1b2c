"""Control tasks (Hewitt & Liang, 2019): labels a probe can only learn by memorising inputs.

Each *type* (a word type, or a text) gets a label drawn at random from the task's own label
distribution, the same label wherever that type occurs. A probe that scores well on this control
task learns which input is which, not the property; *selectivity* (task score minus control
score, on the same slice, folds and probe) says how much of the task score is more than that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["control_labels", "row_types"]


def row_types(X) -> np.ndarray:
    """A type id per row: rows with identical values (e.g. the same text encoded twice) share one.

    Examples
    --------
    >>> import numpy as np
    >>> row_types(np.array([[1.0, 2.0], [0.0, 1.0], [1.0, 2.0]])).tolist()
    [1, 0, 1]
    """
    X = np.ascontiguousarray(np.asarray(X).reshape(len(X), -1))
    rows = X.view(np.dtype((np.void, X.dtype.itemsize * X.shape[1]))).ravel()
    return np.unique(rows, return_inverse=True)[1].ravel()


def control_labels(y, types, random_state: Any = None) -> np.ndarray:
    """A control task for ``y``: each type gets a random label drawn from ``y`` itself (so the
    label distribution is the task's), the same one at every row of that type.

    Parameters
    ----------
    y : array of shape (n_samples,)
        The task's labels (or numbers).
    types : array of shape (n_samples,)
        Each row's type, e.g. its word or its text; any hashable values.
    random_state : int, RandomState, Generator or None

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array(["a", "b", "a", "b", "a"])
    >>> c = control_labels(y, ["the", "cat", "the", "sat", "the"], random_state=0)
    >>> bool(c[0] == c[2] == c[4]) and set(c) <= {"a", "b"}
    True
    """
    y = np.asarray(y)
    types = np.asarray(types)
    if types.shape != (len(y),):
        raise ValueError(f"control types must be one per sample, shape ({len(y)},); got shape "
                         f"{types.shape}.")
    _, inverse = np.unique(types, return_inverse=True)
    rng = np.random.default_rng(_seed(random_state))
    per_type = y[rng.integers(0, len(y), size=inverse.max() + 1)]
    return per_type[inverse.ravel()]


def _seed(random_state) -> int | None:
    from .._utils import seed_from_random_state

    return seed_from_random_state(random_state)
