"""PlugContrastiveCNN: a convolutional encoder over the layer axis, trained with CE + SupCon."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import ClassifierMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._modules import ContrastiveCNN
from .._constraints import NON_NEGATIVE_REAL, POSITIVE_INT, POSITIVE_REAL
from .training import (CLASS_WEIGHT, HIDDEN_UNITS, NET_CONSTRAINTS, ClassifierOutputsMixin,
                       PlugNetBase, store_params)
from .losses import SupConLoss

__all__ = ["PlugContrastiveCNN"]


class CrossEntropySupCon(nn.Module):
    """``cross_entropy(logits, y) + contrastive_weight * SupCon(projection, y)``."""

    def __init__(self, weight: torch.Tensor | None = None, temperature: float = 0.07,
                 contrastive_weight: float = 1.0):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=weight)
        self.supcon = SupConLoss(temperature)
        self.contrastive_weight = float(contrastive_weight)

    def forward(self, y_pred: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        logits, projection = y_pred
        loss = self.ce(logits, y)
        if self.contrastive_weight:
            loss = loss + self.contrastive_weight * self.supcon(projection, y)
        return loss


class PlugContrastiveCNN(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClassifierOutputsMixin,
                         ClassifierMixin, PlugNetBase):
    """Classifier that convolves along the layer axis of activations, with a contrastive loss.

    Reads the encoder's layout directly: ``(n, layers, parts, hidden)``, ``(n, layers, hidden)``
    (one part) or ``(n, hidden)`` (one layer, one part). Each vector is layer-normalised over
    ``hidden``; hidden becomes the channels of a 1-D convolution along the layers (one part) or of
    a 2-D convolution over parts x layers (kernel heights ``min(3, n_parts)``, widths 5 then 3),
    with ``c1 = max(128, 4*n_layers)`` and ``c2 = max(256, 2*c1)`` channels and a ``proj_dim``
    projection, then a small head (``proj_dim -> 64 -> 32 -> n_classes``). The loss is
    ``cross_entropy + contrastive_weight * SupConLoss(projection, y)``.

    ``transform(X)`` returns the L2-normalised projection, an embedding in which classes are
    pulled together (useful for bulk labelling or nearest-neighbour search).

    Parameters
    ----------
    temperature : float, default=0.07
        Temperature of :class:`SupConLoss`.
    contrastive_weight : float, default=1.0
        Weight of the contrastive term; 0 trains with cross-entropy only.
    module__channels : int or None, default=None
        ``c1``; ``None`` uses ``max(128, 4*n_layers)``.
    module__proj_dim : int, default=128
    module__dropout : float, default=0.2

    Notes
    -----
    The training parameters (``max_epochs``, ``lr``, ``batch_size``, ``optimizer``,
    ``lr_scheduler``, ``early_stopping``, ``patience``, ``validation_fraction``,
    ``class_weight``, ``callbacks``, ``device``, ``n_jobs``, ``random_state``, ``verbose``) are
    those of :class:`PlugClassifier`.

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import PlugContrastiveCNN
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 4, 3, 8)).astype("float32")
    >>> y = (X[:, 1, 0, :].sum(axis=1) > 0).astype(int)
    >>> cnn = PlugContrastiveCNN(max_epochs=2, module__proj_dim=16, random_state=0, n_jobs=1).fit(X, y)
    >>> cnn.transform(X[:5]).shape, cnn.predict(X[:5]).shape
    ((5, 16), (5,))
    """

    _module_cls = ContrastiveCNN
    _max_ndim = 4

    _parameter_constraints: dict = {
        **NET_CONSTRAINTS, "class_weight": CLASS_WEIGHT,
        "temperature": [POSITIVE_REAL], "contrastive_weight": [NON_NEGATIVE_REAL],
        "module__channels": HIDDEN_UNITS, "module__proj_dim": [POSITIVE_INT],
    }

    def __init__(self, *, max_epochs: int = 100, lr: float = 1e-3, batch_size: int = 128,
                 optimizer: Any = "adamw", lr_scheduler: str | None = "plateau",
                 early_stopping: bool = True, patience: int = 10, validation_fraction: float = 0.1,
                 class_weight: Any = None, temperature: float = 0.07, contrastive_weight: float = 1.0,
                 callbacks: list | None = None, device: Any = "auto", n_jobs: int | None = None,
                 random_state: Any = None, verbose: int = 0, module__channels: int | None = None, module__proj_dim: int = 128,
                 module__dropout: float = 0.2):
        store_params(self, locals())

    def fit(self, X, y) -> "PlugContrastiveCNN":
        """Train on activations ``X`` (2-, 3- or 4-D, see the class docstring) and labels ``y``."""
        self._check_params()
        X, y = self._check_X(X, y, reset=True)
        y_idx = self._encode_y(y)
        X4 = self._module_input(X)
        _, n_layers, n_parts, hidden = X4.shape
        return self._fit_net(X4, y_idx, {"n_layers": n_layers, "n_parts": n_parts, "hidden": hidden,
                                         "n_outputs": len(self.classes_)})

    @staticmethod
    def _module_input(X: np.ndarray) -> np.ndarray:
        if X.ndim == 2:
            return X[:, None, None, :]
        if X.ndim == 3:
            return X[:, :, None, :]
        return X

    def _criterion(self):
        return CrossEntropySupCon, {**self._class_weight_kwargs(), "temperature": self.temperature,
                                    "contrastive_weight": self.contrastive_weight}

    def transform(self, X) -> np.ndarray:
        """The learned projection, L2-normalised: float32 of shape ``(n, module__proj_dim)``."""
        check_is_fitted(self, "net_")
        proj = self._forward(self._module_input(self._check_X(X, reset=False)))[1]
        norm = np.linalg.norm(proj, axis=1, keepdims=True)
        return (proj / np.maximum(norm, 1e-12)).astype(np.float32)

    @property
    def _n_features_out(self) -> int:
        return int(self.module_kwargs_["proj_dim"])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
