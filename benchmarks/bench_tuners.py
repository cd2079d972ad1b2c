"""Held-out accuracy on raw vs tuned MiniLM embeddings, and fit time, for every tuner.

For each data set (SST-2, TREC): draw 200 labelled rows from the train split (``--seeds``
draws), embed them and the whole test split with the built-in all-MiniLM-L6-v2, fit each
tuner on the 200 rows, then score a logistic regression (and a 5-NN) trained on the 200
rows' embeddings on the held-out test split. Writes the "bench_tuners" section of
benchmarks/RESULTS.md.

    python benchmarks/bench_tuners.py [--seeds 3] [--no-sbert]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pandas as pd  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from embetter_plug import (ContrastiveTuner, FeedForwardTuner, SbertTuner,  # noqa: E402
                           SentenceEncoder)

DATA = Path(os.environ.get("EMBETTER_PLUG_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
N_TRAIN = 200

# name -> factory(seed); "embetter ..." rows use the settings of embetter's finetune guide/defaults
NUMERIC_TUNERS = {
    "FeedForwardTuner (defaults)": lambda s: FeedForwardTuner(random_state=s, device="cpu"),
    "FeedForwardTuner (embetter guide: 500 epochs, lr 0.01, hidden 200, full batch)":
        lambda s: FeedForwardTuner(n_epochs=500, learning_rate=0.01, hidden_dim=200, batch_size=None,
                                   random_state=s, device="cpu"),
    "ContrastiveTuner (defaults)": lambda s: ContrastiveTuner(random_state=s, device="cpu"),
    "ContrastiveTuner (embetter learner defaults: lr 2e-5, 1 full-batch epoch)":
        lambda s: ContrastiveTuner(learning_rate=2e-5, epochs=1, batch_size=None, random_state=s,
                                   device="cpu"),
}


def scores(Xtr, ytr, Xte, yte) -> tuple[float, float]:
    lr = LogisticRegression(max_iter=3000).fit(Xtr, ytr).score(Xte, yte)
    knn = KNeighborsClassifier(5).fit(Xtr, ytr).score(Xte, yte)
    return lr, knn


def run_dataset(name: str, seeds: int, sbert: bool, enc: SentenceEncoder) -> list[dict]:
    df = pd.read_csv(DATA / name / f"{name}.csv", keep_default_na=False)
    train_pool, test = df[df.split == "train"], df[df.split == "test"]
    Xte = enc.transform(test.text.tolist())
    yte = test.label.to_numpy()
    rows = []
    for seed in range(seeds):
        train = train_pool.sample(n=N_TRAIN, random_state=seed)
        texts, ytr = train.text.tolist(), train.label.to_numpy()
        Xtr = enc.transform(texts)
        lr, knn = scores(Xtr, ytr, Xte, yte)
        rows.append(dict(data=name, seed=seed, tuner="raw MiniLM embeddings", lr=lr, knn=knn, fit_s=0.0))
        for label, make in NUMERIC_TUNERS.items():
            t0 = time.perf_counter()
            tuner = make(seed).fit(Xtr, ytr)
            fit_s = time.perf_counter() - t0
            lr, knn = scores(tuner.transform(Xtr), ytr, tuner.transform(Xte), yte)
            rows.append(dict(data=name, seed=seed, tuner=label, lr=lr, knn=knn, fit_s=fit_s))
        if sbert and seed == 0:  # fine-tuning MiniLM on CPU: one draw per data set
            t0 = time.perf_counter()
            tuner = SbertTuner(random_state=seed, device="cpu").fit(texts, ytr)
            fit_s = time.perf_counter() - t0
            lr, knn = scores(tuner.transform(texts), ytr, tuner.transform(test.text.tolist()), yte)
            rows.append(dict(data=name, seed=seed, tuner="SbertTuner (defaults; seed 0 only)",
                             lr=lr, knn=knn, fit_s=fit_s))
        print(f"{name} seed {seed} done", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="draws of the 200 labelled rows")
    ap.add_argument("--no-sbert", action="store_true", help="skip the SbertTuner rows")
    args = ap.parse_args(argv)

    enc = SentenceEncoder(device="cpu").fit()
    rows = []
    for name in ("sst2", "trec"):
        rows += run_dataset(name, args.seeds, not args.no_sbert, enc)
    res = pd.DataFrame(rows)
    agg = (res.groupby(["data", "tuner"], sort=False)
              .agg(lr=("lr", "mean"), knn=("knn", "mean"), fit_s=("fit_s", "mean"), draws=("seed", "count"))
              .reset_index())
    lines = ["Held-out accuracy of a logistic regression (LR) and a 5-NN trained on 200 labelled rows "
             "(drawn from the train split), scored on the whole test split (SST-2: 1,821 rows, "
             "TREC: 500 rows, 6 classes); all-MiniLM-L6-v2 embeddings; mean over the draws. "
             "Fit time is the tuner's `fit` on the 200 rows, on the CPU.", "",
             "| data | embedding | LR acc | 5-NN acc | fit (s) | draws |",
             "|---|---|---:|---:|---:|---:|"]
    for r in agg.itertuples():
        fit = "" if r.tuner.startswith("raw") else f"{r.fit_s:.2f}"
        lines.append(f"| {r.data} | {r.tuner} | {r.lr:.3f} | {r.knn:.3f} | {fit} | {r.draws} |")
    write_section("bench_tuners", "## Embedding-space tuners\n\n" + "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
