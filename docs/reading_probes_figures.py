"""Draw the pictures of docs/reading-probes.md: probes on pure noise and on a planted signal.

Run: ``python docs/reading_probes_figures.py`` (a minute on a laptop CPU); writes
``docs/img/probe_noise.png`` and ``docs/img/probe_planted.png``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from embetter_plug import LayerMetricDisplay, probe_layers  # noqa: E402
from embetter_plug.layout import ActivationLayout  # noqa: E402

HERE = Path(__file__).resolve().parent
LAYOUT = ActivationLayout(layers=tuple(range(6)), parts=("resid_post", "attn_out", "mlp_out"),
                          hidden_size=32)


def data(planted: bool, n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat([0, 1], n // 2))
    X = rng.normal(size=(n, 6, 3, 32))
    if planted:  # the label lives in layer 3's residual stream, weakly in layers 2 and 4
        for layer, strength in ((2, 0.4), (3, 0.9), (4, 0.5)):
            X[:, layer, 0, :2] += strength * (2 * y[:, None] - 1)
    return X, y


def draw(planted: bool, path: Path) -> None:
    X, y = data(planted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = probe_layers(X, y, cv=5, layout=LAYOUT, control=True, random_state=0)
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    LayerMetricDisplay.from_results(res, ax=ax)
    best, sf = res.best(), res.selection_free()
    ax.set_title(f"{'planted signal in layer 3 resid_post' if planted else 'pure noise'}: "
                 f"best CV {best['mean']:.3f}, selection-free {sf['mean']:.3f} "
                 f"[{sf['low']:.2f}, {sf['high']:.2f}]", fontsize="medium")
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(path, res.verdict()["beats_chance"])


if __name__ == "__main__":
    draw(False, HERE / "img" / "probe_noise.png")
    draw(True, HERE / "img" / "probe_planted.png")
