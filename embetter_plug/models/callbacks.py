"""The skorch callbacks and split of the Plug models: validation AUC, a split that remembers
its rows, batch-norm refresh and a progress bar over epochs."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.dataset import ValidSplit
from sklearn.metrics import log_loss, roc_auc_score
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from .._utils import logger

__all__ = ["EpochProgressBar", "RefreshBatchNorm", "TrackedSplit", "log_plain", "valid_roc_auc"]

_ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


def log_plain(text: str) -> None:
    """Sink of skorch's epoch table: the ``embetter_plug`` logger at INFO, with skorch's
    terminal colour codes (which mark each column's best value) removed."""
    logger.info(_ANSI_CODE.sub("", text))


def valid_roc_auc(net: NeuralNet, X: Any, y: Any) -> float:
    """Validation ROC-AUC: one-vs-rest macro over the classes present (binary AUC for two).

    Where the validation rows hold a single class, AUC is undefined and the negative
    log-loss is returned instead (the same rows are scored every epoch, so the monitored
    quantity stays comparable within one fit).
    """
    proba = np.asarray(net.predict_proba(X), dtype=np.float64)
    y = np.asarray(y).astype(np.int64).ravel()
    present = [k for k in range(proba.shape[1]) if 0 < np.sum(y == k) < len(y)]
    if not present:
        return -float(log_loss(y, proba, labels=np.arange(proba.shape[1])))
    return float(np.mean([roc_auc_score(y == k, proba[:, k]) for k in present]))


class TrackedSplit(ValidSplit):
    """skorch's ``ValidSplit`` on a fraction of ``fit``'s rows that remembers the rows it held out."""

    def __call__(self, dataset, y=None, groups=None):
        train, valid = super().__call__(dataset, y=y, groups=groups)
        self.valid_indices_ = np.asarray(valid.indices)
        return train, valid


class RefreshBatchNorm(Callback):
    """At the end of training, after the best weights are restored, recompute the running
    statistics of every batch-norm layer with those final weights over ``fit``'s rows.

    During training the running averages lag behind the changing weights; for an early
    epoch restored by early stopping they can be far off and skew every prediction.
    """

    def __init__(self, batch_size: int = 128):
        self.batch_size = batch_size

    def on_train_end(self, net, X=None, y=None, **kwargs):
        if X is None or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                for m in net.module_.modules()):
            return
        loader = DataLoader(TensorDataset(torch.as_tensor(X)), batch_size=self.batch_size)
        update_bn(loader, net.module_, device=net.device)


class EpochProgressBar(Callback):
    """One tqdm bar over ``max_epochs`` for a whole ``fit``, with the last epoch's losses (and
    validation AUC) as its postfix; it closes where training ends (early stopping included)."""

    keys = ("train_loss", "valid_loss", "valid_auc")

    def __init__(self, desc: str | None = None):
        self.desc = desc

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        from tqdm.auto import tqdm

        self.pbar_ = tqdm(total=net.max_epochs, desc=self.desc, unit="epoch")

    def on_epoch_end(self, net, **kwargs):
        row = net.history[-1]
        self.pbar_.set_postfix({k: f"{row[k]:.4f}" for k in self.keys if k in row}, refresh=False)
        self.pbar_.update()

    def on_train_end(self, net, X=None, y=None, **kwargs):
        self.pbar_.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("pbar_", None)  # tqdm bars do not pickle
        return state
