"""LayerPooler: choose layers x parts of a 4-D activation array and combine them."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._constraints import Hidden, Indices, Selection, StrOptions, validate_estimator_params
from ._output import store_output_config, wrap_output
from .layout import ActivationLayout, layer_positions, select_positions

__all__ = ["LayerPooler"]

METHODS = ("concat", "mean", "max", "min", "sum", "select")
_NAME = re.compile(r"^layer(-?\d+)__(.+)__(\d+)$")


class LayerPooler(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Select layers and parts of ``(n, n_layers, n_parts, hidden)`` activations and combine them.

    A 3-D input is read as ``(n, n_layers, hidden)`` (one part) and a 2-D input as one layer and
    one part, so the pooler also sits behind any 2-D feature step.

    Parameters
    ----------
    layers : "all", int or list of int, default="all"
        Model block indices, always: read against the layout of the encoder's output (or
        ``layout``); a layer the input does not hold is an error naming the ones it does, and
        a negative index counts back from the last block present. A plain array without a
        layout (``np.asarray(X)``, ``X[:, 1:]``) does not say which blocks it holds: there
        ``"all"`` takes every position on its layer axis, and a block selection is an error
        (pass ``layout``, or slice the positions yourself and use ``"all"``).
    parts : "all", str, int or list of those, default="all"
        Part names as the encoder names them (``"resid_post"``, ``"mlp_out@mean"``; needs the
        encoder's output or ``layout``) or positions along the part axis.
    combine : {"concat", "mean", "max", "min", "sum", "select"}, default="concat"
        How the selected layers and parts become the output. ``concat`` flattens the selection
        to ``(n, n_sel_layers * n_sel_parts * hidden)``; ``mean``/``max``/``min``/``sum``
        reduce across the selected layers and parts to ``(n, hidden)``; ``select`` keeps the
        4-D array (for models that read the layer axis; it stays a NumPy array under
        ``set_output(transform="pandas")``).
    layout : ActivationLayout, default=None
        The layout of the input's axes, for an input that no longer carries it (e.g. the
        encoder's output saved with ``np.save``: ``layout=encoder.layout_``). ``None`` reads
        the layout the encoder's output carries. It must match the input's shape.
    method : str, default="deprecated"
        Former name of ``combine``.

        .. deprecated:: 0.2
           ``method`` was renamed ``combine`` and will be removed in the next release.

    Attributes
    ----------
    in_shape_ : tuple of int
        ``(n_layers, n_parts, hidden)`` seen in ``fit``.
    combine_ : str
        The ``combine`` used (``method``'s value while that is still given).
    layer_idx_, part_idx_ : ndarray of int
        Selected positions.
    axis_names_ : tuple of (list of str, list of str) or None
        Layer and part labels for feature names, read from the encoder's output
        (:class:`~embetter_plug.layout.Activations`) or ``layout``; ``None`` for a plain array,
        whose features are named by position (``layer{position}__part{position}__{i}``).

    Examples
    --------
    >>> import numpy as np
    >>> from embetter_plug import LayerPooler
    >>> from embetter_plug.layout import ActivationLayout
    >>> X = np.random.default_rng(0).normal(size=(5, 4, 3, 8))   # a plain array: no layout
    >>> LayerPooler(parts=0).fit_transform(X).shape               # every layer position
    (5, 32)
    >>> LayerPooler(combine="mean").fit_transform(X).shape
    (5, 8)
    >>> layout = ActivationLayout(layers=(0, 3, 6, 9), parts=("resid_post", "attn_out", "mlp_out"),
    ...                           hidden_size=8)                   # the blocks X holds
    >>> LayerPooler(layers=[3, 6], parts="mlp_out", layout=layout).fit(X).get_feature_names_out()[:2]
    array(['layer3__mlp_out__0', 'layer3__mlp_out__1'], dtype=object)
    """

    _parameter_constraints: dict = {
        "layers": [Indices("layers")],
        "parts": [Selection("parts", "part")],
        "combine": [StrOptions(set(METHODS))],
        "layout": [None, ActivationLayout],
        "method": [StrOptions(set(METHODS)), Hidden(StrOptions({"deprecated"}))],
    }

    def __init__(self, layers: Any = "all", parts: Any = "all", combine: str = "concat", *,
                 layout: ActivationLayout | None = None, method: str = "deprecated"):
        self.layers = layers
        self.parts = parts
        self.combine = combine
        self.layout = layout
        self.method = method

    def fit(self, X, y=None):
        """Check the selection against ``X``'s shape and layout."""
        validate_estimator_params(self)
        combine = self.combine
        if not (isinstance(self.method, str) and self.method == "deprecated"):
            warnings.warn("LayerPooler's `method` was renamed `combine` and will be removed in "
                          f"the next release; use combine={self.method!r}.", FutureWarning,
                          stacklevel=2)
            combine = self.method
        carried = getattr(X, "layout", None)  # set on the encoder's own output
        X4 = self._as_4d(X, reset=True)
        self.in_shape_ = tuple(int(s) for s in X4.shape[1:])
        self.combine_ = combine
        layout = self._layout(carried)
        self.axis_names_ = None
        layer_blocks = None
        part_labels = [f"part{j}" for j in range(self.in_shape_[1])]
        if layout is not None:
            self.axis_names_ = ([f"layer{l}" for l in layout.layers], list(layout.parts))
            layer_blocks, part_labels = list(layout.layers), list(layout.parts)
        elif not isinstance(self.parts, (str, int)) or isinstance(self.parts, str) \
                and self.parts != "all":
            if any(isinstance(p, str) for p in ([self.parts] if isinstance(self.parts, str)
                                                else list(self.parts))):
                raise ValueError(
                    f"parts={self.parts!r} names parts, but this input carries no part names "
                    "(only the encoder's own output does); pass layout= with its layout, or "
                    f"give part positions 0..{self.in_shape_[1] - 1} instead."
                )
        self.layer_idx_ = np.asarray(layer_positions(self.layers, layer_blocks, self.in_shape_[0],
                                                     owner="LayerPooler"))
        self.part_idx_ = np.asarray(select_positions(self.parts, part_labels,
                                                     name="parts", what="part"))
        return self

    def _layout(self, carried: ActivationLayout | None) -> ActivationLayout | None:
        """The layout describing the input: ``layout`` if given (it must agree with the one the
        input carries), else the carried one."""
        if self.layout is None:
            return carried if carried is not None and carried.shape == self.in_shape_ else None
        if carried is not None and (carried.layers, carried.parts) != (self.layout.layers,
                                                                       self.layout.parts):
            raise ValueError(
                f"layout= names blocks {list(self.layout.layers)} and parts "
                f"{list(self.layout.parts)}, but X carries its own layout with blocks "
                f"{list(carried.layers)} and parts {list(carried.parts)}; drop layout= (X's "
                "own is used) or pass the one that describes X.")
        if tuple(self.layout.shape) != self.in_shape_:
            raise ValueError(
                f"layout= describes samples of shape {tuple(self.layout.shape)} (layers x parts "
                f"x hidden), but X's samples have shape {self.in_shape_}; pass the layout of "
                "this array (a slice of the encoder's output no longer matches its layout_).")
        return self.layout

    def transform(self, X):
        """Combine the selected layers and parts of ``X``; see ``combine``."""
        check_is_fitted(self, "in_shape_")
        return wrap_output(self, self._pool(X), X, self.get_feature_names_out)

    def set_output(self, *, transform: str | None = None) -> "LayerPooler":
        """Output container of ``transform``: ``"default"``, ``"pandas"`` or ``"polars"``.

        ``combine="select"`` keeps 4-D output, which stays a NumPy array.
        """
        return store_output_config(self, transform)

    def _pool(self, X) -> np.ndarray:
        X = check_array(X, allow_nd=True, dtype=[np.float32, np.float64])
        shape = {3: (X.shape[1], 1, X.shape[-1]), 4: X.shape[1:]}.get(X.ndim)
        if shape is not None and tuple(shape) != self.in_shape_:
            raise ValueError(
                f"X has per-sample shape {X.shape[1:]}, but the pooler was fitted on "
                f"{self.in_shape_}; refit it or pass activations with the same layout."
            )
        X4 = self._as_4d(X, reset=False)
        sel = X4[:, self.layer_idx_][:, :, self.part_idx_]
        if self.combine_ == "select":
            return sel
        if self.combine_ == "concat":
            return sel.reshape(len(sel), -1)
        flat = sel.reshape(len(sel), -1, sel.shape[-1])
        return getattr(np, self.combine_)(flat, axis=1)

    def _as_4d(self, X, reset: bool) -> np.ndarray:
        X = validate_data(self, X, reset=reset, allow_nd=True, dtype=[np.float32, np.float64],
                          ensure_min_features=1)
        if X.ndim == 2:
            return X[:, None, None, :]
        if X.ndim == 3:
            return X[:, :, None, :]
        if X.ndim == 4:
            return X
        raise ValueError(f"LayerPooler expects 2-, 3- or 4-D input, got {X.ndim}-D of shape {X.shape}.")

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Readable names, e.g. ``layer3__mlp_out__17`` (labels parsed from the encoder's names)."""
        check_is_fitted(self, "in_shape_")
        L, P, H = self.in_shape_
        layer_labels = [f"layer{i}" for i in range(L)]
        part_labels = [f"part{j}" for j in range(P)]
        if getattr(self, "axis_names_", None) is not None:
            layer_labels, part_labels = self.axis_names_
        if input_features is not None and len(input_features) == L * P * H:
            parsed = [_NAME.match(str(f)) for f in np.asarray(input_features)[::H]]
            if all(parsed):
                layer_labels = [f"layer{m.group(1)}" for m in parsed[::P]]
                part_labels = [m.group(2) for m in parsed[:P]]
        if self.combine_ in ("concat", "select"):
            return np.asarray([f"{layer_labels[l]}__{part_labels[p]}__{i}" for l in self.layer_idx_
                               for p in self.part_idx_ for i in range(H)], dtype=object)
        return np.asarray([f"{self.combine_}__{i}" for i in range(H)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
