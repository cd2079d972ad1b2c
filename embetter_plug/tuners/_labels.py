"""Label handling shared by the tuners: classes over partial_fit calls, pair labels, pair sampling."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.multiclass import check_classification_targets


def update_classes(est: Any, y: np.ndarray, classes: Any, *, first: bool) -> np.ndarray:
    """Set/check ``est.classes_`` and return ``y`` as indices into it.

    On the first call the classes are ``classes`` when given, else the labels of ``y``; fewer
    than two classes is an error (a tuner learns to tell classes apart). Later calls check that
    ``y`` only holds known labels and that ``classes``, if passed again, has not changed.
    """
    name = type(est).__name__
    check_classification_targets(y)
    if first:
        known = np.unique(y) if classes is None else np.unique(np.asarray(classes))
        if len(known) < 2:
            hint = (" Pass classes=[...] with every label to partial_fit when the first batch holds only one."
                    if classes is None else "")
            got = "only one class" if len(known) == 1 else "no class"
            raise ValueError(f"{name} needs at least two classes, got {got} ({known.tolist()!r}).{hint}")
        est.classes_ = known
    elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), est.classes_):
        raise ValueError(
            f"classes={np.asarray(classes).tolist()!r} differs from the classes of the first "
            f"partial_fit call {est.classes_.tolist()!r}; call fit to start over with new classes."
        )
    unknown = np.setdiff1d(np.unique(y), est.classes_)
    if unknown.size:
        raise ValueError(
            f"y contains labels {unknown.tolist()!r} that are not among the classes "
            f"{est.classes_.tolist()!r}; pass every label in classes= on the first partial_fit call."
        )
    return np.searchsorted(est.classes_, y)


def check_pair_labels(y: Any, n_pairs: int) -> np.ndarray:
    """Similarity labels of pairs: 1-D, one per pair, each 0 (dissimilar) or 1 (similar)."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"y must be 1-D with one similarity label per pair, got shape {arr.shape}.")
    if len(arr) != n_pairs:
        raise ValueError(f"y has {len(arr)} labels but there are {n_pairs} pairs; give one label per pair.")
    try:
        vals = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"y must hold similarity labels 0 or 1, got values of type {arr.dtype}.") from None
    bad = ~np.isin(vals, (0.0, 1.0))
    if bad.any():
        shown = np.unique(arr[bad])[:5].tolist()
        raise ValueError(
            f"y must hold similarity labels 0 (dissimilar) or 1 (similar); got other values {shown!r}."
        )
    return vals.astype(np.float32)


def check_same_length(X1: Any, X2: Any) -> None:
    n1, n2 = len(X1), len(X2)
    if n1 != n2:
        raise ValueError(f"X1 and X2 must hold the same number of items (one pair per row), got {n1} and {n2}.")


def sample_pairs(codes: np.ndarray, n_neg: int, rng: np.random.Generator):
    """Pairs from class codes: per row, one positive (another row of its class, where there is
    one) and ``n_neg`` negatives (rows of other classes, where there are any).

    Returns ``(left, right, similarity)`` index arrays and float32 labels.
    """
    left, right, sim = [], [], []
    n = len(codes)
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        others = np.flatnonzero(codes != c)
        m = len(members)
        if m > 1:  # a random other member: draw from m-1 slots and skip over oneself
            j = rng.integers(0, m - 1, size=m)
            j = j + (j >= np.arange(m))
            left.append(members)
            right.append(members[j])
            sim.append(np.ones(m, np.float32))
        if len(others) and n_neg:
            left.append(np.repeat(members, n_neg))
            right.append(others[rng.integers(0, len(others), size=m * n_neg)])
            sim.append(np.zeros(m * n_neg, np.float32))
    if not left:
        raise ValueError(f"cannot form any pair from {n} row(s); give at least two rows of one class.")
    return np.concatenate(left), np.concatenate(right), np.concatenate(sim)
