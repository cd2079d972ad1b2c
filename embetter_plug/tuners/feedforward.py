"""FeedForwardTuner: the hidden layer of a small classifier net as the new embedding."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._labels import update_classes
from .._constraints import NON_NEGATIVE_REAL, POSITIVE_INT, validate_estimator_params
from ._training import (TorchModuleMixin, activation_module, apply_in_batches, TORCH_CONSTRAINTS,
                        flatten_rows, forget_fitted, train_epochs)

__all__ = ["FeedForwardTuner"]


class FeedForwardTuner(TorchModuleMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Train ``input -> hidden -> classes`` on ``(X, y)`` and return the hidden layer.

    The hidden layer blends what the embedding knows with the labels you care about; it is
    the new embedding (the class scores are only the training signal). Multi-class, any label
    type. ``fit`` starts from fresh weights; ``partial_fit`` continues from the current ones.

    Parameters
    ----------
    hidden_dim : int, default=128
        Size of the hidden layer, i.e. of the output of ``transform``.
    n_epochs : int, default=40
        Passes over the data per ``fit`` / ``partial_fit`` call.
    learning_rate : float, default=3e-4
        AdamW step size.
    batch_size : int or None, default=32
        Rows per gradient step; ``None`` trains on the full batch.
    activation : {"relu", "tanh", "gelu"}, default="relu"
        Non-linearity of the hidden layer (also applied in ``transform``).
    weight_decay : float, default=0.0
        AdamW weight decay.
    random_state : int, RandomState or None, default=None
        Seeds the initial weights and the batch order.
    device : str, default="auto"
        Where the net trains (``auto``: cuda, then mps, then cpu).
    verbose : bool, default=False
        Progress bar over epochs.

    Attributes
    ----------
    classes_ : ndarray
        Labels seen in ``fit`` (or given as ``classes`` to the first ``partial_fit``).
    module_ : torch.nn.Sequential
        The trained net; ``module_[:2]`` is the embedding.
    n_features_in_ : int
    loss_ : float
        Mean training loss of the last epoch.
    device_ : torch.device

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import FeedForwardTuner
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(60, 16)), rng.integers(0, 3, size=60)
    >>> tuner = FeedForwardTuner(hidden_dim=8, n_epochs=5, random_state=0).fit(X, y)
    >>> tuner.transform(X).shape
    (60, 8)
    """

    _parameter_constraints: dict = {
        **TORCH_CONSTRAINTS, "hidden_dim": [POSITIVE_INT], "n_epochs": [POSITIVE_INT],
        "weight_decay": [NON_NEGATIVE_REAL],
    }

    def __init__(self, hidden_dim: int = 128, n_epochs: int = 40, learning_rate: float = 3e-4,
                 batch_size: int | None = 32, activation: str = "relu", weight_decay: float = 0.0,
                 random_state: Any = None, device: Any = "auto", verbose: bool = False):
        self.hidden_dim = hidden_dim
        self.n_epochs = n_epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.activation = activation
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def fit(self, X, y):
        """Train a fresh net on ``(X, y)``."""
        forget_fitted(self, "module_", "classes_")
        return self.partial_fit(X, y)

    def partial_fit(self, X, y, classes=None):
        """Train ``n_epochs`` more on ``(X, y)``, continuing from the current weights.

        The first call builds the net; pass ``classes`` there when this batch does not hold
        every label.
        """
        self._check_params()
        first = getattr(self, "module_", None) is None
        X, y = validate_data(self, flatten_rows(X), y, reset=first, dtype=[np.float32, np.float64])
        codes = update_classes(self, y, classes, first=first)
        if first:
            self._start_training()
            self.module_ = self._build(self._make_module)
        self.loss_ = train_epochs(
            self.module_, self._optimizer(), _cross_entropy,
            (X.astype(np.float32, copy=False), codes.astype(np.int64, copy=False)), epochs=self.n_epochs,
            batch_size=self.batch_size, rng=self._rng, device=self.device_, verbose=self.verbose,
            desc="FeedForwardTuner")
        return self

    def transform(self, X):
        """The hidden-layer activations, float32 of shape ``(n_samples, hidden_dim)``."""
        check_is_fitted(self, "module_")
        X = validate_data(self, flatten_rows(X), reset=False, dtype=[np.float32, np.float64])
        return apply_in_batches(self.module_[:2], X, self.device_)

    def _make_module(self):
        from torch import nn

        return nn.Sequential(nn.Linear(self.n_features_in_, self.hidden_dim),
                             activation_module(self.activation),
                             nn.Linear(self.hidden_dim, len(self.classes_)))

    def _check_params(self) -> None:
        validate_estimator_params(self)

    @property
    def _n_features_out(self) -> int:
        return self.module_[0].out_features

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _cross_entropy(module, xb, yb):
    from torch.nn.functional import cross_entropy

    return cross_entropy(module(xb), yb)
