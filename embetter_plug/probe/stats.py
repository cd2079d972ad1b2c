"""Statistics on probe scores: intervals, slice comparisons, permutation p-values, the
selection-free estimate of the best probe, selectivity and MDL summaries.

Everything here works on the tidy frame of :class:`ProbeResults`. Besides the plain metrics it
holds, under prefixed metric names, what the optional analyses of ``probe_layers`` computed:

- ``inner:<m>`` (fold ``k``): the slice's mean score on metric ``m`` by cross-validation on the
  rows *outside* test fold ``k`` alone; it picks the winner for fold ``k`` in the nested estimate.
- ``perm:<m>`` (fold = permutation index): the slice's mean CV score with permuted labels.
- ``control:<m>`` (fold ``k``): the fold's score on the control task (Hewitt & Liang, 2019).
- ``mdl:bits`` and ``mdl:uniform`` (fold 0): the online codelength of the labels given the
  slice, and that of the uniform code, in bits (Voita & Titov, 2020).

Intervals use the corrected resampled t-test of Nadeau & Bengio (2003): fold scores share most of
their training rows, so their spread understates the uncertainty; the variance of the mean is
taken as ``(1/k + n_test/n_train) * var`` with ``n_test/n_train = 1/(k-1)`` as in k-fold CV.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import greater_is_better, metric_range

__all__ = ["corrected_interval", "corrected_ttest", "holm", "bonferroni", "permutation_pvalue",
           "INNER", "PERM", "CONTROL", "MDL_BITS", "MDL_UNIFORM", "is_special"]

INNER = "inner:"
PERM = "perm:"
CONTROL = "control:"
MDL_BITS = "mdl:bits"
MDL_UNIFORM = "mdl:uniform"
#: part name of the selection-free row in tables
SELECTED = "selection-free"


def clip(metric: str, low: float, high: float) -> tuple[float, float]:
    """An interval clipped to the values ``metric`` can take (see ``metric_range``; an analysis
    prefix such as ``control:`` is ignored).

    Examples
    --------
    >>> clip("f1_weighted", 0.7, 1.04), clip("control:matthews", -1.2, 0.3)
    ((0.7, 1.0), (-1.0, 0.3))
    """
    lo, hi = metric_range(metric.split(":")[-1])
    return float(np.clip(low, lo, hi)), float(np.clip(high, lo, hi))


def is_special(metric: str) -> bool:
    """Whether ``metric`` names an analysis row (``inner:``, ``perm:``, ...) rather than a score."""
    return ":" in metric


def _t_quantile(confidence: float, df: int) -> float:
    from scipy.stats import t

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    return float(t.ppf(0.5 + confidence / 2, df))


def corrected_interval(scores, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: a confidence interval for the mean of k fold scores.

    The corrected resampled t interval (Nadeau & Bengio, 2003): the standard error is
    ``std * sqrt(1/k + 1/(k-1))``, with ``k - 1`` degrees of freedom. One fold gives
    ``(mean, nan, nan)``.

    Examples
    --------
    >>> mean, low, high = corrected_interval([0.8, 0.9, 0.85, 0.95, 0.9])
    >>> round(mean, 2), round(low, 3), round(high, 3)
    (0.88, 0.774, 0.986)
    """
    s = np.asarray(scores, dtype=float)
    s = s[~np.isnan(s)]
    k = len(s)
    if k < 2:
        return (float(s.mean()) if k else float("nan")), float("nan"), float("nan")
    se = s.std(ddof=1) * np.sqrt(1 / k + 1 / (k - 1))
    h = _t_quantile(confidence, k - 1) * se
    return float(s.mean()), float(s.mean() - h), float(s.mean() + h)


def corrected_ttest(a, b, confidence: float = 0.95) -> dict[str, float]:
    """Paired comparison of two probes' fold scores (same folds): ``a - b``.

    Returns ``diff`` (mean difference), ``low``/``high`` (its corrected resampled t interval),
    ``t`` and the two-sided ``p_value``.
    """
    from scipy.stats import t as student

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    k = len(d)
    mean, low, high = corrected_interval(d, confidence)
    se = d.std(ddof=1) * np.sqrt(1 / k + 1 / (k - 1)) if k > 1 else float("nan")
    if k < 2:
        t, p = float("nan"), float("nan")
    elif se == 0:
        t, p = (0.0, 1.0) if mean == 0 else (float(np.sign(mean) * np.inf), 0.0)
    else:
        t = mean / se
        p = float(2 * student.sf(abs(t), k - 1))
    return {"diff": mean, "low": low, "high": high, "t": float(t), "p_value": p}


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of ``p_values`` (family-wise error rate).

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def bonferroni(p_values) -> np.ndarray:
    """Bonferroni's adjustment: each p-value times their number, at most 1."""
    p = np.asarray(p_values, dtype=float)
    return np.minimum(p * len(p), 1.0)


