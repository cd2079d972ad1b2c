"""TransformerTuner: fine-tune a transformer end to end on labels, inside a Pipeline."""

from __future__ import annotations

import copy
import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..arch import blocks as _arch
from ..extraction.loading import (load_config, load_model, load_processor, load_tokenizer,
                                  resolve_model_source)
from .._constraints import (CALLBACKS, FRACTION, NON_NEGATIVE_REAL, POSITIVE_INT, POSITIVE_REAL, Device,
                            Interval, Options, StrOptions, TokenPoolings, validate_estimator_params)
from ..extraction.token_pooling import validate_pooling
from .._utils import logger, resolve_device, seed_from_random_state
from ..models.callbacks import EpochProgressBar, TrackedSplit, log_plain
from ..models.training import ClassifierNet, seeded, softmax_output, torch_threads
from .finetune_io import pickle_state, unpickle_state
from ._finetune_images import check_model_inputs, check_tuner_inputs, patch_count, pixel_values
from ._finetune_net import (BucketedLoader, FineTuneLoss, FineTuneModule, WarmupLinear, bf16_is_fast,
                            fused_adamw_ok, layer_groups, sorted_forward, tokenize)
from ._labels import update_classes

__all__ = ["TransformerTuner"]


class _TunerNet(ClassifierNet):
    """The classifier net over the trainable parameters only (frozen ones get no optimizer state)."""

    def get_all_learnable_params(self):
        for name, param in self.module_.named_parameters():
            if param.requires_grad:
                yield name, param


