"""Input checks and the 2-D projection behind :class:`~embetter_plug.LabellingMap`.

Every check runs before any projection or page is computed; messages say what was given and
what is valid.
"""

from __future__ import annotations

import numpy as np

from .._utils import format_positions

__all__ = ["PROJECTIONS", "check_choice", "check_embedding", "check_labels", "check_classifier_output",
           "project"]

PROJECTIONS = ("pca", "tsne", "umap")


def check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not supported; valid values are "
                         f"{[v for v in valid if v is not None]}.")


def check_embedding(X, n_texts: int) -> np.ndarray:
    """A finite 2-D float array with one row per text (higher dimensions flattened per row)."""
    if hasattr(X, "to_numpy"):
        X = X.to_numpy()
    X = np.asarray(X)
    if X.ndim < 2:
        raise ValueError(f"X must be 2-D (one row per text), got a {X.ndim}-D array of shape "
                         f"{X.shape}; for a single feature use X.reshape(-1, 1), for one text "
                         "X.reshape(1, -1).")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must be numeric, got dtype {X.dtype}.")
    X = X.reshape(len(X), -1)
    if len(X) != n_texts:
        raise ValueError(f"X has {len(X)} rows but texts has {n_texts}; give one text per row.")
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        raise ValueError(f"X has NaN or infinite values in {len(bad)} row(s) at positions "
                         f"{format_positions(bad.tolist())}; drop or fix those rows first.")
    return X


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or \
        (isinstance(v, float) and v != v) or type(v).__name__ in ("NAType", "NaTType")


def check_labels(labels, n: int, name: str) -> list | None:
    """Labels as ``str`` (None where missing), one per row."""
    if labels is None:
        return None
    values = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values but there are {n} texts; give one per "
                         "text (None or '' for an unlabelled row).")
    return [None if _is_missing(v) else str(v) for v in values]


def check_classifier_output(proba, classes, predictions, n: int):
    if proba is not None:
        proba = np.asarray(proba, dtype=float)
        if proba.ndim != 2 or len(proba) != n:
            raise ValueError(f"proba must have shape ({n}, n_classes), got {proba.shape}.")
        if classes is None or len(classes) != proba.shape[1]:
            raise ValueError(f"classes must name proba's {proba.shape[1]} columns, got "
                             f"{None if classes is None else len(classes)} names.")
        if not np.isfinite(proba).all():
            raise ValueError("proba has NaN or infinite values.")
        classes = np.array([str(c) for c in classes], dtype=object)
        predictions = classes[proba.argmax(axis=1)]
    elif predictions is not None:
        predictions = np.array([str(v) for v in predictions], dtype=object)
        if len(predictions) != n:
            raise ValueError(f"predictions has {len(predictions)} values but there are {n} texts.")
    return proba, classes, predictions


def project(X: np.ndarray, projection, random_state):
    """``(xy, fitted projection, axis titles)``."""
    n = len(X)
    if projection is None:
        if X.shape[1] != 2:
            raise ValueError(f"projection=None needs X with 2 columns, got {X.shape[1]}; use "
                             "projection='pca' (or 'tsne', 'umap').")
        return X.astype(np.float32), None, ("x", "y")
    if n < 3:
        raise ValueError(f"a map needs at least 3 rows to project, got {n}.")
    if isinstance(projection, str):
        check_choice("projection", projection, PROJECTIONS)
        if X.shape[1] < 2:
            raise ValueError(f"X has {X.shape[1]} column; projecting to 2-D needs at least 2.")
        if projection == "pca":
            from sklearn.decomposition import PCA

            est = PCA(n_components=2, random_state=random_state)
        elif projection == "tsne":
            from sklearn.manifold import TSNE

            est = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca",
                       random_state=random_state)
        else:
            try:
                import umap
            except ImportError:
                raise ImportError("projection='umap' needs the umap-learn package: "
                                  "pip install umap-learn (or use 'pca' or 'tsne').") from None
            est = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=random_state)
    elif hasattr(projection, "fit_transform"):
        from sklearn.base import clone

        est = clone(projection)
    else:
        raise TypeError(f"projection={projection!r}: use 'pca', 'tsne', 'umap', None or an "
                        "estimator with fit_transform.")
    xy = np.asarray(est.fit_transform(X))
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ValueError(f"the projection gave shape {xy.shape}; it must give 2 columns.")
    name = {"pca": "PC", "tsne": "t-SNE ", "umap": "UMAP "}.get(projection, "component ") \
        if isinstance(projection, str) else "component "
    titles = (f"{name}1", f"{name}2")
    if isinstance(projection, str) and projection == "pca":
        r = est.explained_variance_ratio_
        titles = (f"PC1 ({r[0]:.0%} of variance)", f"PC2 ({r[1]:.0%})")
    return xy[:, :2].astype(np.float32), est, titles
