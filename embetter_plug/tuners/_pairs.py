"""What the pair-making tuners share: draw positive/negative pairs from ``(X, y)`` and train a
pair learner on them, continuing on every ``partial_fit``."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._utils import seed_from_random_state
from ._labels import sample_pairs, update_classes
from ._training import forget_fitted


class PairTunerMixin:
    """For tuners with ``n_neg`` and ``random_state`` that wrap a learner in ``learner_``.

    A subclass sets ``_learner_cls`` and ``_learner_params()``, checks its input in
    ``partial_fit`` and hands over to :meth:`_train_on_pairs`.
    """

    _learner_cls: type

    def _learner_params(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, X, y):
        """Make pairs from ``(X, y)`` and train a fresh learner on them."""
        forget_fitted(self, "learner_", "classes_")
        return self.partial_fit(X, y)

    def _train_on_pairs(self, y, classes, first: bool, take: Callable[[np.ndarray], Any]):
        """Draw pairs from the labels ``y`` (seeded) and train ``learner_`` on ``take(left)``,
        ``take(right)``; the first call builds the learner, later ones continue it."""
        codes = update_classes(self, y, classes, first=first)
        params = self._learner_params()
        if first:
            self._pair_rng = np.random.default_rng(seed_from_random_state(self.random_state))
            seed = int(self._pair_rng.integers(2**31 - 1))
            self.learner_ = self._learner_cls(random_state=seed, **params)
        else:
            self.learner_.set_params(**params)
        left, right, sim = sample_pairs(codes, int(self.n_neg), self._pair_rng)
        self.learner_.partial_fit(take(left), take(right), sim)
        return self

    @property
    def _n_features_out(self) -> int:
        return self.learner_._n_features_out
