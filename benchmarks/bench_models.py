"""Quality and fit time of the models on real MiniLM activations, 5-fold cross-validated.

    python benchmarks/bench_models.py [--rows 2000] [--folds 5] [--max-epochs 100]
                                      [--datasets sst2 trec] [--n-jobs 1]

For each data set of ../shared/data (a stratified subsample of ``--rows`` rows), the built-in
MiniLM encodes the texts once (all layers x resid_post/attn_out/mlp_out, mean token pooling).
Then, per outer fold, on the same folds:

(a) LogisticRegression on the best single resid_post layer; the layer is chosen by a 3-fold
    grid search inside the outer training fold (nested, so the choice never sees the test fold);
(b) PlugClassifier on that same layer;
(c) PlugClassifier on all resid_post layers concatenated;
(d) PlugContrastiveCNN on all layers x parts (the 4-D activations).

Reported: accuracy, macro-F1, ROC-AUC (one-vs-rest macro for several classes), fit seconds
per fold (mean +- std over folds). Targets: (b) within 1 point of (a) or better; (d) >= (a).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from _report import write_section  # noqa: E402
from embetter_plug import (LayerPooler, PlugClassifier, PlugContrastiveCNN,  # noqa: E402
                           TransformerActivationEncoder)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PARTS = ["resid_post", "attn_out", "mlp_out"]
MODELS = {
    "a": "(a) LogisticRegression, best single layer",
    "b": "(b) PlugClassifier, same layer",
    "c": "(c) PlugClassifier, all layers concatenated",
    "d": "(d) PlugContrastiveCNN, all layers x parts",
}


def load(name: str, rows: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    df = pd.read_csv(DATA / name / f"{name}.csv", keep_default_na=False)
    if len(df) > rows:
        df, _ = train_test_split(df, train_size=rows, stratify=df["label"], random_state=seed)
    return df["text"].tolist(), df["label"].astype(str).to_numpy()


def scores(y, proba, classes) -> dict[str, float]:
    pred = classes[np.argmax(proba, axis=1)]
    auc = (roc_auc_score(y == classes[1], proba[:, 1]) if len(classes) == 2
           else roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))
    return {"accuracy": accuracy_score(y, pred), "macro_f1": f1_score(y, pred, average="macro"),
            "roc_auc": auc}


def timed_fit(model, X, y):
    start = time.perf_counter()
    model.fit(X, y)
    return model, time.perf_counter() - start


def run_dataset(name: str, args) -> tuple[pd.DataFrame, str]:
    texts, y = load(name, args.rows)
    enc = TransformerActivationEncoder(model=None, parts=PARTS, token_pooling="mean")
    start = time.perf_counter()
    A = enc.fit_transform(texts).astype(np.float32)
    encode_s = time.perf_counter() - start
    resid = list(enc.layout_.parts).index(next(p for p in enc.layout_.parts if p.startswith("resid_post")))
    n_layers = A.shape[1]
    net = dict(max_epochs=args.max_epochs, n_jobs=args.n_jobs, random_state=0)
    rows, chosen = [], []
    for fold, (tr, te) in enumerate(StratifiedKFold(args.folds, shuffle=True, random_state=0).split(A, y)):
        search = GridSearchCV(
            make_pipeline(LayerPooler(parts=[resid], layout=enc.layout_), StandardScaler(),
                          LogisticRegression(max_iter=2000)),
            {"layerpooler__layers": [[i] for i in range(n_layers)]}, cv=3, scoring="accuracy")
        fitted = {}
        fitted["a"] = timed_fit(search, A[tr], y[tr])
        layer = search.best_params_["layerpooler__layers"]
        chosen.append(layer[0])
        fitted["b"] = timed_fit(make_pipeline(LayerPooler(layers=layer, parts=[resid],
                                                          layout=enc.layout_),
                                              PlugClassifier(**net)), A[tr], y[tr])
        fitted["c"] = timed_fit(make_pipeline(LayerPooler(parts=[resid]), PlugClassifier(**net)),
                                A[tr], y[tr])
        fitted["d"] = timed_fit(PlugContrastiveCNN(**net), A[tr], y[tr])
        for key, (model, secs) in fitted.items():
            final = model.best_estimator_ if key == "a" else model
            final = final[-1] if hasattr(final, "steps") else final
            rows.append({"dataset": name, "model": key, "fold": fold, "fit_s": secs,
                         "best_epoch": getattr(final, "best_epoch_", np.nan),
                         "n_epochs": getattr(final, "n_epochs_", np.nan),
                         "min_loss_epoch": (int(np.argmin(final.net_.history[:, "valid_loss"])) + 1
                                            if hasattr(final, "net_") else np.nan),
                         **scores(y[te], model.predict_proba(A[te]), model.classes_)})
        logging.info("%s fold %d done: %s", name, fold,
                     {r["model"]: round(r["accuracy"], 3) for r in rows[-4:]})
    res = pd.DataFrame(rows)
    epochs = {k: list(zip(g["best_epoch"].astype(int), g["n_epochs"].astype(int)))
              for k, g in res[res["model"] != "a"].groupby("model")}
    note = (f"{name}: {len(texts)} rows, {len(np.unique(y))} classes; activations {A.shape[1:]} "
            f"(layers x parts x hidden), encoded in {encode_s:.0f} s; layer chosen for (a)/(b) per "
            f"fold: {chosen}. Epoch kept / epochs run per fold: "
            + "; ".join(f"({k}) {v}" for k, v in epochs.items()) + ".")
    return res, note


def summary(df: pd.DataFrame) -> str:
    lines = ["| data set | model | accuracy | macro-F1 | ROC-AUC | fit s / fold |",
             "|---|---|---|---|---|---|"]
    for (name, key), g in df.groupby(["dataset", "model"], sort=False):
        cells = [f"{g[m].mean():.3f} ± {g[m].std():.3f}" for m in ("accuracy", "macro_f1", "roc_auc")]
        lines.append(f"| {name} | {MODELS[key]} | {' | '.join(cells)} | {g['fit_s'].mean():.1f} |")
    return "\n".join(lines)


def verdicts(df: pd.DataFrame) -> list[str]:
    out = []
    means = df.groupby(["dataset", "model"])[["accuracy", "macro_f1", "roc_auc"]].mean()
    for name in df["dataset"].unique():
        a, b, d = (means.loc[(name, k)] for k in "abd")
        gap = 100 * (b["accuracy"] - a["accuracy"])
        out.append(f"- {name}: (b) - (a) accuracy = {gap:+.1f} points -> target (within 1 point "
                   f"or better) {'met' if gap >= -1 else 'MISSED'}; (d) - (a) accuracy = "
                   f"{100 * (d['accuracy'] - a['accuracy']):+.1f} points, ROC-AUC "
                   f"{d['roc_auc'] - a['roc_auc']:+.3f} -> target (at least as good) "
                   f"{'met' if d['accuracy'] >= a['accuracy'] else 'MISSED'}.")
        if d["accuracy"] < a["accuracy"]:
            g = df[(df["dataset"] == name) & (df["model"] == "d")]
            kept, low = g["best_epoch"].astype(int).tolist(), g["min_loss_epoch"].astype(int).tolist()
            out.append(f"  Why (d) falls short on {name}: early stopping kept epochs {kept}. Its first "
                       "convolution maps 384 hidden channels over a parts x layers grid (about a "
                       "million weights), which fits the few hundred training rows of a fold within "
                       "a few epochs while the contrastive term (temperature 0.07) dominates the "
                       f"loss; the validation loss was lowest at epochs {low}, so the kept epoch is an "
                       "early one whose classifier head has barely trained. More rows, a higher "
                       "temperature or a smaller `module__channels` are the levers to try.")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--n-jobs", type=int, default=1, help="torch CPU threads of the nets")
    p.add_argument("--datasets", nargs="+", default=["sst2", "trec"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("embetter_plug").setLevel(logging.WARNING)
    frames, notes = [], []
    for name in args.datasets:
        df, note = run_dataset(name, args)
        frames.append(df)
        notes.append(f"- {note}")
        logging.info(note)
    df = pd.concat(frames, ignore_index=True)
    body = "\n".join([
        "## Models on MiniLM activations (`bench_models`)", "",
        f"{args.folds}-fold stratified CV (same folds for every model). Nets: default "
        f"architecture and early stopping (patience 10 on a 10% stratified split of each "
        f"training fold), max_epochs={args.max_epochs}, n_jobs={args.n_jobs}, random_state=0.", "",
        summary(df), "", *notes, "", "Targets:", *verdicts(df),
    ])
    write_section("bench_models", body)
    logging.info("\n%s", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
