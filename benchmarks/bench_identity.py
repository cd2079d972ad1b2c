"""Cost of the exact identity of a model object (a hash of the bytes of every parameter and
buffer, taken at each cached ``transform``) next to one forward pass of a batch, on MiniLM and
SmolLM2-135M. Both are timed side by side in one run (median of ``--repeats``).

Run: flock /tmp/embetter_bench.lock python benchmarks/bench_identity.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))
from _report import write_section  # noqa: E402

TEXTS = [f"sentence number {i} about a film whose plot made little sense to anyone" for i in
         range(32)]


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name: str, folder: str, repeats: int) -> str:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from embetter_plug import TransformerActivationEncoder
    from embetter_plug.extraction.identity import weights_digest

    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    enc = TransformerActivationEncoder(model, tok, layers=-1, batch_size=32, max_length=64).fit()
    enc.transform(TEXTS)  # warm
    digest = _median(lambda: weights_digest(model), repeats)
    forward = _median(lambda: enc.transform(TEXTS), repeats)
    with tempfile.TemporaryDirectory() as d:
        cached = TransformerActivationEncoder(model, tok, layers=-1, batch_size=32,
                                              max_length=64, cache=d).fit()
        cached.transform(TEXTS)
        hit = _median(lambda: cached.transform(TEXTS), repeats)  # all read: digest + reads
    return (f"| {name} | {size / 2**20:.0f} MiB | {digest * 1e3:.0f} ms | "
            f"{size / 2**30 / digest:.2f} GiB/s | {forward * 1e3:.0f} ms | {digest / forward:.2f} "
            f"| {hit * 1e3:.0f} ms |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from embetter_plug.extraction.loading import default_model_path
    from embetter_plug.testing import save_smollm2

    rows = [measure("all-MiniLM-L6-v2", str(default_model_path()), args.repeats)]
    with tempfile.TemporaryDirectory() as d:
        try:
            rows.append(measure("SmolLM2-135M", str(save_smollm2(Path(d) / "smol")),
                                args.repeats))
        except ImportError as exc:
            print(f"SmolLM2 skipped: {exc}")
    body = "\n".join([
        "## Identity of a model object (`bench_identity`)",
        "",
        "A model passed as an instance is identified by a SHA-256 over the bytes of every "
        "parameter and buffer, taken again at each `transform` that reads a cache (and at `fit` "
        "and `extract_to`); it is never computed per batch, and not at all by a `transform` "
        "without a cache. Figures: median of "
        f"{args.repeats}; the forward is one `transform` of 32 texts of about 16 tokens "
        "(float32, last layer, no cache); the last column is a cached `transform` whose 32 "
        "texts are all stored (digest plus reads). Measured on a shared, loaded machine: "
        "compare within a row.",
        "",
        "| model | weights | digest | digest speed | forward, 32 texts | digest / forward "
        "| cached transform, all hits |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ])
    print(body)
    write_section("identity", body)


if __name__ == "__main__":
    main()
