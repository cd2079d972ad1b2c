"""Draw the first two principal components of raw vs tuned MiniLM embeddings (docs/img/).

Tuners are fitted on 200 labelled training rows; the picture shows held-out test rows.

    python docs/pca_tuned_space.py [--data sst2|trec|builtin] [--n-test 1000]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from embetter_plug import (ContrastiveTuner, FeedForwardTuner, SentenceEncoder,  # noqa: E402
                           load_builtin_dataset)

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EMBETTER_PLUG_SHARED", HERE.parents[1] / "shared")) / "data"


def load(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = (load_builtin_dataset() if name == "builtin"
          else pd.read_csv(SHARED / name / f"{name}.csv", keep_default_na=False))
    return df[df.split == "train"], df[df.split == "test"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="sst2", help="sst2, trec (from ../shared/data) or builtin")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--out", default=str(HERE / "img" / "pca_tuned_space.png"))
    args = ap.parse_args(argv)

    train, test = load(args.data)
    train = train.sample(n=200, random_state=32)
    test = test.sample(n=min(args.n_test, len(test)), random_state=42)
    enc = SentenceEncoder(device="cpu").fit()
    X_train, y_train = enc.transform(train.text.tolist()), train.label.to_numpy()
    X_test, y_test = enc.transform(test.text.tolist()), test.label.to_numpy()

    spaces = {"raw all-MiniLM-L6-v2": X_test}
    for tuner in (FeedForwardTuner(random_state=0), ContrastiveTuner(random_state=0)):
        spaces[f"{type(tuner).__name__} (defaults)"] = tuner.fit(X_train, y_train).transform(X_test)

    classes = np.unique(y_test)
    colour = np.searchsorted(classes, y_test)
    fig, axes = plt.subplots(1, len(spaces), figsize=(5 * len(spaces), 4.6))
    for ax, (title, X) in zip(axes, spaces.items()):
        P = PCA(n_components=2).fit_transform(X)
        sc = ax.scatter(P[:, 0], P[:, 1], c=colour, s=6, cmap="coolwarm" if len(classes) == 2 else "tab10")
        ax.set_title(title)
        ax.set_xticks([]), ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=sc.cmap(sc.norm(i))) for i in range(len(classes))]
    fig.legend(handles, [str(c) for c in classes], loc="lower center", ncol=len(classes), frameon=False)
    fig.suptitle(f"PCA of {len(test)} held-out {args.data} rows; tuners fitted on 200 other labelled rows")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
