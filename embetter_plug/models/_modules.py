"""The torch modules behind the estimators: a residual MLP and a convolutional encoder over layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResidualMLP", "ContrastiveCNN", "mlp_widths", "cnn_channels"]


class _SafeBatchNorm:
    """Batch norm that, for a training batch with one value per channel (a last batch of one
    sample), normalises with the running statistics instead of failing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() // x.shape[1] <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)
        return super().forward(x)


class BatchNorm1d(_SafeBatchNorm, nn.BatchNorm1d):
    pass


class BatchNorm2d(_SafeBatchNorm, nn.BatchNorm2d):
    pass


def mlp_widths(input_dim: int, hidden_units: int | None = None) -> tuple[int, int, int]:
    """``(first, second, output-block)`` widths: ``clip(4*d, 128, 1024)``, half of it, ``max(64, second//4)``."""
    first = int(hidden_units) if hidden_units else min(max(4 * int(input_dim), 128), 1024)
    second = max(first // 2, 1)
    return first, second, max(64, second // 4)


def cnn_channels(n_layers: int, channels: int | None = None) -> tuple[int, int]:
    """``(c1, c2)`` with ``c1 = max(128, 4*n_layers)`` and ``c2 = max(256, 2*c1)``."""
    c1 = int(channels) if channels else max(128, 4 * int(n_layers))
    return c1, max(256, 2 * c1)


class ResidualMLP(nn.Module):
    """Residual MLP on flat features.

    ``x -> [Linear(d, w1) BN ReLU Dropout] -> [Linear(w1, w2) BN] (+ shortcut Linear(d, w2) BN)
    -> ReLU Dropout -> [Linear(w2, w3) BN ReLU Dropout] -> Linear(w3, n_outputs)``.
    """

    def __init__(self, input_dim: int, n_outputs: int = 1, hidden_units: int | None = None,
                 dropout: float = 0.2):
        super().__init__()
        w1, w2, w3 = mlp_widths(input_dim, hidden_units)
        self.fc1 = nn.Sequential(nn.Linear(input_dim, w1), BatchNorm1d(w1), nn.ReLU(), nn.Dropout(dropout))
        self.fc2 = nn.Sequential(nn.Linear(w1, w2), BatchNorm1d(w2))
        self.shortcut = nn.Sequential(nn.Linear(input_dim, w2), BatchNorm1d(w2))
        self.mix = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.out = nn.Sequential(nn.Linear(w2, w3), BatchNorm1d(w3), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(w3, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mix(self.fc2(self.fc1(x)) + self.shortcut(x))
        return self.out(h)


def _half(kernel):
    """Padding that keeps odd-sized axes (and grows an even kernel's axis by one)."""
    return tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2


class ContrastiveCNN(nn.Module):
    """Convolutional encoder over the layer axis of ``(batch, n_layers, n_parts, hidden)`` plus a head.

    The hidden axis is layer-normalised and becomes the channels. One part: a 1-D convolution
    along the layers (input ``(batch, hidden, n_layers)``). Several parts: a 2-D convolution with
    parts as height and layers as width (input ``(batch, hidden, n_parts, n_layers)``). The two
    axes are moved explicitly, never reshaped into each other.

    ``forward`` returns ``(logits, projection)``.
    """

    def __init__(self, n_layers: int, n_parts: int, hidden: int, n_outputs: int = 2,
                 channels: int | None = None, proj_dim: int = 128, dropout: float = 0.2):
        super().__init__()
        c1, c2 = cnn_channels(n_layers, channels)
        self.n_parts = int(n_parts)
        self.norm = nn.LayerNorm(hidden)
        if self.n_parts == 1:
            conv, bn, pool = nn.Conv1d, BatchNorm1d, nn.AdaptiveAvgPool1d(1)
            k1, k2 = 5, 3
        else:
            conv, bn, pool = nn.Conv2d, BatchNorm2d, nn.AdaptiveAvgPool2d(1)
            kh = min(3, self.n_parts)
            k1, k2 = (kh, 5), (kh, 3)
        self.encoder = nn.Sequential(
            conv(hidden, c1, k1, padding=_half(k1)), bn(c1), nn.ReLU(),
            conv(c1, c2, k2, padding=_half(k2)), bn(c2), nn.ReLU(),
            conv(c2, proj_dim, 1), nn.ReLU(),
            pool, nn.Flatten(), nn.Dropout(dropout),
        )
        self.head = nn.Sequential(
            nn.LayerNorm(proj_dim),  # the contrastive loss ignores the norm; keep the head's input scale fixed
            nn.Linear(proj_dim, 64), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(64, 32), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(32, n_outputs),
        )

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution input: hidden as channels, then (parts,) layers."""
        x = self.norm(x)  # (batch, layers, parts, hidden)
        if self.n_parts == 1:
            return x[:, :, 0, :].permute(0, 2, 1)  # (batch, hidden, layers)
        return x.permute(0, 3, 2, 1)  # (batch, hidden, parts, layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        proj = self.encoder(self.grid(x))
        return self.head(proj), proj
