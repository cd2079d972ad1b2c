"""``set_output`` for estimators whose output may have more than two axes.

scikit-learn wraps ``transform`` output in a DataFrame when ``set_output(transform="pandas")``
(or the global ``transform_output``) asks for it; a 4-D activation array cannot be one. An
estimator using these helpers returns 2-D output in the requested container and passes N-D
output through as a NumPy array, so ``Pipeline(...).set_output(transform="pandas")`` works when
the pipeline's later steps make the output 2-D.
"""

from __future__ import annotations

import numpy as np

from ._utils import logger

CONTAINERS = ("default", "pandas", "polars")


def store_output_config(estimator, transform):
    """What ``set_output(transform=...)`` does: check the value and remember it."""
    if transform is None:
        return estimator
    if transform not in CONTAINERS:
        raise ValueError(f"set_output(transform={transform!r}) is not supported; valid values "
                         f"are {list(CONTAINERS)} or None.")
    if transform == "polars":
        _polars()  # a missing package is said here, not after the work
    config = dict(getattr(estimator, "_sklearn_output_config", {}))
    config["transform"] = transform
    estimator._sklearn_output_config = config
    return estimator


def wrap_output(estimator, out: np.ndarray, X, feature_names):
    """``out`` in the container asked for by ``set_output`` or the global config, if 2-D."""
    from sklearn import get_config

    wanted = getattr(estimator, "_sklearn_output_config", {}).get(
        "transform", get_config()["transform_output"])
    if wanted == "default":
        return out
    if out.ndim != 2:
        logger.debug("%s output is %d-D, passed through as a NumPy array (not %s)",
                     type(estimator).__name__, out.ndim, wanted)
        return out
    columns = [str(c) for c in feature_names()]
    if wanted == "polars":
        return _polars().DataFrame(out, schema=columns, orient="row")
    import pandas as pd

    index = input_index(X)
    return pd.DataFrame(out, columns=columns,
                        index=index if index is not None and len(index) == len(out) else None)


def input_index(X):
    """The row index a DataFrame output should keep: a pandas input's, or the one an
    :class:`~embetter_plug.layout.Activations` array carries; else ``None``."""
    import pandas as pd

    from .layout import Activations

    if isinstance(X, (Activations, pd.Series, pd.DataFrame)):
        return X.index
    return None


def _polars():
    """The polars module, or an ImportError that says how to get it (not a dependency)."""
    try:
        import polars
    except ImportError:
        raise ImportError("set_output(transform='polars') needs the polars package, which is not "
                          "a dependency of embetter_plug: pip install polars (or use 'pandas')."
                          ) from None
    return polars
