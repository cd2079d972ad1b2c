"""select_recipe: compare recipes on the training rows only, within a CPU budget, and refit the best."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import pandas as pd

from .._utils import check_texts, logger
from ._recipes import Recipe, default_recipes, estimate

__all__ = ["select_recipe", "RecipeSelection", "plan_recipes"]

#: rows of the user's data timed once to price the recipes
CALIBRATION_ROWS = 32


class RecipeSelection:
    """What :func:`select_recipe` found.

    Attributes
    ----------
    results : DataFrame
        One row per recipe: ``recipe``, ``accuracy`` (out-of-fold, or on the validation rows),
        ``low``/``high`` (95% Wilson interval), ``fold_std``, ``est_cpu_s``, ``cpu_s`` (measured),
        ``status`` (``"scored"``, or why it was skipped), ``description``.
    best : str
        The recipe with the highest accuracy.
    pipeline : Pipeline
        The best recipe refitted on all rows (texts in, labels out).
    scheme : str
        ``"cv"`` (k-fold) or ``"split"`` (one validation split), as the budget allowed.
    cpu_s, refit_cpu_s : float
        CPU-seconds of the whole selection, and of the winner's refit on all rows.
    """

    def __init__(self, results: pd.DataFrame, best: str, pipeline: Any, scheme: str,
                 cpu_s: float, budget_s: float):
        self.results, self.best, self.pipeline, self.scheme = results, best, pipeline, scheme
        self.cpu_s, self.budget_s = cpu_s, budget_s

    def table(self) -> str:
        cols = ["recipe", "accuracy", "low", "high", "fold_std", "est_cpu_s", "cpu_s", "status"]
        frame = self.results[cols].copy()
        frame.insert(0, "", np.where(frame["recipe"] == self.best, "*", ""))
        return frame.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``correct / n``."""
    if n == 0:
        return float("nan"), float("nan")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def plan_recipes(recipes: list[Recipe], budget_s: float, *, n: int, cv: int, d: int, k: int,
                 tokens: float, sec_per_token: float, epochs: int = 3):
    """``(scheme, {recipe: estimated CPU-s}, {recipe: why skipped})`` for a budget.

    k-fold CV when every recipe fits in the budget that way (folds + the winner's refit on all
    rows + the shared encoding), else one validation split (a fifth of the rows); recipes that
    still do not fit are skipped, the dearest first. No recipe fitting is an error.
    """
    encode = sec_per_token * tokens

    def costs(folds: int, frac: float) -> dict[str, float]:
        return {r.name: folds * estimate(r, n=int(n * frac), d=d, k=k, tokens=tokens * frac,
                                         sec_per_token=sec_per_token, epochs=epochs)
                for r in recipes}

    refit = {r.name: estimate(r, n=n, d=d, k=k, tokens=tokens, sec_per_token=sec_per_token,
                              epochs=epochs) for r in recipes}
    for scheme, folds, frac in (("cv", cv, (cv - 1) / cv), ("split", 1, 0.8)):
        est = costs(folds, frac)
        total = sum(est.values()) + max(refit.values()) + encode
        if total <= budget_s:
            return scheme, est, {}
    est, skipped, kept = costs(1, 0.8), {}, list(recipes)
    while kept:
        total = sum(est[r.name] for r in kept) + max(refit[r.name] for r in kept) \
            + (encode if any(r.frozen for r in kept) else 0)
        if total <= budget_s:
            return "split", {r.name: est[r.name] for r in kept}, skipped
        dear = max(kept, key=lambda r: est[r.name] + refit[r.name])
        skipped[dear.name] = (f"skipped: needs about {(est[dear.name] + refit[dear.name]) / 60:.1f} "
                              "CPU-min, more than the budget leaves")
        kept.remove(dear)
    cheapest = min(est[r.name] + refit[r.name] + (encode if r.frozen else 0) for r in recipes)
    raise ValueError(f"a budget of {budget_s / 60:.2f} CPU-minutes is too small for any recipe on "
                     f"{n} rows: the cheapest needs about {cheapest / 60:.2f} CPU-minutes (one "
                     "validation split and the refit on all rows); raise the budget or use fewer rows.")


def _calibrate(model, tokenizer, texts: list[str], encoder_params: dict) -> tuple[float, Any]:
    """CPU-s per token of one forward pass over a few texts, and the fitted encoder (which keeps
    the model loaded for the frozen recipes)."""
    from ..encoder import TransformerActivationEncoder

    enc = TransformerActivationEncoder(model, tokenizer, layers="all", **encoder_params).fit()
    sample = texts[:CALIBRATION_ROWS]
    enc.transform(sample[:2])  # first call: lazy set-up
    start = time.process_time()
    enc.transform(sample)
    spent = time.process_time() - start
    return spent / max(1, _count_tokens(enc, sample)), enc


