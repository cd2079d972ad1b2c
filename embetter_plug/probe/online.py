"""OnlineProbes: train a probe for every layer x part from one streamed pass per epoch.

Activations are never all stored: each epoch the training texts are put in a new random order
and encoded ``buffer_size`` texts at a time; those rows are cut into random batches, each of which
updates a streaming scaler and an SGD logistic-regression probe per layer x part, and are then
dropped. Memory is bounded by one buffer. Three stratified splits: training, validation (picks
each probe's epoch and the best probe) and test (the reported ``metrics_``, from rows that chose
nothing).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import SGDClassifier
from sklearn.utils.validation import check_is_fitted

from .._constraints import (FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, Check,
                            validate_estimator_params)
from .._utils import logger, seed_from_random_state
from ..inputs.samples import check_inputs
from .metrics import detect_task
from ._splits import three_way_split

__all__ = ["OnlineProbes", "confusion_metrics"]

METRIC_COLUMNS = ("loss", "accuracy", "precision", "recall", "f1", "matthews")



def _check_encoder(encoder) -> None:
    if not hasattr(encoder, "iter_batches"):
        raise TypeError(f"encoder must be a TransformerActivationEncoder, got "
                        f"{type(encoder).__name__}.")

class OnlineProbes(ClassifierMixin, BaseEstimator):
    """Linear probes for every layer x part of a model, trained online from streamed batches.

    Each epoch streams the training texts through the model once, in a new random order; every
    batch updates, for every probe, a ``StandardScaler`` (``partial_fit``, first epoch only) and
    an ``SGDClassifier(loss="log_loss")``. After each epoch the validation texts are streamed to
    compute each probe's validation loss; a probe stops when its loss has not improved by ``tol``
    for ``patience`` epochs after the first ``warmup_epochs``, and keeps its best weights.
    Streaming stops when every probe has stopped; then the test texts are streamed once for
    ``metrics_``: the epoch and the best probe were chosen on the validation texts, so these
    scores are not optimistic.

    Parameters
    ----------
    encoder : TransformerActivationEncoder or None, default=None
        Says which model, layers, parts (named parts or module paths) and token poolings to
        probe. A fitted encoder is used as is; an unfitted one is cloned and fitted. ``None``
        is the built-in model with every layer's ``resid_post``.
    validation_fraction : float, default=0.2
        Share of the texts held out (stratified, seeded) for early stopping and for choosing
        ``best_probe_``.
    test_fraction : float, default=0.2
        Share of the texts held out (stratified, seeded) for ``metrics_`` alone. Every split
        needs every class, so ``fit`` first checks that there are texts enough.
    max_epochs : int, default=5
    patience : int, default=2
        Epochs without improvement before a probe stops.
    warmup_epochs : int, default=1
        Epochs that never count towards ``patience``.
    tol : float, default=1e-4
        Smallest validation-loss decrease that counts as improvement.
    alpha : float, default=0.01
        L2 penalty of the SGD probes.
    learning_rate, eta0, average : default "invscaling", 0.01, False
        Passed to ``SGDClassifier``. The defaults came out closest to the offline probe's
        accuracy on real text (see the benchmark).
    class_weight : dict, "balanced" or None, default=None
        "balanced" weights are computed from the training labels once.
    n_iter_per_batch : int, default=1
        SGD passes over each batch while it is at hand: more learning per forward pass.
    shuffle : bool, default=True
        Each epoch, put the training texts in a new random order and batch them in that order
        (batches are then random across the whole stream, not runs of similar length);
        ``False``: the order given.
    buffer_size : int, default=512
        Texts encoded at once, whose activations are held (``buffer_size x layers x parts x
        hidden`` floats) and cut into batches of the encoder's ``batch_size``.
    random_state : int, RandomState or None, default=None
        Seeds the split, the shuffling and every probe.
    verbose : bool, default=False
        A progress bar over epochs (and the encoder's own bar over batches).

    Attributes
    ----------
    encoder_ : the fitted encoder.
    classes_ : ndarray of the labels.
    probes_ : dict of str -> Pipeline
        ``"layer{l}__{part}"`` (a per-layer module path with its layer filled in) -> fitted ``Pipeline(StandardScaler, SGDClassifier)`` that takes
        the activations ``get_probe_features`` returns.
    metrics_ : pandas.DataFrame
        Per probe, on the test texts: loss, accuracy and macro precision, recall, F1, Matthews,
        at the kept (best) epoch; then ``validation_loss`` (which picked that epoch) and
        ``epochs`` trained; sorted by validation loss, so the first row is ``best_probe_``.
    history_ : pandas.DataFrame
        ``probe, epoch, loss, accuracy`` after every epoch.
    best_probe_ : str
        The probe with the lowest validation loss; ``predict`` uses it.
    splits_ : dict of str -> ndarray
        Positions of the ``"train"``, ``"validation"`` and ``"test"`` texts.

    Examples
    --------
    >>> from embetter_plug import OnlineProbes, TransformerActivationEncoder, load_builtin_dataset
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("gpt2")
    >>> df = load_builtin_dataset("train").iloc[:60]
    >>> enc = TransformerActivationEncoder(model, tok, layers=[0, 2], parts=["resid_post", "mlp_out"])
    >>> probes = OnlineProbes(enc, max_epochs=2, random_state=0).fit(df["text"], df["label"])
    >>> sorted(probes.probes_)
    ['layer0__mlp_out', 'layer0__resid_post', 'layer2__mlp_out', 'layer2__resid_post']
    >>> list(probes.metrics_.columns)
    ['loss', 'accuracy', 'precision', 'recall', 'f1', 'matthews', 'validation_loss', 'epochs']
    """

    _parameter_constraints: dict = {
        "encoder": [None, Check(_check_encoder, "None or a TransformerActivationEncoder")],
        "validation_fraction": [FRACTION], "test_fraction": [FRACTION],
        "max_epochs": [POSITIVE_INT], "patience": [POSITIVE_INT],
        "warmup_epochs": [NON_NEGATIVE_INT],
        # passed to SGDClassifier: its own constraints
        **{k: SGDClassifier._parameter_constraints[k]
           for k in ("tol", "alpha", "learning_rate", "eta0", "average", "class_weight")},
        "n_iter_per_batch": [POSITIVE_INT], "shuffle": ["boolean"], "buffer_size": [POSITIVE_INT],
        "random_state": ["random_state"], "verbose": ["verbose"],
    }

    def __init__(self, encoder: Any = None, *, validation_fraction: float = 0.2,
                 test_fraction: float = 0.2, max_epochs: int = 5, patience: int = 2, warmup_epochs: int = 1,
                 tol: float = 1e-4, alpha: float = 0.01, learning_rate: str = "invscaling",
                 eta0: float = 0.01, average: Any = False, class_weight: Any = None,
                 n_iter_per_batch: int = 1, shuffle: bool = True, buffer_size: int = 512,
                 random_state: Any = None, verbose: bool = False):
        self.encoder = encoder
        self.validation_fraction = validation_fraction
        self.test_fraction = test_fraction
        self.max_epochs = max_epochs
        self.patience = patience
        self.warmup_epochs = warmup_epochs
        self.tol = tol
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.average = average
        self.class_weight = class_weight
        self.n_iter_per_batch = n_iter_per_batch
        self.shuffle = shuffle
        self.buffer_size = buffer_size
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting
    def _check_params(self) -> None:
        """What ``_parameter_constraints`` cannot say alone: the two fractions together."""
        validate_estimator_params(self)
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError(f"validation_fraction + test_fraction must be below 1 (training "
                             f"needs texts too), got {self.validation_fraction!r} + "
                             f"{self.test_fraction!r}.")

    def _check_split(self, y, seed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The (train, validation, test) positions; too few labels are refused, saying why."""
        return three_way_split(y, self.classes_, self.validation_fraction, self.test_fraction, seed)

    def _fitted_encoder(self):
        from ..encoder import TransformerActivationEncoder

        enc = self.encoder if self.encoder is not None else TransformerActivationEncoder()
        if hasattr(enc, "layout_"):
            return enc
        if not hasattr(enc, "iter_batches"):
            raise TypeError(f"encoder must be a TransformerActivationEncoder, got {type(enc).__name__}.")
        return clone(enc).fit()

    def fit(self, X, y) -> "OnlineProbes":
        """Stream ``X`` (texts) through the model and train every probe on labels ``y``."""
        from tqdm.auto import trange

        self._check_params()
        texts = check_inputs(X)
        task, y = detect_task(y, "auto")
        if task == "regression":
            raise ValueError(
                f"OnlineProbes trains classifiers only (SGD log-loss probes), but y looks continuous "
                f"(values such as {np.round(y[:3], 4).tolist()}). For a numeric target, encode the "
                "texts with TransformerActivationEncoder and use probe_layers(X, y, "
                "task='regression'); for a classification, give discrete labels."
            )
        if len(y) != len(texts):
            raise ValueError(f"X has {len(texts)} texts but y has {len(y)} labels; they must match.")
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        seed = seed_from_random_state(self.random_state)
        rng = np.random.default_rng(seed)
        tr, va, te = self._check_split(y_enc, seed)
        self.splits_ = {"train": tr, "validation": va, "test": te}
        weights = self._class_weights(y_enc[tr])
        labels = np.arange(len(self.classes_))
        # bad SGD settings (alpha, learning_rate, eta0, ...) fail here, before the model loads
        self._init_probes(["check"], seed, weights)[1]["check"].partial_fit(
            np.zeros((len(labels), 1)), labels, classes=labels)
        self.encoder_ = self._fitted_encoder()
        where = self._where()
        names = list(where)
        scalers, sgds = self._init_probes(names, seed, weights)
        state = {n: {"best": np.inf, "wait": 0, "stopped": False, "epochs": 0, "model": None,
                     "metrics": None} for n in names}
        history = []
        train_texts, val_texts = [texts[i] for i in tr], [texts[i] for i in va]
        y_tr = y_enc[tr]
        for epoch in trange(self.max_epochs, disable=not self.verbose, desc="epochs"):
            active = [n for n in names if not state[n]["stopped"]]
            if not active:
                break
            # the encoder's truncation warning is said in the first epoch, not in every one
            with warnings.catch_warnings():
                if epoch > 0:
                    warnings.filterwarnings("ignore", message=".*were truncated", category=UserWarning)
                for rows, acts in self._batches(train_texts, rng):
                    yb = y_tr[rows]
                    for n in active:
                        xb = acts[:, where[n][0], where[n][1]]
                        if epoch == 0:
                            scalers[n].partial_fit(xb)
                        xb = scalers[n].transform(xb)
                        for _ in range(self.n_iter_per_batch):
                            sgds[n].partial_fit(xb, yb, classes=labels)
                scores = self._stream_metrics(val_texts, y_enc[va], active, where, scalers, sgds)
            for n in active:
                st, met = state[n], scores[n]
                st["epochs"] = epoch + 1
                history.append({"probe": n, "epoch": epoch + 1, "loss": met["loss"],
                                "accuracy": met["accuracy"]})
                # a probe whose loss is not yet finite keeps its latest model, never none
                if met["loss"] < st["best"] - self.tol or not np.isfinite(st["best"]):
                    st.update(best=met["loss"], wait=0, model=copy.deepcopy(sgds[n]), metrics=met)
                elif epoch + 1 > self.warmup_epochs:
                    st["wait"] += 1
                    if st["wait"] >= self.patience:
                        st["stopped"] = True
                        logger.info("early stopping after %d epochs for %s", epoch + 1, n)
        order = self._finish(names, scalers, state, history)
        self._report([texts[i] for i in te], y_enc[te], state, order)
        return self

    def _batches(self, texts: list[str], rng):
        """``(rows, activations)`` batches of one epoch: texts in a new random order (shuffle),
        encoded ``buffer_size`` at a time, cut into batches in that order. The encoder sorts
        the texts it is given by length; the rows are put back in the drawn order after it."""
        n = len(texts)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        size = int(getattr(self.encoder_, "batch_size", None) or 32)
        for start in range(0, n, self.buffer_size):
            ids = order[start:start + self.buffer_size]
            buf = None
            for idx, acts in self.encoder_.iter_batches([texts[i] for i in ids]):
                if buf is None:
                    buf = np.empty((len(ids), *acts.shape[1:]), dtype=acts.dtype)
                buf[idx] = acts
            for b in range(0, len(ids), size):
                yield ids[b:b + size], buf[b:b + size]

    def _class_weights(self, y_train):
        """``class_weight`` keyed by the encoded labels the SGD probes are trained on."""
        if isinstance(self.class_weight, dict):  # keys are the original labels
            pos = {c: i for i, c in enumerate(self.classes_.tolist())}
            unknown = [k for k in self.class_weight if k not in pos]
            if unknown:
                raise ValueError(f"class_weight has labels {unknown[:5]} that are not in y; "
                                 f"the classes are {self.classes_.tolist()}.")
            return {pos[k]: float(w) for k, w in self.class_weight.items()}
        if not isinstance(self.class_weight, str):
            return self.class_weight
        from sklearn.utils.class_weight import compute_class_weight

        classes = np.unique(y_train)
        w = compute_class_weight(self.class_weight, classes=classes, y=y_train)
        return dict(zip(classes.tolist(), w.tolist()))

    def _init_probes(self, names, seed, weights):
        from sklearn.linear_model import SGDClassifier
        from sklearn.preprocessing import StandardScaler

        scalers = {n: StandardScaler() for n in names}
        sgds = {n: SGDClassifier(loss="log_loss", alpha=self.alpha, learning_rate=self.learning_rate,
                                 eta0=self.eta0, average=self.average, class_weight=weights,
                                 random_state=seed + i)
                for i, n in enumerate(names)}
        return scalers, sgds

    def _finish(self, names, scalers, state, history) -> list[str]:
        import pandas as pd
        from sklearn.pipeline import Pipeline

        self.probes_ = {n: Pipeline([("scaler", scalers[n]), ("sgd", state[n]["model"])])
                        for n in names}
        rows = {n: {**state[n]["metrics"], "epochs": state[n]["epochs"]} for n in names}
        chosen = pd.DataFrame.from_dict(rows, orient="index").sort_values(
            ["loss", "matthews"], ascending=[True, False], kind="stable")
        self.history_ = pd.DataFrame(history)
        self.best_probe_ = str(chosen.index[0])
        return list(chosen.index)  # by validation loss: the choice made on validation

    def _report(self, texts, y_enc, state, names) -> None:
        """``metrics_`` from the test texts, which chose neither an epoch nor the best probe."""
        import pandas as pd

        where = self._where()
        scalers = {n: self.probes_[n].named_steps["scaler"] for n in names}
        sgds = {n: self.probes_[n].named_steps["sgd"] for n in names}
        scores = self._stream_metrics(texts, y_enc, names, where, scalers, sgds)
        self.metrics_ = pd.DataFrame.from_dict(
            {n: {**scores[n], "validation_loss": state[n]["best"], "epochs": state[n]["epochs"]}
             for n in names}, orient="index")

    def _stream_metrics(self, texts, y_enc, names, where, scalers, sgds) -> dict[str, dict]:
        """Validation metrics per probe from streamed batches (a confusion matrix, not the rows)."""
        from sklearn.metrics import confusion_matrix, log_loss

        k = len(self.classes_)
        labels = np.arange(k)
        conf = {n: np.zeros((k, k), dtype=np.int64) for n in names}
        loss = dict.fromkeys(names, 0.0)
        for idx, acts in self.encoder_.iter_batches(texts):
            yb = y_enc[idx]
            for n in names:
                proba = sgds[n].predict_proba(scalers[n].transform(acts[:, where[n][0], where[n][1]]))
                loss[n] += log_loss(yb, proba, labels=labels, normalize=False)
                conf[n] += confusion_matrix(yb, proba.argmax(1), labels=labels)
        return {n: {"loss": loss[n] / len(texts), **confusion_metrics(conf[n])} for n in names}

    # --------------------------------------------------------------- using it
    def get_probe_features(self, X) -> dict[str, np.ndarray]:
        """The activations each probe reads: ``{name: (n_samples, hidden)}`` in input order."""
        check_is_fitted(self, "probes_")
        return self._slices(check_inputs(X), list(self.probes_))

    def _where(self) -> dict[str, tuple[int, int]]:
        """Probe name -> (layer position, part position) in the encoder's output."""
        layout = self.encoder_.layout_
        # a per-layer module path names its own layer: "h.{layer}.mlp" -> "layer1__h.1.mlp"
        names = [f"layer{l}__{p.replace('{layer}', str(l))}" for l in layout.layers
                 for p in layout.parts]
        return {n: divmod(i, len(layout.parts)) for i, n in enumerate(names)}

    def _slices(self, texts: list[str], names: list[str]) -> dict[str, np.ndarray]:
        where, hidden = self._where(), self.encoder_.layout_.hidden_size
        out = {n: np.empty((len(texts), hidden), dtype=np.float32) for n in names}
        for idx, acts in self.encoder_.iter_batches(texts):
            for n in names:
                out[n][idx] = acts[:, where[n][0], where[n][1]]
        return out

    def evaluate(self, X, y) -> "pandas.DataFrame":  # noqa: F821
        """Metrics of every probe on labelled texts, streamed (memory bounded by a batch)."""
        check_is_fitted(self, "probes_")
        texts = check_inputs(X)
        y = np.asarray(y)
        if len(y) != len(texts):
            raise ValueError(f"X has {len(texts)} texts but y has {len(y)} labels; they must match.")
        unknown = sorted(set(np.unique(y).tolist()) - set(self.classes_.tolist()))
        if unknown:
            raise ValueError(f"y has labels {unknown[:5]} not seen in fit; known: {self.classes_.tolist()}.")
        import pandas as pd

        names = list(self.probes_)
        where = self._where()
        scalers = {n: p.named_steps["scaler"] for n, p in self.probes_.items()}
        sgds = {n: p.named_steps["sgd"] for n, p in self.probes_.items()}
        scores = self._stream_metrics(texts, np.searchsorted(self.classes_, y), names, where,
                                      scalers, sgds)
        return pd.DataFrame.from_dict(scores, orient="index").loc[:, list(METRIC_COLUMNS)]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities from the best probe (``best_probe_``)."""
        check_is_fitted(self, "probes_")
        feats = self._slices(check_inputs(X), [self.best_probe_])[self.best_probe_]
        return self.probes_[self.best_probe_].predict_proba(feats)

    def predict(self, X) -> np.ndarray:
        """Labels from the best probe (``best_probe_``)."""
        check_is_fitted(self, "probes_")
        return self.classes_[self.predict_proba(X).argmax(1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.non_deterministic = False
        return tags


def confusion_metrics(conf: np.ndarray) -> dict[str, float]:
    """Accuracy and macro precision, recall, F1 and Matthews from a confusion matrix.

    Computed by scikit-learn's own metric functions, weighting each (true, predicted) cell by
    its count, so the values equal those on the underlying rows.
    """
    from sklearn.metrics import (accuracy_score, matthews_corrcoef,
                                 precision_recall_fscore_support)

    k = conf.shape[0]
    t, p = np.divmod(np.arange(k * k), k)
    w = conf.ravel().astype(float)
    keep = w > 0
    t, p, w = t[keep], p[keep], w[keep]
    prec, rec, f1, _ = precision_recall_fscore_support(t, p, labels=np.arange(k), average="macro",
                                                       sample_weight=w, zero_division=0)
    return {"accuracy": float(accuracy_score(t, p, sample_weight=w)), "precision": float(prec),
            "recall": float(rec), "f1": float(f1),
            "matthews": float(matthews_corrcoef(t, p, sample_weight=w))}
