"""Supervised contrastive loss (Khosla et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SupConLoss"]


class SupConLoss(nn.Module):
    """Supervised contrastive loss on a batch of embeddings and their labels.

    For each anchor ``i`` with at least one other sample of its class, the loss is
    ``-mean_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )`` on
    L2-normalised embeddings ``z``; the batch loss is the mean over such anchors. Anchors
    without a positive are left out, and a batch with none gives ``0`` (still part of the graph).
    Computed in float32 with ``logsumexp``, so large logits (small ``temperature``), huge
    embeddings and zero embeddings (norms below 1e-6 count as zero) give finite values and
    gradients.

    Parameters
    ----------
    temperature : float, default=0.07

    Examples
    --------
    >>> import torch
    >>> from embetter_plug import SupConLoss
    >>> z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> loss = SupConLoss(temperature=0.5)(z, torch.tensor([0, 0, 1, 1]))
    >>> bool(loss < SupConLoss(temperature=0.5)(z, torch.tensor([0, 1, 0, 1])))
    True
    """

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.temperature = float(temperature)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (batch, dim), got shape {tuple(features.shape)}.")
        labels = labels.reshape(-1)
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} entries but features has "
                             f"{features.shape[0]} rows.")
        z = features.float()
        # scale rows with huge entries down first so that their squares do not overflow
        z = z / z.detach().abs().amax(dim=1, keepdim=True).clamp_min(1.0)
        z = F.normalize(z, dim=1, eps=1e-6)
        n = z.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
        pos = (labels[:, None] == labels[None, :]) & ~self_mask
        n_pos = pos.sum(dim=1)
        anchors = n_pos > 0
        if n < 2 or not bool(anchors.any()):
            return features.sum() * 0.0
        logits = (z @ z.T) / self.temperature
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos_log_prob = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        mean_pos = pos_log_prob[anchors] / n_pos[anchors]
        return -mean_pos.mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
