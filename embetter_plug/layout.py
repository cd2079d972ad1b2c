"""The axes of an activation array: ``(sample, layer, part, hidden)``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["ActivationLayout", "Activations"]


@dataclass(frozen=True)
class ActivationLayout:
    """Names along the axes of a ``(n_samples, n_layers, n_parts, hidden_size)`` array.

    Parameters
    ----------
    layers : tuple of int
        Model layer (block) index of each position on the layer axis.
    parts : tuple of str
        Name of each position on the part axis, e.g. ``"resid_post"`` or ``"mlp_out@mean"``.
    hidden_size : int
    meta : dict
        How the activations were made (model, token pooling, dtype, ...), JSON-serialisable.

    Examples
    --------
    >>> from embetter_plug.layout import ActivationLayout
    >>> lay = ActivationLayout(layers=(0, 5), parts=("resid_post",), hidden_size=2)
    >>> lay.feature_names()
    ['layer0__resid_post__0', 'layer0__resid_post__1', 'layer5__resid_post__0', 'layer5__resid_post__1']
    """

    layers: tuple[int, ...]
    parts: tuple[str, ...]
    hidden_size: int
    meta: dict = field(default_factory=dict, compare=False)

    dims = ("sample", "layer", "part", "hidden")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one sample: ``(n_layers, n_parts, hidden_size)``."""
        return (len(self.layers), len(self.parts), self.hidden_size)

    def feature_names(self) -> list[str]:
        """Names of the flattened (C-order) features, ``layer{l}__{part}__{i}``."""
        return [
            f"layer{l}__{p}__{i}" for l in self.layers for p in self.parts
            for i in range(self.hidden_size)
        ]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"], d["parts"] = list(self.layers), list(self.parts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ActivationLayout":
        return cls(layers=tuple(int(x) for x in d["layers"]), parts=tuple(d["parts"]),
                   hidden_size=int(d["hidden_size"]), meta=dict(d.get("meta", {})))

    def check(self, X: np.ndarray) -> None:
        """Raise if ``X`` does not have this layout's shape."""
        if X.ndim != 4 or tuple(X.shape[1:]) != self.shape:
            raise ValueError(
                f"array of shape {X.shape} does not match the layout (n, {', '.join(map(str, self.shape))})."
            )


class Activations(np.ndarray):
    """The encoder's 4-D output: a NumPy array that also carries its ``layout`` and the
    ``index`` of the texts it came from (a pandas input's index, else ``None``).

    A later step such as :class:`~embetter_plug.LayerPooler` reads them to name its features by
    model layer and part and to keep the texts' index under ``set_output(transform="pandas")``.
    Any view, copy or result computed from it carries neither (both are ``None``): they would
    no longer describe its rows and axes.
    """

    layout: ActivationLayout | None = None
    index: Any = None

    @classmethod
    def of(cls, array: np.ndarray, layout: ActivationLayout, index: Any = None) -> "Activations":
        out = np.asarray(array).view(cls)
        out.layout = layout
        out.index = index if index is not None and len(index) == len(out) else None
        return out

    def __array_finalize__(self, obj) -> None:
        self.layout = None
        self.index = None
