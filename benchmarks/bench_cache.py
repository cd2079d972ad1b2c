"""GridSearchCV over encoder -> LayerPooler -> LogisticRegression: forward passes and wall time
with the activation cache, with Pipeline(memory=joblib.Memory) and with no caching.

Run: flock /tmp/embetter_bench.lock python benchmarks/bench_cache.py [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _report import write_section  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL_SHAPE = dict(n_layer=6, n_embd=128, n_head=4, n_inner=512, n_positions=128)


def bench_model(folder: Path) -> Path:
    """A random GPT-2-architecture model of MODEL_SHAPE with MiniLM's real WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    from embetter_plug.extraction.loading import default_model_path

    if (folder / "config.json").exists():
        return folder
    tok = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, **MODEL_SHAPE)
    GPT2Model(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def sst2(n: int) -> tuple[list[str], np.ndarray]:
    df = pd.read_csv(SHARED / "sst2" / "sst2.csv", keep_default_na=False)
    df = df.drop_duplicates("text").iloc[:n]
    return df["text"].tolist(), df["label"].to_numpy()


class ForwardCounter:
    """Counts texts run through the model by any encoder in this process."""

    def __init__(self):
        from embetter_plug.extraction.extractor import ActivationExtractor

        self.rows = 0
        original = ActivationExtractor.extract
        counter = self

        def counting(enc, texts, **kwargs):
            counter.rows += len(texts)
            return original(enc, texts, **kwargs)

        ActivationExtractor.extract = counting


def run_search(model_dir, X, y, *, cache=None, memory=None):
    from joblib import Memory
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from embetter_plug import LayerPooler, TransformerActivationEncoder

    pipe = Pipeline([("enc", TransformerActivationEncoder(str(model_dir), parts="resid_post",
                                                          cache=cache)),
                     ("pool", LayerPooler()), ("clf", LogisticRegression(max_iter=300))],
                    memory=Memory(memory, verbose=0) if memory else None)
    grid = {"pool__layers": list(range(6)), "clf__C": [0.1, 1.0]}
    t = time.perf_counter()
    search = GridSearchCV(pipe, grid, cv=5).fit(X, y)
    return time.perf_counter() - t, search.best_score_


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    X, y = sst2(args.n)
    counter = ForwardCounter()
    tmp = Path(tempfile.mkdtemp())
    model_dir = bench_model(tmp / "model")
    rows = []
    for name, kw in [("activation cache, first run", {"cache": tmp / "cache"}),
                     ("activation cache, second run", {"cache": tmp / "cache"}),
                     ("Pipeline(memory=joblib.Memory), first run", {"memory": tmp / "joblib"}),
                     ("Pipeline(memory=joblib.Memory), second run", {"memory": tmp / "joblib"}),
                     ("no caching", {})]:
        before = counter.rows
        wall, score = run_search(model_dir, X, y, **kw)
        rows.append((name, counter.rows - before, wall, score))
        print(f"{name:45s} forward texts {counter.rows - before:>8d}  {wall:8.1f} s  best {score:.3f}",
              flush=True)
    lines = [
        f"GridSearchCV, 5 folds x 6 layer choices x 2 values of C (60 fits + refit), over "
        f"{len(X)} distinct SST-2 texts; encoder (all 6 layers, resid_post) -> LayerPooler -> "
        f"LogisticRegression. Model: random GPT-2 architecture, {MODEL_SHAPE['n_layer']} layers, "
        f"hidden {MODEL_SHAPE['n_embd']}, with all-MiniLM-L6-v2's WordPiece tokenizer (smaller "
        "than GPT-2 small so that the no-caching run fits the time on this 2-core CPU; the "
        "forward counts do not depend on the model's size).",
        "",
        "| setup | texts run through the model | wall time (s) | best CV accuracy |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {n} | {r:,} | {w:.1f} | {s:.3f} |" for n, r, w, s in rows]
    lines += ["", f"Distinct texts: {len(set(X)):,}. joblib.Memory caches each fold's "
              "`fit_transform` on the training part only; the held-out part is encoded again "
              "for every grid point.", "",
              "Wall times are single runs on a 2-core CPU and vary between runs of the same work "
              "(up to about 3x when other jobs share the cores); the counts of texts run through "
              "the model are exact."]
    write_section("bench_cache", "## Activation cache in a grid search\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
