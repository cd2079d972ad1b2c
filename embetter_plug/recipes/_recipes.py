"""The recipes :func:`~embetter_plug.recipes.select_recipe` compares, and what each costs.

Every recipe turns texts into a fitted scikit-learn Pipeline. The frozen ones read one set of
activations (every layer's mean- or last-token-pooled residual stream, computed once for all
of them and for every fold); the fine-tuning one trains the transformer itself per fold.
Costs are estimated in CPU-seconds from one timed forward pass over a few of the user's texts
(``sec_per_token``) and the data's size, before anything is trained.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

#: CPU-s of fine-tuning per token and epoch, in timed forward passes of the calibration
#: (forward + backward + step with bf16, frozen word embeddings and bucketed batches measured
#: about 1.2 of them on MiniLM; benchmarks/bench_quality.py), with a margin
FINE_TUNE_PASSES = 1.5
#: CPU-s per (row x feature x class x solve) of an lbfgs logistic regression, pessimistic
LR_SEC = 1e-7
#: CPU-s per (row x feature x epoch) of PlugClassifier's small MLP
MLP_SEC = 2e-8


@dataclass
class Recipe:
    """One way from texts to labels.

    ``layers`` are the model block indices a frozen recipe reads (from the activations of
    every block, computed once, where block ``i`` is at position ``i``); ``combine`` how :class:`~embetter_plug.LayerPooler` combines them, and ``head()``
    the estimator on the result. A recipe with ``layers=None`` trains on texts
    (``tuner(model)`` gives its estimator). ``pool`` is the former name of ``combine``
    (deprecated; it will be removed in the next release).
    """

    name: str
    description: str
    layers: Any = None
    combine: str = "concat"
    head: Callable[[], Any] | None = None
    tuner: Callable[[Any], Any] | None = None
    cost: Callable[..., float] = field(default=lambda **_: 0.0, repr=False)
    pool: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pool is not None:
            warnings.warn("Recipe's `pool` was renamed `combine` and will be removed in the next "
                          f"release; use combine={self.pool!r}.", FutureWarning, stacklevel=3)
            self.combine, self.pool = self.pool, None

    @property
    def frozen(self) -> bool:
        return self.tuner is None


def _lr(C: Any = 1.0, random_state: int = 0):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    if C == "cv":  # C chosen inside, by 3-fold CV on the rows it is given
        return LogisticRegressionCV(Cs=[0.01, 0.1, 1.0], cv=3, max_iter=300, scoring="accuracy",
                                    l1_ratios=(0.0,), use_legacy_attributes=False,
                                    random_state=random_state)
    return LogisticRegression(C=C, max_iter=1000, random_state=random_state)


def _spread(n_blocks: int, k: int = 6) -> list[int]:
    """Up to ``k`` block positions spread over the stack, the last one included."""
    return sorted({int(round(x)) for x in np.linspace(n_blocks / k - 1, n_blocks - 1, min(k, n_blocks))})


def default_recipes(n_blocks: int, *, random_state: int = 0, tuner_params: dict | None = None):
    """The four recipes for a model with ``n_blocks`` blocks."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    from ..models import PlugClassifier
    from ..tuners import TransformerTuner

    multi = _spread(n_blocks)
    tuner_params = {"random_state": random_state, **(tuner_params or {})}
    return [
        Recipe("embedding_lr", "last layer's pooled state, L2-normalised, + LogisticRegression(C=1) "
               "(sentence-transformers style)", layers=[n_blocks - 1],
               head=lambda: make_pipeline(Normalizer(), _lr(1.0, random_state)),
               cost=lambda n, d, k, **_: LR_SEC * n * d * k),
        Recipe("layers_lr", f"blocks {multi} pooled and concatenated + StandardScaler + "
               "LogisticRegression (C by inner 3-fold CV)", layers=multi,
               head=lambda: make_pipeline(StandardScaler(), _lr("cv", random_state)),
               cost=lambda n, d, k, **_: LR_SEC * n * d * len(multi) * k * 10),
        Recipe("plug_classifier", f"PlugClassifier (skorch MLP with early stopping) on blocks {multi}",
               layers=multi, combine="concat",
               head=lambda: PlugClassifier(random_state=random_state, max_epochs=60, patience=5,
                                           device="cpu"),
               cost=lambda n, d, k, **_: MLP_SEC * n * d * len(multi) * 60),
        Recipe("fine_tune", "TransformerTuner: the transformer fine-tuned end to end with a "
               "linear head (3 epochs, frozen word embeddings, early stopping)",
               tuner=lambda model, tokenizer: TransformerTuner(model, tokenizer, **tuner_params),
               cost=lambda n, tokens, sec_per_token, epochs=3, **_:
               sec_per_token * tokens * (FINE_TUNE_PASSES * epochs + 1)),
    ]


def estimate(recipe: Recipe, *, n: int, d: int, k: int, tokens: float, sec_per_token: float,
             epochs: int = 3) -> float:
    """CPU-s of one fit of ``recipe`` on ``n`` rows holding ``tokens`` tokens (plus predicting
    a fold of the same size); the frozen recipes' shared encoding is counted apart."""
    return float(recipe.cost(n=n, d=d, k=max(1, k - (k == 2)), tokens=tokens,
                             sec_per_token=sec_per_token, epochs=epochs))