class TransformerTuner(ClassNamePrefixFeaturesOutMixin, ClassifierMixin, TransformerMixin,
                       BaseEstimator):
    """Fine-tune a transformer end to end on labelled texts (or images), with a linear head.

    ``fit(texts, y)`` trains a copy of ``model`` (the one you pass is never changed) with its
    token-pooled last hidden state feeding a linear head, on cross-entropy (plus a supervised
    contrastive term with ``supcon > 0``). ``transform`` returns the tuned pooled embeddings,
    so ``LogisticRegression``, :class:`~embetter_plug.PlugClassifier` or
    :class:`~embetter_plug.LabellingMap` can sit on top; ``predict``/``predict_proba`` use the
    head. Training runs on skorch: early stopping on a stratified split of the training rows
    with the best epoch restored, and your skorch ``callbacks``.

    The defaults are the cheap settings measured in ``benchmarks/bench_quality.py``: the word
    embeddings stay frozen, batches group texts of similar length, AdamW is fused where torch
    has it, the learning rate warms up over the first 10% of steps and then decays linearly,
    and bf16 autocast is used where this machine computes bf16 natively.

    A vision encoder (ViT, DINOv2, CLIP/SigLIP vision models) is fine-tuned the same way on
    images (PIL images, paths, arrays, in the forms :mod:`embetter_plug.inputs.samples` lists), read
    by its image processor (``processor=``) instead of a tokenizer and pooled as the encoder
    pools a vision encoder (``"auto"``: the mean over the patches, ``"cls"``: the class token).

    Parameters
    ----------
    model : str, path, transformers model or None, default=None
        Hub name, local folder or loaded bare model; ``None`` is the built-in all-MiniLM-L6-v2.
    tokenizer : str, path, tokenizer or None, default=None
        ``None``: the model's own.
    processor : str, path, image processor or None, default=None
        A vision encoder's image processor; ``None``: the model's own (from its folder).
    token_pooling : str or float, default="auto"
        One pooling of :mod:`embetter_plug.extraction.token_pooling` (``mean``, ``cls``, ``lasttoken``,
        ``image:mean`` ...); ``"auto"`` is ``lasttoken`` for decoders, ``mean`` for encoders,
        ``image:mean`` (the patches, without the class token) for vision encoders.
    lr : float, default=1e-4
        Peak learning rate (of the head, and of the top block under ``layer_lr_decay``).
    max_epochs : int, default=3
    batch_size : int, default=16
    weight_decay : float, default=0.01
    warmup : float, default=0.1
        Share of the steps with a rising learning rate; then it decays linearly to 0.
    freeze_embeddings : bool, default=True
        Keep the word-embedding matrix (a vision encoder's patch projection) as it is (no
        gradient, no optimizer state).
    train_layers : int or None, default=None
        Train only the top ``train_layers`` blocks (and the head); ``None``: all.
    layer_lr_decay : float or None, default=None
        Block ``i`` of ``n`` trains with ``lr * layer_lr_decay ** (n - i)``; ``None``: one rate.
    supcon : float, default=0.0
        Weight of :class:`~embetter_plug.SupConLoss` on the pooled embeddings, added to the
        cross-entropy; ``temperature`` is its temperature.
    temperature : float, default=0.07
    autocast : {"auto", "bf16", None}, default="auto"
        bf16 autocast of the transformer; ``"auto"``: where bf16 is native (CUDA, or CPUs with
        AVX512-BF16/AMX).
    max_length : int, default=128
        Tokens per text (longer texts are cut).
    early_stopping : bool, default=True
    validation_fraction : float, default=0.1
    patience : int, default=2
    callbacks : list of skorch callbacks or None, default=None
    random_state : int, RandomState or None, default=None
        Seeds the head, dropout, the split and the batch order; with the same ``n_jobs`` a CPU
        fit repeats exactly.
    device : str, default="cpu"
    n_jobs : int or None, default=None
        Torch CPU threads while fitting and predicting (``None``: unchanged).
    verbose : bool or int, default=False
        A progress bar over epochs (over batches too with ``verbose=2``).
    trust_remote_code : bool, default=False
    revision : str or None, default=None

    Attributes
    ----------
    classes_ : ndarray
    net_ : skorch net
        Its ``module_`` holds the tuned transformer (``backbone``) and the head.
    tokenizer_ : tokenizer or None
    processor_ : image processor or None
        The vision encoder's (``tokenizer_`` is then ``None``).
    inputs_ : {"texts", "images"}
    pooling_ : str or float
    best_epoch_, n_epochs_ : int
    validation_indices_ : ndarray or None
        Rows held out for early stopping.

    Examples
    --------
    >>> from embetter_plug import TransformerTuner
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("bert")
    >>> texts = ["good film", "great film", "bad film", "awful film"] * 5
    >>> y = [1, 1, 0, 0] * 5
    >>> tuner = TransformerTuner(model, tok, max_epochs=2, batch_size=4, random_state=0)
    >>> tuner.fit(texts, y).transform(texts).shape
    (20, 32)
    >>> tuner.predict(["good film"]).shape
    (1,)
    """

    _parameter_constraints: dict = {
        "model": "no_validation",  # resolved (and refused with the reason) when loading
        "tokenizer": "no_validation",
        "processor": "no_validation",
        "token_pooling": [TokenPoolings()],
        "lr": [POSITIVE_REAL], "max_epochs": [POSITIVE_INT], "batch_size": [POSITIVE_INT],
        "weight_decay": [NON_NEGATIVE_REAL], "warmup": [Interval(Real, 0, 1, closed="left")],
        "freeze_embeddings": ["boolean"], "train_layers": [None, POSITIVE_INT],
        "layer_lr_decay": [None, Interval(Real, 0, 1, closed="right")],
        "supcon": [NON_NEGATIVE_REAL], "temperature": [POSITIVE_REAL],
        "autocast": [StrOptions({"auto", "bf16"}), None], "max_length": [POSITIVE_INT],
        "early_stopping": ["boolean"], "validation_fraction": [FRACTION],
        "patience": [POSITIVE_INT], "callbacks": [CALLBACKS], "random_state": ["random_state"],
        "device": [Device()], "n_jobs": [None, POSITIVE_INT, Options(Integral, {-1})],
        "verbose": ["verbose"], "trust_remote_code": ["boolean"], "revision": [None, str],
    }

    def __init__(self, model: Any = None, tokenizer: Any = None, *, processor: Any = None,
                 token_pooling: Any = "auto",
                 lr: float = 1e-4, max_epochs: int = 3, batch_size: int = 16,
                 weight_decay: float = 0.01, warmup: float = 0.1, freeze_embeddings: bool = True,
                 train_layers: int | None = None, layer_lr_decay: float | None = None,
                 supcon: float = 0.0, temperature: float = 0.07, autocast: Any = "auto",
                 max_length: int = 128, early_stopping: bool = True,
                 validation_fraction: float = 0.1, patience: int = 2, callbacks: Any = None,
                 random_state: Any = None, device: Any = "cpu", n_jobs: int | None = None,
                 verbose: Any = False, trust_remote_code: bool = False, revision: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor
        self.token_pooling = token_pooling
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.warmup = warmup
        self.freeze_embeddings = freeze_embeddings
        self.train_layers = train_layers
        self.layer_lr_decay = layer_lr_decay
        self.supcon = supcon
        self.temperature = temperature
        self.autocast = autocast
        self.max_length = max_length
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.callbacks = callbacks
        self.random_state = random_state
        self.device = device
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.trust_remote_code = trust_remote_code
        self.revision = revision

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        validate_estimator_params(self)

    def _check_fit_data(self, X, y):
        kind, texts = check_tuner_inputs(X, type(self).__name__)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(texts):
            raise ValueError(f"{type(self).__name__}: X has {len(texts)} {kind} but y has shape "
                             f"{y.shape}; give one label per text or image.")
        codes = update_classes(self, y, None, first=True)
        if self.early_stopping:
            n, k = len(codes), len(self.classes_)
            n_val = math.ceil(self.validation_fraction * n)
            counts = np.bincount(codes)
            if counts.min() < 2 or min(n_val, n - n_val) < k:
                rare = self.classes_[np.argmin(counts)]
                raise ValueError(
                    f"{type(self).__name__}: {n} rows are too few for a stratified validation "
                    f"split of {self.validation_fraction} with all {k} classes on both sides "
                    f"(class {rare!r} has {counts.min()} row(s)); give at least 2 rows per class "
                    f"and {math.ceil(k / self.validation_fraction)} rows in all, raise "
                    "validation_fraction, or pass early_stopping=False.")
        return kind, texts, codes

    # ------------------------------------------------------------------ loading
    def _load_backbone(self, kind: str = "texts"):
        """A private float32 copy of the model to train, and its tokenizer (right padding) or,
        for ``kind="images"``, its image processor."""
        hub = dict(revision=self.revision, trust_remote_code=self.trust_remote_code)
        source = resolve_model_source(self.model)
        if source is None:
            check_model_inputs(self.model, kind, type(self).__name__)
            model = copy.deepcopy(self.model)
        else:  # a bad name or the wrong kind of model fails here, before any weights load
            check_model_inputs(load_config(source, **hub), kind, type(self).__name__)
            shared, _ = load_model(source, dtype=torch.float32, device="cpu", **hub)
            model = copy.deepcopy(shared)  # the loaded model is shared by encoders: never train it
        if kind == "images":
            return model.float(), copy.deepcopy(load_processor(self.processor, model, source,
                                                               required=True, **hub))
        tok = copy.deepcopy(load_tokenizer(self.tokenizer, self.model if source is None else None,
                                           source, **hub))
        tok.padding_side = "right"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        return model.float(), tok

    def _freeze(self, model) -> tuple[str, int]:
        """Freeze what the parameters say; returns the blocks' path and count."""
        path, blocks = _arch.find_blocks(model)
        if self.freeze_embeddings:  # word embeddings, or a vision encoder's patch projection
            model.get_input_embeddings().requires_grad_(False)
        if self.train_layers is not None:
            keep = {id(p) for b in list(blocks)[-int(self.train_layers):] for p in b.parameters()}
            for p in model.parameters():
                if id(p) not in keep:
                    p.requires_grad_(False)
        return path, len(blocks)

    # ------------------------------------------------------------------ fit
    def fit(self, X, y):
        """Fine-tune a fresh copy of ``model`` on ``(texts, labels)`` or ``(images, labels)``."""
        self._check_params()
        kind, texts, codes = self._check_fit_data(X, y)
        for attr in ("net_", "tokenizer_", "processor_"):
            self.__dict__.pop(attr, None)
        device = resolve_device(self.device)
        backbone, tok = self._load_backbone(kind)
        self.inputs_ = kind
        self.pooling_ = validate_pooling(self.token_pooling, is_decoder=_arch.is_decoder(backbone),
                                         auto="image:mean" if kind == "images" else None)[0]
        self.autocast_ = ("bf16" if self.autocast == "bf16"
                          or (self.autocast == "auto" and bf16_is_fast(device)) else None)
        block_path, n_blocks = self._freeze(backbone)
        self.hidden_size_, self.device_ = _arch.hidden_size(backbone), device
        self.tokenizer_, self.processor_ = (None, tok) if kind == "images" else (tok, None)
        seed = seed_from_random_state(self.random_state)
        split = TrackedSplit(self.validation_fraction, stratified=True, random_state=seed) \
            if self.early_stopping else None
        n_train = len(codes) - (math.ceil(self.validation_fraction * len(codes)) if split else 0)
        steps = math.ceil(n_train / self.batch_size) * self.max_epochs
        X_tok = self._encode_inputs(texts)
        with seeded(seed, device), torch_threads(self.n_jobs):
            net = self._make_net(backbone, split=split, steps=steps, groups=(block_path, n_blocks))
            net.fit(X_tok, codes)
        self.net_ = net
        self.validation_indices_ = getattr(split, "valid_indices_", None)
        stopper = dict(net.callbacks_).get("early_stopping")
        self.n_epochs_ = int(net.history[-1, "epoch"])
        self.best_epoch_ = (int(stopper.best_epoch_) if stopper is not None and stopper.best_epoch_
                            else self.n_epochs_)
        logger.info("%s: %d epochs, best %d", type(self).__name__, self.n_epochs_, self.best_epoch_)
        return self

    def _make_net(self, backbone, *, split=None, steps: int = 1, groups=None) -> _TunerNet:
        from skorch.callbacks import EarlyStopping, LRScheduler, ProgressBar

        module = FineTuneModule(backbone, _arch.hidden_size(backbone), len(self.classes_),
                                self.pooling_, torch.bfloat16 if self.autocast_ else None,
                                patch_count(backbone) if self.inputs_ == "images" else None)
        callbacks = []
        if self.verbose:
            callbacks.append(("epoch_progress_bar", EpochProgressBar(type(self).__name__)))
            if isinstance(self.verbose, Integral) and self.verbose >= 2:
                callbacks.append(("progress_bar", ProgressBar()))
        if split is not None:
            callbacks.append(("early_stopping", EarlyStopping(
                patience=self.patience, load_best=True, sink=logger.info)))
        callbacks.append(("lr_scheduler", LRScheduler(
            policy=torch.optim.lr_scheduler.LambdaLR, step_every="batch",
            lr_lambda=WarmupLinear(steps, round(self.warmup * steps)))))
        block_path, n_blocks = groups or ("", 0)
        return _TunerNet(
            module, criterion=FineTuneLoss, criterion__supcon=self.supcon,
            criterion__temperature=self.temperature, optimizer=torch.optim.AdamW,
            optimizer__weight_decay=self.weight_decay, optimizer__fused=fused_adamw_ok(self.device_),
            optimizer__param_groups=layer_groups(module, block_path, n_blocks, self.lr,
                                                 self.layer_lr_decay),
            lr=self.lr, max_epochs=self.max_epochs, batch_size=self.batch_size,
            iterator_train=BucketedLoader, iterator_train__shuffle=True, train_split=split,
            callbacks=callbacks + list(self.callbacks or []), device=str(self.device_),
            verbose=int(bool(self.verbose)), callbacks__print_log__sink=log_plain,
            predict_nonlinearity=softmax_output, classes=list(range(len(self.classes_))))

    # ------------------------------------------------------------------ outputs
    def _encode_inputs(self, rows: list) -> dict[str, np.ndarray]:
        if self.inputs_ == "images":
            return pixel_values(self.processor_, rows)
        return tokenize(self.tokenizer_, rows, self.max_length)

    def _outputs(self, X) -> tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self, "net_")
        kind, rows = check_tuner_inputs(X, type(self).__name__)
        if kind != self.inputs_:
            raise ValueError(f"{type(self).__name__} was fitted on {self.inputs_}, but X holds "
                             f"{kind}; give {self.inputs_}.")
        X_tok = self._encode_inputs(rows)
        lengths = X_tok["attention_mask"].sum(1) if "attention_mask" in X_tok else np.zeros(len(rows))
        order = np.argsort(-lengths, kind="stable")
        with torch.no_grad(), torch_threads(self.n_jobs):
            logits, emb = sorted_forward(self.net_, X_tok, order)
        return logits.float().numpy(), emb.float().numpy()

    def transform(self, X) -> np.ndarray:
        """The tuned pooled embeddings, float32 ``(n_rows, hidden)``."""
        return self._outputs(X)[1]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities from the head, ``(n_texts, n_classes)``."""
        logits = torch.as_tensor(self._outputs(X)[0], dtype=torch.float64)
        return torch.softmax(logits, dim=-1).numpy()

    def predict(self, X) -> np.ndarray:
        """The head's most probable class per text."""
        return self.classes_[np.argmax(self._outputs(X)[0], axis=1)]

    @property
    def _n_features_out(self) -> int:
        check_is_fitted(self, "net_")
        return self.hidden_size_

    # ------------------------------------------------------------------ state
    def __getstate__(self):
        """Pickles hold the weights (CPU tensors) and the model's configuration, never the
        transformers model object (which does not pickle)."""
        return pickle_state(self)

    def __setstate__(self, state):
        unpickle_state(self, state)

    def _restore(self, config, weights: dict, attn_implementation: str | None = None) -> None:
        """Rebuild the net from a model configuration and the saved weights."""
        from transformers import AutoModel

        self.device_ = resolve_device(self.device)
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten below
            backbone = AutoModel.from_config(config, trust_remote_code=self.trust_remote_code,
                                             attn_implementation=attn_implementation)
        net = self._make_net(backbone)
        net.initialize()
        net.module_.load_state_dict(weights)
        net.module_.to(self.device_).eval()
        self.net_ = net

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.target_tags.required = True
        tags.non_deterministic = False
        return tags
