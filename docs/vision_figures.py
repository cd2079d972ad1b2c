"""Draw the picture of docs/vision.md: a probe per layer of a tiny random ViT on the digits.

Run: ``python docs/vision_figures.py`` (about a minute on a laptop CPU); writes
``docs/img/vision_digits_probe.png``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from embetter_plug import LayerMetricDisplay, TransformerActivationEncoder, probe_layers  # noqa: E402
from embetter_plug.testing import make_tiny_vision  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(path: Path = HERE / "img" / "vision_digits_probe.png") -> None:
    digits = load_digits()
    model, image_processor = make_tiny_vision("vit")
    enc = TransformerActivationEncoder(model, processor=image_processor,
                                       parts=["resid_pre", "resid_post", "mlp_out"],
                                       token_pooling=["cls", "image:mean"], batch_size=64)
    X = enc.fit_transform(digits.images / 16.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = probe_layers(X, digits.target, cv=5, layout=enc.layout_, random_state=0)
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    LayerMetricDisplay.from_results(res, ax=ax)
    best = res.best()
    ax.set_title(f"digits (1,797 images, 10 classes) through a tiny random ViT: best "
                 f"{best['layer']}/{best['part']} {best['mean']:.3f}", fontsize="medium")
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(path)
    print(res.table(["accuracy"]))


if __name__ == "__main__":
    main()
