"""The torch modules behind the numeric tuners (imported only when a net is built)."""

from __future__ import annotations

import torch
from torch import nn

from ._training import activation_module


class ResidualHead(nn.Module):
    """``x -> S x + W2 act(W1 x)``: a fixed skip plus a learned correction that starts at zero.

    ``S`` is the identity when ``n_out == n_in`` and otherwise a fixed random orthogonal
    projection (a buffer, not trained). With ``W2`` initialised to zero the head starts out as
    the raw space (or its projection), so a few epochs of training move it toward the labels
    without first throwing away what the embedding already knew.
    """

    def __init__(self, n_in: int, n_out: int, activation: str = "relu"):
        super().__init__()
        skip = torch.eye(n_out, n_in)
        if n_in != n_out:
            nn.init.orthogonal_(skip)
        self.register_buffer("skip", skip)
        self.hidden = nn.Linear(n_in, n_out)
        self.act = activation_module(activation)
        self.out = nn.Linear(n_out, n_out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def out_features(self) -> int:
        return self.out.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.skip.T + self.out(self.act(self.hidden(x)))
