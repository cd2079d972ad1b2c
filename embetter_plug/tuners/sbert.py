"""SbertLearner (fine-tune a sentence-transformers model on text pairs) and SbertTuner (pairs from labels)."""

from __future__ import annotations

import copy
import tempfile
from numbers import Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .._constraints import (POSITIVE_INT, POSITIVE_REAL, Device, Interval,
                            validate_estimator_params)
from .._utils import check_texts, logger, resolve_device, seed_from_random_state
from ._labels import check_pair_labels, check_same_length
from ._pairs import PairTunerMixin
from ._training import (DeviceStateMixin, forget_fitted, global_rng_kept,
                        paired_cosine, to_cpu)
from .sentence import (embedding_dim, encode_texts, is_sentence_transformer, load_sentence_transformer,
                       reload_source)

__all__ = ["SbertLearner", "SbertTuner"]


class SbertLearner(DeviceStateMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Fine-tune a sentence-transformers model on text pairs labelled 1 (similar) or 0.

    ``fit(X1, X2, y)`` trains a copy of ``model`` with ``CosineSimilarityLoss`` through
    ``SentenceTransformerTrainer``; the model you pass is never changed. ``transform(texts)``
    encodes with the fine-tuned copy, ``predict(X1, X2)`` gives pair cosine similarities.

    The fine-tuned weights are the fitted state, so a pickle holds them (as a CPU state dict,
    about 90 MB for MiniLM) but not the model object: on first use after unpickling the
    architecture and tokenizer are loaded again from ``model`` (a folder from its absolute
    path as resolved in ``fit``) and the weights put back. To share a fine-tuned model
    without pickles, ``learner.model_.save(folder)`` writes a normal sentence-transformers
    folder.

    Parameters
    ----------
    model : str, path, SentenceTransformer or None, default=None
        ``None`` is the built-in all-MiniLM-L6-v2.
    batch_size : int, default=16
        Pairs per step.
    epochs : int, default=1
        Passes over the pairs per ``fit`` / ``partial_fit`` call.
    learning_rate : float, default=2e-5
    max_steps : int or None, default=None
        Stop after this many steps (overrides ``epochs``).
    warmup_ratio : float, default=0.1
        Share of the steps with a linearly rising learning rate.
    normalize : bool, default=False
        Unit-length embeddings from ``transform``.
    random_state : int, RandomState or None, default=None
        Seeds the batch order. The process-wide ``random``, NumPy and torch generators are
        left as they were (transformers' ``Trainer`` reseeds them; ``fit`` restores them).
    device : str, default="auto"
    verbose : bool, default=False

    Attributes
    ----------
    model_ : SentenceTransformer
        The fine-tuned copy.
    device_ : torch.device
    loss_ : float
        Mean training loss of the last call.

    Examples
    --------
    >>> from embetter_plug import SbertLearner
    >>> X1, X2 = ["good film", "bad film"], ["great movie", "a great movie"]
    >>> learner = SbertLearner(max_steps=1, batch_size=2, device="cpu", random_state=0)
    >>> learner.fit(X1, X2, [1, 0]).transform(["a text"]).shape
    (1, 384)
    """

    _parameter_constraints: dict = {
        "model": "no_validation",  # resolved (and refused with the reason) when loading
        "batch_size": [POSITIVE_INT], "epochs": [POSITIVE_REAL], "learning_rate": [POSITIVE_REAL],
        "max_steps": [None, POSITIVE_INT], "warmup_ratio": [Interval(Real, 0, 1, closed="left")],
        "normalize": ["boolean"], "random_state": ["random_state"], "device": [Device()],
        "verbose": ["verbose"],
    }

    def __init__(self, model: Any = None, batch_size: int = 16, epochs: int = 1,
                 learning_rate: float = 2e-5, max_steps: int | None = None, warmup_ratio: float = 0.1,
                 normalize: bool = False, random_state: Any = None, device: Any = "auto",
                 verbose: bool = False):
        self.model = model
        self.batch_size = batch_size
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.max_steps = max_steps
        self.warmup_ratio = warmup_ratio
        self.normalize = normalize
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def fit(self, X1, X2, y):
        """Fine-tune a fresh copy of ``model`` on the pairs ``(X1[i], X2[i])`` with label ``y[i]``."""
        forget_fitted(self, "model_", "device_", "_weights", "_source_")
        return self.partial_fit(X1, X2, y)

    def partial_fit(self, X1, X2, y):
        """Train further on these pairs, starting from the current fine-tuned weights."""
        self._check_params()
        t1, t2 = check_texts(X1, name="X1"), check_texts(X2, name="X2")
        check_same_length(t1, t2)
        sim = check_pair_labels(y, len(t1))
        if "device_" not in self.__dict__:
            self.device_ = resolve_device(self.device)
            self._source_ = reload_source(self.model)
            self._rng = np.random.default_rng(seed_from_random_state(self.random_state))
            self.model_ = self._fresh_model()
        self.loss_ = self._train(self._model(), t1, t2, sim)
        return self

    def transform(self, X) -> np.ndarray:
        """Embeddings from the fine-tuned model, float32 of shape ``(n_texts, dim)``."""
        check_is_fitted(self, "device_")
        return encode_texts(self._model(), check_texts(X), batch_size=self.batch_size,
                            normalize=self.normalize, verbose=self.verbose)

    def predict(self, X1, X2) -> np.ndarray:
        """Cosine similarity of each text pair under the fine-tuned model."""
        check_is_fitted(self, "device_")
        check_same_length(X1, X2)
        return paired_cosine(self.transform(X1), self.transform(X2))

    # ------------------------------------------------------------------ internals
    def _fresh_model(self):
        """A private copy to fine-tune: the user's instance is deep-copied, never trained."""
        if is_sentence_transformer(self._source_):
            return load_sentence_transformer(copy.deepcopy(self._source_), self.device_,
                                             verbose=self.verbose)
        return load_sentence_transformer(self._source_, self.device_, verbose=self.verbose)

    def _model(self):
        if getattr(self, "model_", None) is None:  # unpickled: rebuild, then put the weights back
            model = self._fresh_model()
            model.load_state_dict(self.__dict__.pop("_weights"))
            self.model_ = model
        return self.model_

    def _train(self, model, t1: list[str], t2: list[str], sim: np.ndarray) -> float:
        from datasets import Dataset
        from sentence_transformers import (SentenceTransformerTrainer,
                                           SentenceTransformerTrainingArguments)

        class _QuietTrainer(SentenceTransformerTrainer):
            def add_model_card_callback(self, default_args_dict):
                """No model-card tracking (it encodes extra widget examples) for a private copy."""
        try:  # sentence-transformers >= 6 moved the losses; earlier releases have them here
            from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
        except ImportError:
            from sentence_transformers.losses import CosineSimilarityLoss
        from transformers import PrinterCallback

        seed = int(self._rng.integers(2**31 - 1))
        steps = (int(self.max_steps) if self.max_steps is not None
                 else int(np.ceil(len(t1) / self.batch_size * self.epochs)))
        data = Dataset.from_dict({"sentence1": t1, "sentence2": t2, "label": sim.tolist()})
        # the Trainer seeds the process-wide generators (set_seed); the caller's states come back
        with tempfile.TemporaryDirectory() as out, global_rng_kept(self.device_):
            args = SentenceTransformerTrainingArguments(
                output_dir=out, per_device_train_batch_size=int(self.batch_size),
                num_train_epochs=float(self.epochs),
                max_steps=-1 if self.max_steps is None else int(self.max_steps),
                learning_rate=float(self.learning_rate),
                warmup_steps=int(round(self.warmup_ratio * steps)),
                seed=seed, data_seed=seed, report_to="none", save_strategy="no",
                logging_strategy="no", disable_tqdm=not self.verbose,
                use_cpu=self.device_.type == "cpu")
            trainer = _QuietTrainer(model=model, args=args, train_dataset=data,
                                    loss=CosineSimilarityLoss(model))
            if not self.verbose:  # with tqdm off, transformers prints the metrics to stdout
                trainer.remove_callback(PrinterCallback)
            result = trainer.train()
        model.to(self.device_).eval()
        logger.info("SbertLearner: %d steps, loss %.4f", result.global_step, result.training_loss)
        return float(result.training_loss)

    def _check_params(self) -> None:
        import importlib.util

        if importlib.util.find_spec("datasets") is None:
            raise ImportError(
                f"{type(self).__name__} trains through sentence-transformers' "
                "SentenceTransformerTrainer, which needs the 'datasets' package: "
                "pip install datasets"
            )
        validate_estimator_params(self)

    @property
    def _n_features_out(self) -> int:
        check_is_fitted(self, "device_")
        return embedding_dim(self._model())

    def __getstate__(self):
        state = super().__getstate__()
        model = state.pop("model_", None)
        if model is not None:
            state["_weights"] = to_cpu(model.state_dict())
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags


class SbertTuner(PairTunerMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """The Pipeline version of :class:`SbertLearner`: it makes text pairs from ``(texts, y)``.

    Pairs are drawn as in :class:`ContrastiveTuner` (one same-class partner and ``n_neg``
    other-class partners per text, seeded by ``random_state``); ``transform`` encodes with the
    fine-tuned model. Pickles hold the fine-tuned weights, as for :class:`SbertLearner`.

    Parameters
    ----------
    model : str, path, SentenceTransformer or None, default=None
        ``None`` is the built-in all-MiniLM-L6-v2.
    n_neg : int, default=3
        Dissimilar pairs per text.
    epochs, learning_rate, batch_size, max_steps, warmup_ratio, normalize, device, verbose
        As in :class:`SbertLearner`.
    random_state : int, RandomState or None, default=None
        Seeds the pairs and the batch order.

    Attributes
    ----------
    learner_ : SbertLearner
    classes_ : ndarray

    Examples
    --------
    >>> from embetter_plug import SbertTuner
    >>> texts, y = ["good", "great", "bad", "awful"], [1, 1, 0, 0]
    >>> tuner = SbertTuner(max_steps=1, batch_size=4, device="cpu", random_state=0)
    >>> tuner.fit(texts, y).transform(texts).shape
    (4, 384)
    """

    _parameter_constraints: dict = {**SbertLearner._parameter_constraints,
                                     "n_neg": [POSITIVE_INT]}

    def __init__(self, model: Any = None, n_neg: int = 3, epochs: int = 1,
                 learning_rate: float = 2e-5, batch_size: int = 16, max_steps: int | None = None,
                 warmup_ratio: float = 0.1, normalize: bool = False, random_state: Any = None,
                 device: Any = "auto", verbose: bool = False):
        self.model = model
        self.n_neg = n_neg
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.warmup_ratio = warmup_ratio
        self.normalize = normalize
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    _learner_cls = SbertLearner

    def partial_fit(self, X, y, classes=None):
        """Make pairs from this batch and keep fine-tuning; pass ``classes`` on the first call
        when the batch does not hold every label."""
        validate_estimator_params(self)
        texts = check_texts(X)
        y = np.asarray(y)
        if len(y) != len(texts):
            raise ValueError(f"X has {len(texts)} texts but y has {len(y)} labels.")
        first = getattr(self, "learner_", None) is None
        return self._train_on_pairs(y, classes, first, lambda idx: [texts[i] for i in idx])

    def _learner_params(self) -> dict:
        return dict(model=self.model, batch_size=self.batch_size, epochs=self.epochs,
                    learning_rate=self.learning_rate, max_steps=self.max_steps,
                    warmup_ratio=self.warmup_ratio, normalize=self.normalize,
                    device=self.device, verbose=self.verbose)

    def transform(self, X) -> np.ndarray:
        """Embeddings from the fine-tuned model."""
        check_is_fitted(self, "learner_")
        return self.learner_.transform(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.target_tags.required = True
        return tags