CORRECTIONS = {"holm": holm, "bonferroni": bonferroni}


def permutation_pvalue(observed: float, null, greater: bool = True) -> float:
    """``(1 + #null scores at least as good as observed) / (1 + n_permutations)``, as
    ``sklearn.model_selection.permutation_test_score`` computes it.

    NaN when ``observed`` or a null score is NaN (a metric undefined on a fold): an undefined
    score is never significant.

    Examples
    --------
    >>> permutation_pvalue(0.9, [0.5, 0.6, 0.95]), permutation_pvalue(float("nan"), [0.5, 0.6])
    (0.5, nan)
    """
    null = np.asarray(null, dtype=float)
    if np.isnan(observed) or np.isnan(null).any():
        return float("nan")
    hits = (null >= observed) if greater else (null <= observed)
    return float((hits.sum() + 1) / (len(null) + 1))


# ------------------------------------------------------------------ from a results frame
def slice_keys(frame, context: list[str]) -> list[str]:
    return [*context, "layer", "part"]


def _pivot(frame, metric: str, keys: list[str]):
    """``fold x slice`` table of ``metric`` (slices in row order)."""
    sub = frame[frame["metric"] == metric]
    if sub.empty:
        return None
    slices = list(dict.fromkeys(map(tuple, sub[keys].astype(str).to_numpy())))
    wide = sub.assign(_slice=list(map(tuple, sub[keys].astype(str).to_numpy())))
    wide = wide.pivot_table(index="fold", columns="_slice", values="score", aggfunc="first",
                            sort=False)
    return wide.reindex(columns=slices)


def selection_free(frame, context: list[str], metric: str, select_by: str,
                   confidence: float = 0.95) -> dict[str, Any] | None:
    """The nested-CV estimate of the best probe's ``metric`` (None without ``inner:`` rows).

    For every fold ``k`` the slice with the best ``inner:<select_by>`` score (chosen on the
    other rows alone; ties go to the first slice) is scored on fold ``k`` by its ordinary CV
    score there, the one already in the frame: the same estimator fitted on the same rows.
    """
    keys = slice_keys(frame, context)
    inner = _pivot(frame, INNER + select_by, keys)
    outer = _pivot(frame, metric, keys)
    if inner is None or outer is None:
        return None
    inner = inner.dropna(axis=1, how="all")
    v = inner.to_numpy(dtype=float)
    v = np.where(np.isnan(v), -np.inf if greater_is_better(select_by) else np.inf, v)
    pick = (v.argmax(1) if greater_is_better(select_by) else v.argmin(1))
    chosen = [inner.columns[j] for j in pick]
    scores = np.array([outer.at[k, c] if k in outer.index and c in outer.columns else np.nan
                       for k, c in zip(inner.index, chosen)], dtype=float)
    mean, low, high = corrected_interval(scores, confidence)
    low, high = clip(metric, low, high)
    std = float(np.nanstd(scores, ddof=1)) if len(scores) > 1 else 0.0
    return {"metric": metric, "select_by": select_by, "mean": mean, "std": std, "low": low,
            "high": high, "n_folds": int(len(scores)), "confidence": confidence,
            "folds": inner.index.tolist(), "scores": scores.tolist(),
            "chosen": [dict(zip(keys, c)) for c in chosen]}


