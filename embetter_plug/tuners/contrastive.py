"""ContrastiveLearner (pairs in, shared embedding head out) and ContrastiveTuner (pairs made from labels)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._labels import check_pair_labels, check_same_length
from ._pairs import PairTunerMixin
from .._constraints import NON_NEGATIVE_REAL, POSITIVE_INT, validate_estimator_params
from ._training import (TorchModuleMixin, apply_in_batches, TORCH_CONSTRAINTS, flatten_rows,
                        forget_fitted, paired_cosine, train_epochs)

__all__ = ["ContrastiveLearner", "ContrastiveTuner"]


class ContrastiveLearner(TorchModuleMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Learn an embedding head from pairs: ``fit(X1, X2, y)`` with ``y`` 1 (similar) or 0.

    Both items of a pair go through the same head (shared weights): a fixed skip path plus a
    learned ``Linear -> activation -> Linear`` correction whose last layer starts at zero, so
    training starts from the raw space and bends it. Training pulls the cosine similarity of
    the two outputs towards ``y`` (mean squared error, as sentence-transformers'
    ``CosineSimilarityLoss``). ``transform(X)`` maps into the learned space and
    ``predict(X1, X2)`` gives the cosine similarity of pairs there.

    Parameters
    ----------
    shape_out : int or None, default=None
        Size of the learned embedding; ``None`` keeps the input size (the skip path is then
        the identity, otherwise a fixed random orthogonal projection).
    batch_size : int or None, default=32
        Pairs per gradient step; ``None`` is the full batch.
    epochs : int, default=5
        Passes over the pairs per ``fit`` / ``partial_fit`` call.
    learning_rate : float, default=3e-4
        AdamW step size.
    activation : {"relu", "tanh", "gelu"}, default="relu"
        Non-linearity between the two layers of the head.
    weight_decay : float, default=0.0
    random_state : int, RandomState or None, default=None
        Seeds the initial weights and the batch order.
    device : str, default="auto"
    verbose : bool, default=False

    Attributes
    ----------
    module_ : torch.nn.Module
        The embedding head.
    n_features_in_ : int
    loss_ : float
        Mean training loss of the last epoch.
    device_ : torch.device

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import ContrastiveLearner
    >>> rng = np.random.default_rng(0)
    >>> X1, X2 = rng.normal(size=(50, 12)), rng.normal(size=(50, 12))
    >>> y = rng.integers(0, 2, size=50)
    >>> learner = ContrastiveLearner(shape_out=6, epochs=3, random_state=0).fit(X1, X2, y)
    >>> learner.transform(X1).shape, learner.predict(X1, X2).shape
    ((50, 6), (50,))
    """

    _parameter_constraints: dict = {
        **TORCH_CONSTRAINTS, "shape_out": [None, POSITIVE_INT], "epochs": [POSITIVE_INT],
        "weight_decay": [NON_NEGATIVE_REAL],
    }

    def __init__(self, shape_out: int | None = None, batch_size: int | None = 32, epochs: int = 5,
                 learning_rate: float = 3e-4, activation: str = "relu", weight_decay: float = 0.0,
                 random_state: Any = None, device: Any = "auto", verbose: bool = False):
        self.shape_out = shape_out
        self.batch_size = batch_size
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.activation = activation
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def fit(self, X1, X2, y):
        """Train a fresh head on the pairs ``(X1[i], X2[i])`` with similarity ``y[i]``."""
        forget_fitted(self, "module_")
        return self.partial_fit(X1, X2, y)

    def partial_fit(self, X1, X2, y):
        """Train ``epochs`` more on these pairs, continuing from the current weights."""
        self._check_params()
        check_same_length(X1, X2)
        first = getattr(self, "module_", None) is None
        X1 = validate_data(self, flatten_rows(X1), reset=first, dtype=[np.float32, np.float64])
        X2 = validate_data(self, flatten_rows(X2), reset=False, dtype=[np.float32, np.float64])
        sim = check_pair_labels(y, len(X1))
        if first:
            self._start_training()
            self.module_ = self._build(self._make_module)
        self.loss_ = train_epochs(
            self.module_, self._optimizer(), _cosine_mse,
            (X1.astype(np.float32, copy=False), X2.astype(np.float32, copy=False), sim), epochs=self.epochs,
            batch_size=self.batch_size, rng=self._rng, device=self.device_, verbose=self.verbose,
            desc=type(self).__name__)
        return self

    def transform(self, X):
        """Map ``X`` into the learned space: float32 of shape ``(n_samples, shape_out)``."""
        check_is_fitted(self, "module_")
        X = validate_data(self, flatten_rows(X), reset=False, dtype=[np.float32, np.float64])
        return apply_in_batches(self.module_, X, self.device_)

    def predict(self, X1, X2) -> np.ndarray:
        """Cosine similarity of each pair ``(X1[i], X2[i])`` in the learned space."""
        check_is_fitted(self, "module_")
        check_same_length(X1, X2)
        return paired_cosine(self.transform(X1), self.transform(X2))

    def _make_module(self):
        from ._nets import ResidualHead

        n_out = self.n_features_in_ if self.shape_out is None else self.shape_out
        return ResidualHead(self.n_features_in_, n_out, self.activation)

    def _check_params(self) -> None:
        validate_estimator_params(self)

    @property
    def _n_features_out(self) -> int:
        return self.module_.out_features

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class ContrastiveTuner(PairTunerMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """The Pipeline version of :class:`ContrastiveLearner`: it makes the pairs from ``(X, y)``.

    For each row it pairs one other row of the same class (similar) and ``n_neg`` rows of other
    classes (dissimilar), drawn with ``random_state``, and trains a :class:`ContrastiveLearner`
    on them. ``partial_fit`` keeps training the same learner.

    Parameters
    ----------
    hidden_dim : int or None, default=None
        Size of the learned embedding (the learner's ``shape_out``); ``None`` keeps the input
        size.
    n_neg : int, default=3
        Dissimilar pairs per row (one similar pair per row).
    epochs : int, default=5
        Passes over the pairs per ``fit`` / ``partial_fit`` call.
    learning_rate : float, default=3e-4
    batch_size : int or None, default=32
    activation : {"relu", "tanh", "gelu"}, default="relu"
    random_state : int, RandomState or None, default=None
        Seeds the pairs, the initial weights and the batch order.
    device : str, default="auto"
    verbose : bool, default=False

    Attributes
    ----------
    learner_ : ContrastiveLearner
    classes_ : ndarray
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import ContrastiveTuner
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(40, 10)), np.array(["a", "b"] * 20)
    >>> ContrastiveTuner(hidden_dim=4, epochs=2, random_state=0).fit_transform(X, y).shape
    (40, 4)
    """

    _parameter_constraints: dict = {
        **TORCH_CONSTRAINTS, "hidden_dim": [None, POSITIVE_INT], "n_neg": [POSITIVE_INT],
        "epochs": [POSITIVE_INT],
    }

    def __init__(self, hidden_dim: int | None = None, n_neg: int = 3, epochs: int = 5,
                 learning_rate: float = 3e-4, batch_size: int | None = 32, activation: str = "relu",
                 random_state: Any = None, device: Any = "auto", verbose: bool = False):
        self.hidden_dim = hidden_dim
        self.n_neg = n_neg
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.activation = activation
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    _learner_cls = ContrastiveLearner

    def partial_fit(self, X, y, classes=None):
        """Make pairs from this batch and train the current learner further on them.

        Pass ``classes`` on the first call when this batch does not hold every label.
        """
        # checked here, in this estimator's names, before the learner checks them as its own
        validate_estimator_params(self)
        first = getattr(self, "learner_", None) is None
        X, y = validate_data(self, flatten_rows(X), y, reset=first, dtype=[np.float32, np.float64])
        return self._train_on_pairs(y, classes, first, lambda idx: X[idx])

    def transform(self, X):
        """The tuned embedding, float32 of shape ``(n_samples, hidden_dim or n_features_in_)``."""
        check_is_fitted(self, "learner_")
        X = validate_data(self, flatten_rows(X), reset=False, dtype=[np.float32, np.float64])
        return self.learner_.transform(X)

    def _learner_params(self) -> dict:
        return dict(shape_out=self.hidden_dim, batch_size=self.batch_size, epochs=self.epochs,
                    learning_rate=self.learning_rate, activation=self.activation,
                    device=self.device, verbose=self.verbose)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _cosine_mse(module, x1, x2, sim):
    from torch.nn.functional import cosine_similarity, mse_loss

    return mse_loss(cosine_similarity(module(x1), module(x2)), sim)
