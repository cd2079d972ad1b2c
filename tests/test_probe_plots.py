"""Plots of many layers: tick labels that do not overlap, error bands inside the metric's range."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from embetter_plug import LayerMetricDisplay, ProbeResults  # noqa: E402
from embetter_plug.probe import write_report  # noqa: E402

N_LAYERS = 30


@pytest.fixture(scope="module")
def results():
    """30 layers x 2 parts; accuracy near 1 with a wide spread, so mean + std > 1."""
    rng = np.random.default_rng(0)
    rows = [(None, "dummy", m, f, 0.5) for m in ("accuracy", "r2") for f in range(3)]
    for layer in range(N_LAYERS):
        for part in ("resid_post", "mlp_out"):
            acc = np.clip(0.97 + rng.normal(scale=0.05, size=3), 0, 1)
            acc[0] = 1.0
            r2 = 0.9 + np.array([0.1, -0.1, 0.09])  # 1.0, 0.8, 0.99
            rows += [(layer, part, "accuracy", f, float(a)) for f, a in enumerate(acc)]
            rows += [(layer, part, "r2", f, float(v)) for f, v in enumerate(r2)]
    frame = pd.DataFrame(rows, columns=["layer", "part", "metric", "fold", "score"])
    return ProbeResults(frame, task="classification")


def _overlaps(ax) -> list:
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    boxes.sort(key=lambda b: b.x0)
    return [(a, b) for a, b in zip(boxes, boxes[1:]) if a.x1 > b.x0]


@pytest.mark.parametrize("figsize", [(5.5, 3.8), (7, 4.2), (3.5, 3)])
def test_layer_labels_do_not_overlap_at_30_layers(results, figsize):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    LayerMetricDisplay.from_results(results, "accuracy", ax=ax)
    ticks = ax.get_xticks()
    assert 2 <= len(ticks) < N_LAYERS and ticks[0] == 0
    assert len(set(np.diff(ticks))) == 1  # evenly thinned
    assert _overlaps(ax) == []
    plt.close(fig)


@pytest.mark.parametrize("metric, low, high", [("accuracy", 0.0, 1.0), ("r2", -np.inf, 1.0)])
def test_error_bands_stay_in_the_metrics_range(results, metric, low, high):
    import matplotlib.pyplot as plt

    s = results.summary(metric)
    assert (s["mean"] + s["std"]).max() > 1.0  # the unclipped band would pass 1.0
    disp = LayerMetricDisplay.from_results(results, metric)
    for label, band in disp.bands_.items():
        y = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
        assert y.max() <= high + 1e-12 and y.min() >= low
        ref = s[s["part"] == label].sort_values("layer")
        # below the bound the band is mean ± std exactly
        np.testing.assert_allclose(np.sort(y)[:3], np.sort(ref["mean"] - ref["std"])[:3])
    plt.close(disp.figure_)


def test_report_thins_labels_and_clips_bands(results, tmp_path):
    from test_probe_results import _render

    path = write_report(results, tmp_path / "report.html")
    dom = _render(path, "metric=accuracy")
    xs = [float(x) for x in re.findall(r'<text class="tick" x="([\d.]+)"', dom)]
    assert 2 <= len(xs) < N_LAYERS and min(np.diff(xs)) >= 30
    bands = re.findall(r'data-part="([^"]+)" data-n="30" data-means="[^"]+" data-band="([^"]+)"',
                       dom)
    s = results.summary("accuracy")
    assert len(bands) == 2
    for part, band in bands:
        lo, hi = map(float, band.split())
        ref = s[s["part"] == part]
        assert (ref["mean"] + ref["std"]).max() > 1 and hi == 1.0  # clipped at accuracy's maximum
        assert lo == pytest.approx(max(0.0, (ref["mean"] - ref["std"]).min()), abs=1e-6)