def slice_statistics(results, metric: str, *, alpha: float = 0.05, correction: str = "holm",
                     confidence: float = 0.95):
    """Per probe: mean, interval, and where computed p-values, control score, selectivity and
    MDL; see ``ProbeResults.statistics``."""
    import pandas as pd

    if correction not in CORRECTIONS:
        raise ValueError(f"correction={correction!r} is not valid; use one of {sorted(CORRECTIONS)}.")
    frame = results.frame_
    keys = slice_keys(frame, results.context)
    probes = frame[frame["part"] != "dummy"]
    greater = greater_is_better(metric)
    rows = []
    for key, g in probes.groupby(keys, sort=False, dropna=False):
        by = {m: s["score"].to_numpy(float) for m, s in g.groupby("metric", sort=False)}
        if metric not in by:
            continue
        mean, low, high = corrected_interval(by[metric], confidence)
        low, high = clip(metric, low, high)
        row = {**dict(zip(keys, key)), "metric": metric, "mean": mean, "ci_low": low,
               "ci_high": high}
        if PERM + metric in by:
            row["n_permutations"] = len(by[PERM + metric])
            row["p_value"] = permutation_pvalue(np.mean(by[metric]), by[PERM + metric], greater)
        if CONTROL + metric in by:
            row["control"] = float(np.nanmean(by[CONTROL + metric]))
            row["selectivity"] = (mean - row["control"]) if greater else (row["control"] - mean)
        if MDL_BITS in by:
            row["mdl_bits"] = float(by[MDL_BITS][0])
            row["uniform_bits"] = float(by[MDL_UNIFORM][0])
            row["compression"] = row["uniform_bits"] / row["mdl_bits"]
        rows.append(row)
    out = pd.DataFrame(rows)
    if "p_value" in out.columns:
        tested = out["p_value"].notna().to_numpy()
        adjusted = np.full(len(out), np.nan)
        adjusted[tested] = CORRECTIONS[correction](out.loc[tested, "p_value"])
        out.insert(out.columns.get_loc("p_value") + 1, f"p_{correction}", adjusted)
        out["significant"] = adjusted < alpha
    return out


def near_best(frame, context: list[str], metric: str, best: dict, *, alpha: float = 0.05,
              confidence: float = 0.95):
    """Every probe against the best one, paired over the same folds (``corrected_ttest``).

    Returns a frame with the slice keys, ``diff`` (probe minus best, mean over folds), ``p_value``
    and ``near_best``: the difference is not significant at ``alpha`` (the best itself, and a
    probe scored on other folds or with a single fold, count as near: they cannot be told apart).
    """
    import pandas as pd

    keys = slice_keys(frame, context)
    probes = frame[frame["part"] != "dummy"]
    wide = _pivot(probes, metric, keys)
    if wide is None:
        raise ValueError(f"no probe has {metric!r} scores.")
    top = tuple(str(best[k]) for k in keys)
    ref = wide[top].to_numpy(float)
    rows = []
    for key in wide.columns:
        scores = wide[key].to_numpy(float)
        ok = ~(np.isnan(scores) | np.isnan(ref))
        test = corrected_ttest(scores[ok], ref[ok], confidence) if ok.sum() > 1 else {
            "diff": float(np.nanmean(scores) - np.nanmean(ref)), "p_value": float("nan")}
        p = test["p_value"]
        rows.append({**dict(zip(keys, key)), "diff": test["diff"], "p_value": p,
                     "near_best": key == top or not (p < alpha)})
    return pd.DataFrame(rows)


def _ranges(values: list[int]) -> str:
    """``[2, 3, 4, 7]`` -> ``"2-4, 7"``."""
    out, start = [], None
    values = sorted(set(values))
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ", ".join(out)


def describe_probes(rows, context: list[str], all_parts: list[str]) -> str:
    """Probes in words: ``"layers 2-4, all parts"``, ``"layer 3 mlp_out; layers 1-2
    resid_post"``; ``rows`` holds ``layer``, ``part`` and the ``context`` columns, ``all_parts``
    the parts probed (so that "all parts" can be said).

    Examples
    --------
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"layer": [2, 3, 4, 2, 3, 4], "part": ["a"] * 3 + ["b"] * 3})
    >>> describe_probes(rows, [], ["a", "b"])
    'layers 2-4, all parts'
    >>> describe_probes(rows.iloc[[0, 1, 5]], [], ["a", "b"])
    'layers 2-3 a; layer 4 b'
    """
    groups = (rows.groupby(context, sort=False) if context else [((), rows)])
    phrases = []
    for ctx, g in groups:
        ctx = ctx if isinstance(ctx, tuple) else (ctx,)
        varying = [f"{v}" for c, v in zip(context, ctx) if rows[c].nunique() > 1]
        by_part = {p: tuple(sorted(int(l) for l in s["layer"]))
                   for p, s in g.groupby("part", sort=False)}
        by_layers: dict[tuple, list[str]] = {}
        for part, layers in by_part.items():
            by_layers.setdefault(layers, []).append(part)
        parts_said = []
        for layers, parts in by_layers.items():
            word = "layer" if len(layers) == 1 else "layers"
            if len(by_layers) == 1 and sorted(parts) == sorted(all_parts) and len(parts) > 1:
                parts_said.append(f"{word} {_ranges(list(layers))}, all parts")
            else:
                parts_said.append(f"{word} {_ranges(list(layers))} {' and '.join(parts)}")
        prefix = f"{', '.join(varying)}: " if varying else ""
        phrases.append(prefix + "; ".join(parts_said))
    return "; ".join(phrases)
