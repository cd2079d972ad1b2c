"""Draw the pictures of docs/vision.md: probes per layer of a tiny random ViT on the digits, and
of a tiny random LLaVA on digit+caption pairs.

Run: ``python docs/vision_figures.py`` (a few minutes on a laptop CPU); writes
``docs/img/vision_digits_probe.png`` and ``docs/img/vision_pairs_probe.png``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from embetter_plug import LayerMetricDisplay, TransformerActivationEncoder, probe_layers  # noqa: E402
from embetter_plug.testing import make_tiny_vision, make_tiny_vlm  # noqa: E402

CAPTIONS = ["a handwritten digit", "a small scanned number", "a picture of a number", "one digit"]

HERE = Path(__file__).resolve().parent


def pairs(n: int) -> tuple[list[dict], object]:
    """Digit images with captions that do not name the digit; the label is its parity."""
    digits = load_digits()
    rows = [{"text": CAPTIONS[i % len(CAPTIONS)], "image": digits.images[i] / 16.0}
            for i in range(n)]
    return rows, digits.target[:n] % 2


def draw(res, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    LayerMetricDisplay.from_results(res, ax=ax)
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(path)
    print(res.table(["accuracy"]))


def vlm(path: Path = HERE / "img" / "vision_pairs_probe.png", n: int = 600) -> None:
    rows, y = pairs(n)
    model, processor = make_tiny_vlm("llava")
    enc = TransformerActivationEncoder(model, processor=processor,
                                       parts=["resid_post", "attn_out", "mlp_out"],
                                       token_pooling=["image:mean", "text:mean", "lasttoken"])
    X = enc.fit_transform(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = probe_layers(X, y, cv=5, layout=enc.layout_, random_state=0)
    draw(res, f"parity of the digit in {n} image+caption pairs, tiny random LLaVA", path)


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
    best = res.best()
    draw(res, f"digits (1,797 images, 10 classes) through a tiny random ViT: best "
              f"{best['layer']}/{best['part']} {best['mean']:.3f}", path)


if __name__ == "__main__":
    main()
    vlm()
