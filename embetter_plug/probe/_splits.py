"""The three stratified splits of ``OnlineProbes``: training, validation (chooses the epoch and
the best probe) and test (the reported metrics), and the error that says how many texts they
need; the check that every fold of a cross-validation holds every class."""

from __future__ import annotations

import math

import numpy as np


def split(y, validation_fraction: float, test_fraction: float, seed):
    """Stratified (train, validation, test) positions of encoded labels ``y``, or None when
    scikit-learn cannot split them or a split misses a class."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        rest, te = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
        tr, va = train_test_split(rest, test_size=validation_fraction / (1 - test_fraction),
                                  stratify=y[rest], random_state=seed)
    except ValueError:
        return None
    k = len(np.unique(y))
    if any(len(np.unique(y[side])) < k for side in (tr, va, te)):
        return None
    return tr, va, te


def three_way_split(y, classes, validation_fraction: float, test_fraction: float, seed):
    """``split``, or a ValueError that says how many texts are needed (``classes`` names the
    encoded labels)."""
    out = split(y, validation_fraction, test_fraction, seed)
    if out is not None:
        return out
    codes, counts = np.unique(y, return_counts=True)
    k, n = len(codes), len(y)
    need = 3 * k
    while split(np.resize(np.arange(k), need), validation_fraction, test_fraction, 0) is None:
        need += 1
    n_te = math.ceil(test_fraction * n)
    n_va = math.ceil(validation_fraction / (1 - test_fraction) * (n - n_te))
    few = [classes[c].item() for c, m in zip(codes, counts) if m < 3]
    problem = (f"class(es) {few[:5]} have fewer than 3 texts" if few else
               f"that is {n_va} validation, {n_te} test and {n - n_te - n_va} training "
               f"text(s) for {k} classes")
    raise ValueError(
        f"OnlineProbes holds out validation_fraction={validation_fraction!r} (early stopping, "
        f"best probe) and test_fraction={test_fraction!r} (metrics_) of the texts, stratified, "
        f"and needs texts of every class in all three splits: with {k} classes that is at "
        f"least {need} texts, about {math.ceil(need / k)} per class, and at least 3 in every "
        f"class. Got {n} texts; {problem}. Give more texts, or change validation_fraction or "
        "test_fraction."
    )


def fold_class_error(splits, y, test: bool = True) -> str | None:
    """What is wrong when a fold's training rows (and with ``test``, its test rows) lack a class
    of ``y``, else None.

    A probe trained without a class cannot score it (log-loss and ROC-AUC fail), and a test
    side without a class leaves ROC-AUC undefined (NaN), which would poison every mean and
    p-value computed from the folds.
    """
    classes = np.unique(y)
    bad = []
    for k, (tr, te) in enumerate(splits):
        for side, rows in (("training", tr), ("test", te))[:2 if test else 1]:
            missing = np.setdiff1d(classes, y[np.asarray(rows)]).tolist()
            if missing:
                bad.append(f"fold {k}'s {side} rows have no class {missing[:5]}")
    if not bad:
        return None
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    sides = "on both sides" if test else "in its training rows"
    return f"every fold needs every class {sides}, but {'; '.join(bad[:5])}{more}"
