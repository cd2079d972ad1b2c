"""One table of metric ranges: every interval is clipped to the values its metric can take,
scikit-learn names such as ``f1_weighted`` included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student

from embetter_plug import ProbeResults
from embetter_plug.probe import stats
from embetter_plug.probe.metrics import METRIC_RANGES


def _hand_interval(scores, confidence=0.95):
    s = np.asarray(scores, float)
    k = len(s)
    h = student.ppf(0.5 + confidence / 2, k - 1) * s.std(ddof=1) * np.sqrt(1 / k + 1 / (k - 1))
    return s.mean() - h, s.mean() + h


@pytest.mark.parametrize("metric, scores, bounds", [
    ("f1_weighted", [1.0, 0.9, 1.0, 0.95, 1.0], (0.0, 1.0)),
    ("precision_weighted", [0.0, 0.1, 0.0, 0.05, 0.0], (0.0, 1.0)),
    ("roc_auc_ovr", [1.0, 0.92, 1.0, 0.97, 1.0], (0.0, 1.0)),
    ("matthews_corrcoef", [1.0, 0.8, 1.0, 0.9, 1.0], (-1.0, 1.0)),
])
def test_intervals_of_sklearn_metric_names_are_clipped_to_their_range(metric, scores, bounds):
    low, high = _hand_interval(scores)
    assert low < bounds[0] or high > bounds[1], "the fixture must reach past the range"
    want = (max(low, bounds[0]), min(high, bounds[1]))
    frame = pd.DataFrame({"layer": 0, "part": "part0", "metric": metric,
                          "fold": range(len(scores)), "score": scores})
    res = ProbeResults(frame)
    st = res.statistics(metric).iloc[0]
    np.testing.assert_allclose([st["ci_low"], st["ci_high"]], want)
    sm = res.summary(metric, confidence=0.95).iloc[0]
    np.testing.assert_allclose([sm["ci_low"], sm["ci_high"]], want)


def test_one_range_table():
    assert not hasattr(stats, "BOUNDS")
    for name, (lo, hi) in METRIC_RANGES.items():
        assert stats.clip(name, lo - 1, hi + 1) == (lo, hi)
