"""PlugRegressor: the residual MLP with one output and a mean-squared-error loss."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._modules import ResidualMLP
from .training import HIDDEN_UNITS, NET_CONSTRAINTS, PlugNetBase, store_params

__all__ = ["PlugRegressor"]


class PlugRegressor(RegressorMixin, PlugNetBase):
    """Residual MLP regressor on activation features, trained with skorch.

    The network of :class:`PlugClassifier` with one output and MSE loss. Early stopping
    monitors the validation MSE on a random ``validation_fraction`` of ``fit``'s rows.
    Parameters are those of :class:`PlugClassifier` without ``class_weight``.

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import PlugRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 16)).astype("float32")
    >>> reg = PlugRegressor(max_epochs=3, random_state=0, n_jobs=1).fit(X, X[:, 0] * 2.0)
    >>> reg.predict(X[:3]).shape
    (3,)
    """

    _module_cls = ResidualMLP
    _task = "regressor"

    _parameter_constraints: dict = {**NET_CONSTRAINTS, "module__hidden_units": HIDDEN_UNITS}

    def __init__(self, *, max_epochs: int = 100, lr: float = 1e-3, batch_size: int = 128,
                 optimizer: Any = "adamw", lr_scheduler: str | None = "plateau",
                 early_stopping: bool = True, patience: int = 10, validation_fraction: float = 0.1,
                 callbacks: list | None = None, device: Any = "auto", n_jobs: int | None = None,
                 random_state: Any = None, verbose: int = 0,
                 module__hidden_units: int | None = None, module__dropout: float = 0.2):
        store_params(self, locals())

    def fit(self, X, y) -> "PlugRegressor":
        """Train on ``X`` (2-D or more axes, flattened) and a numeric 1-D ``y``."""
        self._check_params()
        X, y = self._check_X(X, y, reset=True)
        Xf = self._module_input(X)
        y = np.asarray(y, dtype=np.float32).reshape(-1, 1)
        return self._fit_net(Xf, y, {"input_dim": Xf.shape[1], "n_outputs": 1})

    def predict(self, X) -> np.ndarray:
        """Predicted values, float64 of shape ``(n,)``."""
        check_is_fitted(self, "net_")
        return self._forward(self._module_input(self._check_X(X, reset=False)))[:, 0]

    def _criterion(self):
        return nn.MSELoss, {}