def _count_tokens(enc, texts: list[str]) -> int:
    ids = enc.tokenizer_(texts, truncation=True, max_length=enc.max_length_)["input_ids"]
    return int(sum(len(i) for i in ids))


def _folds(y: np.ndarray, scheme: str, cv: int, seed: int):
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    if scheme == "cv":
        return list(StratifiedKFold(cv, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    return list(StratifiedShuffleSplit(1, test_size=0.2, random_state=seed).split(np.zeros(len(y)), y))


def _score_frozen(recipe: Recipe, X: np.ndarray, y, folds) -> np.ndarray:
    from sklearn.base import clone

    from ..pooler import LayerPooler

    pred = np.empty(len(y), dtype=object)
    Xr = LayerPooler(combine=recipe.combine).fit_transform(X[:, recipe.layers])
    head = recipe.head()
    for train, test in folds:
        pred[test] = clone(head).fit(Xr[train], y[train]).predict(Xr[test])
    return pred


def _score_tuner(recipe: Recipe, model, tokenizer, texts, y, folds) -> np.ndarray:
    pred = np.empty(len(y), dtype=object)
    for train, test in folds:
        tuner = recipe.tuner(model, tokenizer).fit([texts[i] for i in train], y[train])
        pred[test] = tuner.predict([texts[i] for i in test])
    return pred


def _refit(recipe: Recipe, model, tokenizer, texts, y, X, encoder_params: dict):
    from sklearn.pipeline import Pipeline

    from ..encoder import TransformerActivationEncoder
    from ..pooler import LayerPooler

    if not recipe.frozen:
        return Pipeline([("tuner", recipe.tuner(model, tokenizer).fit(texts, y))])
    enc = TransformerActivationEncoder(model, tokenizer, layers=list(recipe.layers),
                                       **encoder_params).fit()
    pooler = LayerPooler(combine=recipe.combine).fit(X[:, recipe.layers])
    head = recipe.head().fit(pooler.transform(X[:, recipe.layers]), y)
    return Pipeline([("encoder", enc), ("pooler", pooler), ("head", head)])


def select_recipe(texts, y, *, model: Any = None, tokenizer: Any = None, budget: float = 15.0,
                  cv: int = 5, recipes: list[Recipe] | None = None, random_state: int = 0,
                  tuner_params: dict | None = None, done: dict | None = None,
                  on_scored: Callable[[pd.DataFrame], None] | None = None,
                  verbose: bool = False) -> RecipeSelection:
    """Compare recipes by cross-validation on ``(texts, y)``, within ``budget`` CPU-minutes,
    and refit the most accurate on all rows.

    The recipes (see :func:`~embetter_plug.recipes.default_recipes`): a sentence-transformers
    style embedding + logistic regression; several layers' states + scaler + logistic
    regression with ``C`` chosen inside; :class:`~embetter_plug.PlugClassifier`; and
    :class:`~embetter_plug.TransformerTuner`. Each recipe's cost is estimated first (from one
    timed forward pass over a few texts): k-fold CV when all fit in the budget, else one
    validation split, else the dearest recipes are skipped; a budget too small for any recipe
    is a ``ValueError`` before training. Only ``(texts, y)`` are read: no test rows.

    Parameters
    ----------
    texts : list of str
    y : array-like of labels
    model, tokenizer : as in :class:`~embetter_plug.TransformerActivationEncoder`
    budget : float, default=15.0
        CPU-minutes (all threads of this process) for the comparison and the refit.
    cv : int, default=5
    recipes : list of Recipe or None
        ``None``: the default four.
    random_state : int, default=0
        Folds, and every recipe's seed.
    tuner_params : dict or None
        Extra parameters of the fine-tuning recipe's :class:`~embetter_plug.TransformerTuner`.
    done : dict or None
        ``{recipe name: out-of-fold predictions}`` of an earlier, interrupted run with the
        same data and settings: those recipes are not run again.
    on_scored : callable or None
        Called after each recipe with the results so far and ``{recipe name: out-of-fold
        predictions}`` (to write them as they come; ``done=`` takes the latter back).
    verbose : bool, default=False
        A progress bar over the recipes.

    Returns
    -------
    RecipeSelection

    Examples
    --------
    >>> from embetter_plug.recipes import select_recipe
    >>> from embetter_plug.testing import make_tiny_model
    >>> model, tok = make_tiny_model("bert")
    >>> texts = ["good film", "great film", "bad film", "awful film"] * 10
    >>> y = ["pos", "pos", "neg", "neg"] * 10
    >>> sel = select_recipe(texts, y, model=model, tokenizer=tok, cv=2, budget=5,
    ...                     tuner_params={"max_epochs": 1})
    >>> sel.best in set(sel.results["recipe"]), sel.pipeline.predict(["good film"]).shape
    (True, (1,))
    """
    from sklearn.utils.multiclass import check_classification_targets
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    from ..arch import blocks as _arch

    texts = check_texts(texts)
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(texts):
        raise ValueError(f"select_recipe: {len(texts)} texts but y has shape {y.shape}; give one "
                         "label per text.")
    check_classification_targets(y)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"select_recipe: y holds a single class ({classes.tolist()!r}); give "
                         "at least two classes.")
    need = max(cv, 2) * 2  # each fold's training part still needs an early-stopping split
    if counts.min() < need:
        raise ValueError(f"select_recipe: class {classes[np.argmin(counts)]!r} has {counts.min()} "
                         f"row(s); comparing recipes with cv={cv} needs at least {need} per class "
                         "(drop or merge rare classes, or lower cv).")
    if not (isinstance(budget, (int, float)) and budget > 0):
        raise ValueError(f"budget={budget!r} must be a positive number of CPU-minutes.")
    start = time.process_time()
    encoder_params = dict(parts="resid_post", token_pooling="auto", device="cpu", dtype="float32",
                          verbose=False)
    sec_per_token, enc = _calibrate(model, tokenizer, texts, encoder_params)
    n_blocks = _arch.n_blocks(enc.model_)
    if list(enc.layout_.layers) != list(range(n_blocks)):  # positions along X's layer axis
        raise RuntimeError(f"expected blocks 0..{n_blocks - 1}, got {enc.layout_.layers}")
    recipes = recipes if recipes is not None else default_recipes(
        n_blocks, random_state=random_state, tuner_params=tuner_params)
    tokens = float(_count_tokens(enc, texts))
    d = enc.layout_.shape[-1]
    scheme, est, skipped = plan_recipes(
        recipes, budget * 60 - (time.process_time() - start), n=len(texts), cv=cv, d=d,
        k=len(classes), tokens=tokens, sec_per_token=sec_per_token,
        epochs=(tuner_params or {}).get("max_epochs", 3))
    folds = _folds(y, scheme, cv, random_state)
    logger.info("select_recipe: %s, estimates %s CPU-s, skipped %s", scheme, est, list(skipped))
    rows, X, done = [], None, dict(done or {})
    run = [r for r in recipes if r.name in est]
    for recipe in tqdm(run, desc="recipes", disable=not verbose):
        t0 = time.process_time()
        if recipe.name in done:
            pred, spent = np.asarray(done[recipe.name], dtype=object), float("nan")
        else:
            with threadpool_limits(1, user_api="blas"):  # one BLAS thread: faster LR solves on few cores
                if recipe.frozen:
                    if X is None:
                        X = np.asarray(enc.transform(texts))[:, :, 0, :]
                    pred = _score_frozen(recipe, X, y, folds)
                else:
                    pred = _score_tuner(recipe, model, tokenizer, texts, y, folds)
            spent = time.process_time() - t0
        rows.append(_row(recipe, pred, y, folds, est[recipe.name], spent))
        done[recipe.name] = pred
        if on_scored is not None:
            on_scored(_frame(rows, recipes, skipped), done)
    results = _frame(rows, recipes, skipped)
    scored = results[results["status"] == "scored"]
    best = scored.sort_values(["accuracy", "est_cpu_s"], ascending=[False, True])["recipe"].iloc[0]
    winner = next(r for r in recipes if r.name == best)
    if winner.frozen and X is None:
        X = np.asarray(enc.transform(texts))[:, :, 0, :]
    t0 = time.process_time()
    with threadpool_limits(1, user_api="blas"):
        pipeline = _refit(winner, model, tokenizer, texts, y, X, encoder_params)
    selection = RecipeSelection(results, best, pipeline, scheme, time.process_time() - start,
                                budget * 60)
    selection.refit_cpu_s = time.process_time() - t0
    return selection


def _row(recipe: Recipe, pred, y, folds, est: float, spent: float) -> dict:
    test = np.concatenate([t for _, t in folds])
    hits = pred[test] == y[test]
    per_fold = [np.mean(pred[t] == y[t]) for _, t in folds]
    low, high = wilson(int(hits.sum()), len(test))
    return dict(recipe=recipe.name, accuracy=float(hits.mean()), low=low, high=high,
                fold_std=float(np.std(per_fold)) if len(per_fold) > 1 else float("nan"),
                est_cpu_s=est, cpu_s=spent, status="scored", description=recipe.description)


def _frame(rows: list[dict], recipes: list[Recipe], skipped: dict) -> pd.DataFrame:
    extra = [dict(recipe=r.name, accuracy=np.nan, low=np.nan, high=np.nan, fold_std=np.nan,
                  est_cpu_s=np.nan, cpu_s=np.nan, status=skipped[r.name], description=r.description)
             for r in recipes if r.name in skipped]
    return pd.DataFrame(rows + extra)
