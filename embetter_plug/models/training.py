"""Shared skorch plumbing of the estimators: parameters, internal split, callbacks, seeding."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from skorch import NeuralNet, NeuralNetClassifier
from skorch.callbacks import EarlyStopping, EpochScoring, LRScheduler, ProgressBar
from sklearn.base import BaseEstimator
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .._constraints import (CALLBACKS, FRACTION, POSITIVE_INT, POSITIVE_REAL, Device, Interval,
                            Options, StrOptions, SubclassOf, validate_estimator_params)
from .._utils import logger, resolve_device, seed_from_random_state
from .callbacks import EpochProgressBar, RefreshBatchNorm, TrackedSplit, log_plain, valid_roc_auc

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


# What every skorch-backed estimator accepts; subclasses add their own ``module__*`` and loss
# parameters (see ``_parameter_constraints`` of each).
NET_CONSTRAINTS = {
    "max_epochs": [POSITIVE_INT],
    "lr": [POSITIVE_REAL],
    "batch_size": [POSITIVE_INT],
    "optimizer": [StrOptions(set(OPTIMIZERS)),
                  SubclassOf(torch.optim.Optimizer, "a torch.optim.Optimizer subclass")],
    "lr_scheduler": [StrOptions({"plateau", "cosine"}), None],
    "early_stopping": ["boolean"],
    "patience": [POSITIVE_INT],
    "validation_fraction": [FRACTION],
    "callbacks": [CALLBACKS],
    "device": [Device()],
    "n_jobs": [None, POSITIVE_INT, Options(Integral, {-1})],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "module__dropout": [Interval(Real, 0, 1, closed="left")],
}
CLASS_WEIGHT = [StrOptions({"balanced"}), dict, None]
HIDDEN_UNITS = [None, POSITIVE_INT]


def store_params(estimator: BaseEstimator, params: dict[str, Any]) -> None:
    """Store ``__init__``'s arguments verbatim as attributes (``params`` is its ``locals()``)."""
    for name in estimator._get_param_names():
        setattr(estimator, name, params[name])


def softmax_output(y: torch.Tensor) -> torch.Tensor:
    """skorch ``predict_nonlinearity`` of the classifiers: softmax over the logits."""
    return torch.softmax(y, dim=-1)


