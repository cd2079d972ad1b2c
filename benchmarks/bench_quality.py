"""Quality and cost of the recipes `embetter-plug train` compares, against sentence-transformers
embeddings + LogisticRegression, on SST-2 and TREC (../shared/data).

For each data set: 1,500 training rows sampled with a fixed seed, the official test rows.
Measured in one run: ST + LR; `select_recipe` (train's pick, chosen on the training rows only,
default budget 15 CPU-minutes); each recipe refitted on the 1,500 rows; CPU seconds of fit and
predict. Also: fine-tuning throughput of TransformerTuner against a plain torch loop over the
same model and batches, and the cost levers (bf16 autocast, frozen word embeddings, fused AdamW)
in that plain loop.

    python benchmarks/bench_quality.py [--rows 1500] [--threads 2] [--out bench_quality.json]
    # on a shared machine, one process per part with one thread each:
    python benchmarks/bench_quality.py --only-throughput --threads 1 --out tp.json
    python benchmarks/bench_quality.py --skip-throughput --datasets sst2 --threads 1 --out sst2.json
    python benchmarks/bench_quality.py --skip-throughput --datasets trec --threads 1 --out trec.json
    # `embetter-plug train` as a user runs it (its default budget), whole-run CPU and wall time:
    python benchmarks/bench_quality.py --train-cli --datasets sst2 --rows 1500 --out train_sst2.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DATA = DATA if DATA.is_dir() else Path("/work/shared/data")


def cpu_wall(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


def load(name: str, rows: int, seed: int = 0):
    df = pd.read_csv(DATA / name / f"{name}.csv")
    train = df[df["split"] == "train"].sample(rows, random_state=seed)
    test = df[df["split"] == "test"]
    return (train["text"].tolist(), train["label"].astype(str).to_numpy(),
            test["text"].tolist(), test["label"].astype(str).to_numpy())


def st_lr(tr, ytr, te, yte):
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    from embetter_plug.extraction.loading import default_model_path

    st = SentenceTransformer(default_model_path(), device="cpu")
    st.encode(tr[:8])

    def fit():
        E = st.encode(tr, batch_size=32, normalize_embeddings=True)
        return LogisticRegression(C=1.0, max_iter=5000, random_state=0).fit(E, ytr)

    lr, fit_cpu, fit_wall = cpu_wall(fit)
    pred, pred_cpu, _ = cpu_wall(lambda: lr.predict(st.encode(te, batch_size=32,
                                                              normalize_embeddings=True)))
    return dict(recipe="ST + LR (baseline)", test_acc=float(np.mean(pred == yte)),
                fit_cpu_s=fit_cpu, fit_wall_s=fit_wall, predict_cpu_s=pred_cpu)


def each_recipe(tr, ytr, te, yte, sel, save):
    """Every default recipe refitted on the training rows, scored on the test rows. The frozen
    ones read one encoding of the train and test texts (CPU-s: their share of it, by layers read,
    plus the head); the winner's refit is `sel.pipeline`, timed inside select_recipe; the
    fine-tuning recipe runs last (the dearest). ``save(rows)`` after each recipe."""
    from sklearn.base import clone

    from embetter_plug import TransformerActivationEncoder
    from embetter_plug.pooler import LayerPooler
    from embetter_plug.recipes import default_recipes
    from embetter_plug.recipes.select import _refit

    out = []
    enc = TransformerActivationEncoder(layers="all", device="cpu", dtype="float32").fit()
    (Xtr, c_tr, _) = cpu_wall(lambda: np.asarray(enc.transform(tr))[:, :, 0, :])
    (Xte, c_te, _) = cpu_wall(lambda: np.asarray(enc.transform(te))[:, :, 0, :])
    n_layers = Xtr.shape[1]
    for recipe in default_recipes(n_layers, random_state=0):
        share = len(recipe.layers) / n_layers if recipe.frozen else 0.0
        if recipe.frozen:
            def fit():
                pooler = LayerPooler(combine=recipe.combine).fit(Xtr[:, recipe.layers])
                return pooler, clone(recipe.head()).fit(pooler.transform(Xtr[:, recipe.layers]), ytr)
            (pooler, head), c, w = cpu_wall(fit)
            pred, pc, _ = cpu_wall(lambda: head.predict(pooler.transform(Xte[:, recipe.layers])))
            c, pc = c + c_tr * share, pc + c_te * share
        else:
            if recipe.name == sel.best:
                pipe, c, w = sel.pipeline, sel.refit_cpu_s, float("nan")
            else:
                pipe, c, w = cpu_wall(lambda: _refit(recipe, None, None, tr, ytr, None, {}))
            tuner = pipe.steps[0][1]
            out.append(dict(note="fine_tune fit on all training rows", epochs=tuner.n_epochs_,
                            best_epoch=tuner.best_epoch_, autocast=tuner.autocast_, fit_cpu_s=c,
                            fit_wall_s=w))
            pred, pc, _ = cpu_wall(lambda: pipe.predict(te))
        out.append(dict(recipe=recipe.name, test_acc=float(np.mean(pred == yte)),
                        fit_cpu_s=c, fit_wall_s=w, predict_cpu_s=pc))
        print(json.dumps(out[-1]), flush=True)
        save(out)
    return out


def train_cli(name: str, rows: int, out: Path, budget: float | None = None) -> dict:
    """`embetter-plug train` on ``rows`` training rows of ``name`` as a user runs it (a
    subprocess, the CLI's own thread settings, its default budget unless ``budget``); CPU
    seconds (user + system, all threads) and wall seconds of the whole run, the pick and its
    test accuracy, and ST + LR on the same rows and test rows."""
    import resource
    import subprocess
    import sys

    from embetter_plug import load_model

    tr, ytr, te, yte = load(name, rows)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "train.csv"
    pd.DataFrame({"text": tr, "label": ytr}).to_csv(csv, index=False)
    cmd = [sys.executable, "-m", "embetter_plug.cli", "train", "--data", str(csv),
           "--out", str(out / "run"), "--overwrite"]
    cmd += [] if budget is None else ["--budget", str(budget)]
    before, w = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    load0 = os.getloadavg()
    with open(out / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - w
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results = pd.read_csv(out / "run" / "results.csv")
    pipe = load_model(out / "run" / "best_pipeline")
    pred = pipe.predict(te)
    log_text = (out / "train.log").read_text()
    best = next((ln.split()[1] for ln in log_text.splitlines() if ln.startswith("best:")), "?")
    return dict(dataset=name, rows=rows, command=" ".join(["embetter-plug"] + cmd[3:]),
                budget_min=15.0 if budget is None else budget, train_cpu_s=cpu,
                train_wall_s=wall, pick=best, pick_test_acc=float(np.mean(pred == yte)),
                st_lr=st_lr(tr, ytr, te, yte), results=results.to_dict("records"),
                load_before=load0, load_after=os.getloadavg(),
                scheme=next((ln for ln in log_text.splitlines() if "CV" in ln or "split" in ln),
                            ""))


class _EpochCPU:
    """A skorch callback that records the CPU and wall seconds of each training epoch."""

    def __new__(cls):
        from skorch.callbacks import Callback

        class EpochCPU(Callback):
            def initialize(self):
                self.cpu_, self.wall_ = [], []
                return self

            def on_epoch_begin(self, net, **kw):
                self._c, self._w = time.process_time(), time.perf_counter()

            def on_epoch_end(self, net, **kw):
                self.cpu_.append(time.process_time() - self._c)
                self.wall_.append(time.perf_counter() - self._w)

        return EpochCPU()


def throughput(texts, y, batches: int = 24, batch_size: int = 16, repeats: int = 2):
    """TransformerTuner's training texts per CPU-second vs a plain torch loop over the same model
    and batches (interleaved, best of ``repeats``), and the cost levers in the plain loop.
    On a shared machine CPU seconds are the fair measure; wall seconds are given too."""
    import copy

    import torch

    from embetter_plug import TransformerTuner
    from embetter_plug.tuners._finetune_net import FineTuneModule, tokenize

    n = batches * batch_size
    texts, y = texts[:n], y[:n]
    base = TransformerTuner(max_epochs=1, batch_size=batch_size, early_stopping=False,
                            random_state=0)
    backbone0, tok = base._load_backbone()
    X = tokenize(tok, texts, 128)
    classes = np.unique(y)
    codes = torch.as_tensor(np.searchsorted(classes, y))
    bf16 = True
    # the same length-bucketed batches for every plain loop (sorted within the epoch)
    order = np.argsort(-X["attention_mask"].sum(1), kind="stable")
    batch_idx = [order[i:i + batch_size] for i in range(0, n, batch_size)]

    def tuner_run():
        cb = _EpochCPU()
        tuner = base.set_params(callbacks=[("epoch_cpu", cb)]).fit(texts, y)
        return dict(texts_per_cpu_s=n / cb.cpu_[0], texts_per_wall_s=n / cb.wall_[0],
                    autocast=tuner.autocast_)

    def plain(bf16: bool, frozen: bool, fused: bool):
        torch.manual_seed(0)
        backbone = copy.deepcopy(backbone0)
        if frozen:
            backbone.get_input_embeddings().weight.requires_grad_(False)
        module = FineTuneModule(backbone, 384, len(classes), "mean",
                                torch.bfloat16 if bf16 else None)
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4,
                                weight_decay=0.01, fused=fused)
        module.train()
        loss_fn = torch.nn.CrossEntropyLoss()
        c, w = time.process_time(), time.perf_counter()
        for idx in batch_idx:
            ids = torch.as_tensor(X["input_ids"][idx])
            mask = torch.as_tensor(X["attention_mask"][idx])
            opt.zero_grad()
            loss_fn(module(ids, mask)[0], codes[idx]).backward()
            opt.step()
        return dict(texts_per_cpu_s=n / (time.process_time() - c),
                    texts_per_wall_s=n / (time.perf_counter() - w))

    runs = {"TransformerTuner (defaults)": tuner_run,
            "plain loop, same settings (bf16, frozen embeddings, fused AdamW)":
                lambda: plain(bf16, True, True),
            "plain loop, fp32": lambda: plain(False, True, True),
            "plain loop, word embeddings trained": lambda: plain(bf16, False, True),
            "plain loop, unfused AdamW": lambda: plain(bf16, True, False)}
    results = {}
    for _ in range(repeats):  # interleaved: the machine's load hits every variant alike
        for name, fn in runs.items():
            r = fn()
            best = results.get(name)
            if best is None or r["texts_per_cpu_s"] > best["texts_per_cpu_s"]:
                results[name] = r
            print(name, r, flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--datasets", default="sst2,trec")
    parser.add_argument("--out", default="bench_quality.json")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--only-throughput", action="store_true")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="train's budget in CPU-minutes (its default: 15)")
    parser.add_argument("--train-cli", action="store_true",
                        help="run `embetter-plug train` on each data set (default budget unless "
                             "--budget is given) and time the whole run")
    args = parser.parse_args()
    if args.train_cli:
        budget = None if args.budget == 15.0 else args.budget
        report = {}
        for name in args.datasets.split(","):
            report[name] = train_cli(name, args.rows, Path(args.out).with_suffix("") / name, budget)
            print(json.dumps(report[name], default=str), flush=True)
            Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        return
    import torch

    torch.set_num_threads(args.threads)
    report = {"rows": args.rows, "threads": args.threads, "cpu": os.cpu_count(),
              "load_at_start": os.getloadavg()}
    if not args.skip_throughput:
        tr, ytr, _, _ = load("sst2", args.rows)
        report["throughput"] = throughput(tr, ytr)
        Path(args.out).write_text(json.dumps(report, indent=2))
    from embetter_plug.recipes import select_recipe

    for name in [] if args.only_throughput else args.datasets.split(","):
        tr, ytr, te, yte = load(name, args.rows)
        rows = [st_lr(tr, ytr, te, yte)]
        print(json.dumps(rows[-1]), flush=True)
        sel, c, w = cpu_wall(lambda: select_recipe(tr, ytr, budget=args.budget, random_state=0))
        pred, pc, _ = cpu_wall(lambda: sel.pipeline.predict(te))
        rows.append(dict(recipe=f"train's pick ({sel.best}, {sel.scheme})",
                         test_acc=float(np.mean(pred == yte)), fit_cpu_s=c, fit_wall_s=w,
                         predict_cpu_s=pc))
        print(sel.table(), flush=True)
        print(json.dumps(rows[-1]), flush=True)
        report[name] = {"rows": rows, "selection": sel.results.to_dict("records"),
                        "scheme": sel.scheme, "budget_min": args.budget,
                        "selection_cpu_s": sel.cpu_s, "load": os.getloadavg()}
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        def save(rows, name=name):
            report[name]["each_recipe"] = rows
            Path(args.out).write_text(json.dumps(report, indent=2, default=str))

        each_recipe(tr, ytr, te, yte, sel, save)
    report["load_at_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
