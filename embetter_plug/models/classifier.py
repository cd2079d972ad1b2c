"""PlugClassifier: the residual MLP of Plug as a scikit-learn classifier trained by skorch."""

from __future__ import annotations

from typing import Any

from sklearn.base import ClassifierMixin
from torch import nn

from ._modules import ResidualMLP
from .training import (CLASS_WEIGHT, HIDDEN_UNITS, NET_CONSTRAINTS, ClassifierOutputsMixin,
                       PlugNetBase, store_params)

__all__ = ["PlugClassifier"]


class PlugClassifier(ClassifierOutputsMixin, ClassifierMixin, PlugNetBase):
    """Residual MLP classifier on activation features, trained with skorch.

    Inputs with more than two axes (e.g. ``(n, layers, parts, hidden)``) are flattened; the
    input width is read from the data in ``fit``, so changing the pooler's layers inside a
    grid search needs no other change. Widths follow Plug: ``w1 = clip(4*d, 128, 1024)``,
    ``w2 = w1 // 2``, an input shortcut of width ``w2``, an output block of width
    ``max(64, w2 // 4)``; ReLU, batch norm and dropout throughout; cross-entropy loss.

    Parameters
    ----------
    max_epochs : int, default=100
    lr : float, default=1e-3
    batch_size : int, default=128
    optimizer : {"adamw", "adam", "sgd"} or torch.optim.Optimizer subclass, default="adamw"
    lr_scheduler : {"plateau", "cosine", None}, default="plateau"
        ``"plateau"`` halves the learning rate when the validation loss stalls for
        ``patience // 2`` epochs; ``"cosine"`` anneals it over ``max_epochs``.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of ``fit``'s rows (stratified), monitor their ROC-AUC
        (one-vs-rest macro for several classes), stop after ``patience`` epochs without
        improvement and restore the best epoch's weights.
    patience : int, default=10
    validation_fraction : float, default=0.1
    class_weight : None, "balanced" or dict, default=None
        Weights of the cross-entropy per class (keys are the original labels).
    callbacks : list of skorch callbacks or (name, callback) pairs, default=None
        Each callback an instance or a ``skorch.callbacks.Callback`` subclass.
        Added after the built-in ones (``valid_auc``, ``early_stopping``, ``lr_scheduler``).
    device : str, default="auto"
        ``"auto"`` picks CUDA, then MPS, then CPU.
    n_jobs : int or None, default=None
        CPU threads torch uses in ``fit`` and ``predict`` (set, then restored); ``None`` keeps
        torch's setting, ``-1`` uses every core. One thread is often fastest for small nets.
    random_state : int, RandomState or None, default=None
        Seeds weights, shuffling, dropout and the validation split (deterministic on CPU).
    verbose : int, default=0
        1 shows one tqdm bar over the epochs (with the last epoch's losses); 2 also shows
        skorch's bar over each epoch's batches. The epoch table goes to the ``embetter_plug``
        logger whatever ``verbose`` is.
    module__hidden_units : int or None, default=None
        First hidden width; ``None`` uses ``clip(4*d, 128, 1024)``.
    module__dropout : float, default=0.2

    Attributes
    ----------
    classes_ : ndarray
    net_ : skorch.NeuralNetClassifier
        The trained net on the class indices ``0..n_classes-1`` (``net_.predict`` gives indices
        into ``classes_``; ``net_.history`` holds the per-epoch losses and scores).
    input_shape_ : tuple of int
    module_kwargs_ : dict
    validation_indices_ : ndarray or None
        Rows of ``fit``'s ``X`` used for early stopping.
    best_epoch_, n_epochs_ : int
        Epoch whose weights were kept, and epochs run.

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import PlugClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 3, 2, 8)).astype("float32")
    >>> y = np.where(X[:, 0, 0, 0] > 0, "pos", "neg")
    >>> clf = PlugClassifier(max_epochs=3, random_state=0, n_jobs=1).fit(X, y)
    >>> clf.predict_proba(X[:4]).shape, clf.classes_.tolist()
    ((4, 2), ['neg', 'pos'])
    """

    _module_cls = ResidualMLP

    _parameter_constraints: dict = {**NET_CONSTRAINTS, "class_weight": CLASS_WEIGHT,
                                     "module__hidden_units": HIDDEN_UNITS}

    def __init__(self, *, max_epochs: int = 100, lr: float = 1e-3, batch_size: int = 128,
                 optimizer: Any = "adamw", lr_scheduler: str | None = "plateau",
                 early_stopping: bool = True, patience: int = 10, validation_fraction: float = 0.1,
                 class_weight: Any = None, callbacks: list | None = None, device: Any = "auto",
                 n_jobs: int | None = None, random_state: Any = None, verbose: int = 0,
                 module__hidden_units: int | None = None, module__dropout: float = 0.2):
        store_params(self, locals())

    def fit(self, X, y) -> "PlugClassifier":
        """Train on ``X`` (2-D or more axes, flattened) and labels ``y`` of any kind."""
        self._check_params()
        X, y = self._check_X(X, y, reset=True)
        y_idx = self._encode_y(y)
        Xf = self._module_input(X)
        return self._fit_net(Xf, y_idx, {"input_dim": Xf.shape[1], "n_outputs": len(self.classes_)})

    def _criterion(self):
        return nn.CrossEntropyLoss, self._class_weight_kwargs()