@contextmanager
def seeded(seed: int, device: torch.device):
    """Seed torch's generators for the block and restore the caller's state afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def torch_threads(n_jobs: int | None):
    """Run the block with ``n_jobs`` torch CPU threads (``None``: unchanged; -1: all cores)."""
    if n_jobs is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads((os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ClassifierNet(NeuralNetClassifier):
    """skorch's ``NeuralNetClassifier`` on class indices ``0..n_classes-1``: ``predict`` gives
    indices, ``predict_proba`` the softmax of the module's first output, so skorch's scoring
    callbacks (``EpochScoring("accuracy")``, ``"f1"``, ``"roc_auc"``) work. Its epoch table
    has the columns of a plain ``NeuralNet`` (no extra ``valid_acc``)."""

    @property
    def _default_callbacks(self):
        return NeuralNet._default_callbacks.fget(self)


class PlugNetBase(BaseEstimator):
    """Base of the skorch-backed estimators.

    Subclasses define ``__init__`` (skorch's names plus ``module__*`` architecture parameters)
    and ``_module_cls``; this class checks parameters and inputs, builds the ``skorch.NeuralNet``
    with its callbacks and internal validation split, and runs it seeded.
    """

    _module_cls: type = None  # set by subclasses
    _max_ndim: int | None = None  # None: any number of axes
    _task = "classifier"

    # ------------------------------------------------------------------ parameters
    def set_params(self, **params):
        """Like scikit-learn's, and also accepts the ``module__*`` architecture parameters."""
        own = set(self._get_param_names())
        for key in [k for k in params if k in own]:
            setattr(self, key, params.pop(key))
        bad = [k for k in params if k.startswith("module__")]
        if bad:
            valid = sorted(k for k in own if k.startswith("module__"))
            raise ValueError(f"Invalid parameter(s) {bad} for {type(self).__name__}; valid "
                             f"module parameters are {valid}.")
        return super().set_params(**params) if params else self

    def _module_params(self) -> dict[str, Any]:
        return {k[len("module__"):]: getattr(self, k) for k in self._get_param_names()
                if k.startswith("module__")}

    def _check_params(self) -> None:
        validate_estimator_params(self)

    def _check_module_builds(self) -> None:
        """Build the module once on the meta device (no memory, no random numbers drawn) so that
        its constructor's errors name the ``module__*`` parameters before any training."""
        try:
            with torch.device("meta"):
                self._module_cls(**self.module_kwargs_)
        except Exception as exc:
            given = ", ".join(f"module__{k}={v!r}" for k, v in self._module_params().items())
            raise ValueError(
                f"{type(self).__name__}: could not build {self._module_cls.__name__} with the module "
                f"parameters {given or '(none given)'} (and the sizes read from X); check their values "
                f"against {self._module_cls.__name__}'s signature: {exc}") from exc

    # ------------------------------------------------------------------ inputs
    def _check_X(self, X, y=None, *, reset: bool):
        """Validate ``X`` (and ``y`` in fit); returns float32 arrays with ``X``'s own shape."""
        shape = tuple(getattr(X, "shape", ()))
        # before sklearn's check, which counts only axis 1: compare whole per-sample shapes
        # whenever either side has more than one axis per sample
        if not reset and len(shape) >= 2 and max(len(shape) - 1, len(self.input_shape_)) > 1:
            self._check_shape(shape[1:])
        kw = dict(allow_nd=True, dtype=[np.float32, np.float64], ensure_all_finite=True)
        if y is not None or reset:
            X, y = validate_data(self, X, y, reset=True, y_numeric=self._task == "regressor", **kw)
        else:
            X = validate_data(self, X, reset=False, **kw)
        if self._max_ndim is not None and X.ndim > self._max_ndim:
            raise ValueError(f"{type(self).__name__} expects an array with 2 to {self._max_ndim} axes, got "
                             f"{X.ndim}-D input of shape {X.shape}.")
        if reset:
            self.input_shape_ = tuple(int(s) for s in X.shape[1:])
        else:
            self._check_shape(X.shape[1:])
        # validation returns views (e.g. X[::-1]) as they are; torch needs non-negative strides
        X = np.ascontiguousarray(X, dtype=np.float32)
        return (X, y) if reset else X

    def _check_shape(self, shape) -> None:
        if tuple(shape) != self.input_shape_:
            raise ValueError(f"X has per-sample shape {tuple(shape)}, but {type(self).__name__} "
                             f"was fitted on per-sample shape {self.input_shape_}; pass "
                             "activations with the same layers, parts and hidden size as in fit.")

    @staticmethod
    def _module_input(X: np.ndarray) -> np.ndarray:
        """``X`` in the module's layout (default: flattened to ``(n, features)``)."""
        return X.reshape(len(X), -1)

    # ------------------------------------------------------------------ the skorch net
    def _criterion(self):
        """``(criterion class, criterion kwargs)`` for the fitted problem."""
        raise NotImplementedError

    def _make_net(self, *, train_split=None, callbacks=(), device="cpu") -> NeuralNet:
        optimizer = OPTIMIZERS.get(self.optimizer, self.optimizer)
        criterion, criterion_kwargs = self._criterion()
        if self._task == "classifier":
            net_cls, task_kwargs = ClassifierNet, {
                "predict_nonlinearity": softmax_output,
                "classes": list(range(self.module_kwargs_["n_outputs"]))}
        else:
            net_cls, task_kwargs = NeuralNet, {"predict_nonlinearity": None}
        return net_cls(
            self._module_cls, criterion=criterion, optimizer=optimizer, lr=self.lr,
            max_epochs=self.max_epochs, batch_size=self.batch_size, train_split=train_split,
            callbacks=list(callbacks), device=str(device), verbose=int(bool(self.verbose)),
            iterator_train__shuffle=True, callbacks__print_log__sink=log_plain, **task_kwargs,
            **{f"module__{k}": v for k, v in self.module_kwargs_.items()},
            **{f"criterion__{k}": v for k, v in criterion_kwargs.items()},
        )

    def _train_split(self, y: np.ndarray, seed: int):
        if not self.early_stopping:
            return None
        frac, n = float(self.validation_fraction), len(y)
        n_val = math.ceil(frac * n)
        stratified = self._task == "classifier"
        if stratified:
            counts = np.bincount(y)
            ok = counts.min() >= 2 and min(n_val, n - n_val) >= len(counts)
        else:
            ok = n_val >= 2 and n - n_val >= 2
        if not ok:
            logger.warning("%s: %d rows are too few for a validation split of %.2f%s; training "
                           "without early stopping.", type(self).__name__, n, frac,
                           " with every class on both sides" if stratified else "")
            return None
        return TrackedSplit(frac, stratified=stratified, random_state=seed)

    def _callbacks(self, has_valid: bool) -> list:
        cbs = []
        classifier = self._task == "classifier"
        if has_valid and classifier:
            cbs.append(("valid_auc", EpochScoring(valid_roc_auc, lower_is_better=False,
                                                  name="valid_auc", on_train=False)))
        if self.verbose:  # after the epoch's scores, before early stopping can end training
            cbs.append(("epoch_progress_bar", EpochProgressBar(type(self).__name__)))
            if _is_int(self.verbose) and self.verbose >= 2:
                cbs.append(("progress_bar", ProgressBar()))  # skorch's bar over each epoch's batches
        if has_valid:
            cbs.append(("early_stopping", EarlyStopping(
                monitor="valid_auc" if classifier else "valid_loss", lower_is_better=not classifier,
                patience=self.patience, load_best=True, sink=logger.info)))
        loss = "valid_loss" if has_valid else "train_loss"
        if self.lr_scheduler == "plateau":
            cbs.append(("lr_scheduler", LRScheduler(
                policy="ReduceLROnPlateau", monitor=loss, factor=0.5,
                patience=max(1, self.patience // 2))))
        elif self.lr_scheduler == "cosine":
            cbs.append(("lr_scheduler", LRScheduler(policy="CosineAnnealingLR", T_max=self.max_epochs)))
        cbs.append(("refresh_batch_norm", RefreshBatchNorm(self.batch_size)))
        return cbs + list(self.callbacks or [])

    def _fit_net(self, X: np.ndarray, y: np.ndarray, module_kwargs: dict[str, Any]):
        """Build and train the skorch net on ``(X, y)`` (already in the module's layout)."""
        self.device_ = resolve_device(self.device)
        self.module_kwargs_ = {**module_kwargs, **self._module_params()}
        self._check_module_builds()
        seed = seed_from_random_state(self.random_state)
        split = self._train_split(y if self._task == "classifier" else np.zeros(len(y)), seed)
        net = self._make_net(train_split=split, callbacks=self._callbacks(split is not None),
                             device=self.device_)
        with seeded(seed, self.device_), torch_threads(self.n_jobs):
            net.fit(X, y)
        self.net_ = net
        self.validation_indices_ = getattr(split, "valid_indices_", None)
        stopper = dict(net.callbacks_).get("early_stopping")
        last = int(net.history[-1, "epoch"])
        self.best_epoch_ = int(stopper.best_epoch_) if stopper is not None and stopper.best_epoch_ else last
        self.n_epochs_ = last
        return self

    def _forward(self, X: np.ndarray):
        """Module outputs for ``X`` (in the module's layout), as float64 NumPy arrays."""
        with torch.no_grad(), torch_threads(self.n_jobs):
            out = self.net_.forward(X, training=False)
        if isinstance(out, tuple):
            return tuple(o.double().numpy() for o in out)
        return out.double().numpy()


class ClassifierOutputsMixin:
    """``decision_function``, ``predict_proba`` and ``predict`` from the module's logits."""

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self, "net_")
        out = self._forward(self._module_input(self._check_X(X, reset=False)))
        return out[0] if isinstance(out, tuple) else out

    def decision_function(self, X) -> np.ndarray:
        """Logits: ``(n,)`` (class 1 minus class 0) for two classes, else ``(n, n_classes)``."""
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, ``(n, n_classes)``, columns in the order of ``classes_``."""
        return softmax(self._logits(X), axis=1)

    def predict(self, X) -> np.ndarray:
        """Predicted labels, of the same kind as the ``y`` passed to ``fit``."""
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def _encode_y(self, y) -> np.ndarray:
        """Set ``classes_`` and ``class_weight_`` and return ``y`` as class indices (int64)."""
        check_classification_targets(y)
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two classes in y to train; "
                             f"y holds only one class ({_plain(self.classes_[0])!r}).")
        self.class_weight_ = None if self.class_weight is None else compute_class_weight(
            self.class_weight, classes=self.classes_, y=y).astype(np.float32)
        return y_idx.astype(np.int64).ravel()

    def _class_weight_kwargs(self) -> dict[str, Any]:
        if getattr(self, "class_weight_", None) is None:
            return {}
        return {"weight": torch.as_tensor(np.asarray(self.class_weight_, dtype=np.float32))}


def _plain(value: Any) -> Any:
    """A NumPy scalar as the matching Python scalar (for readable messages and JSON)."""
    return value.item() if isinstance(value, np.generic) else value
