"""Streaming extraction: peak RSS for 2,000 vs 20,000 texts, throughput against in-memory
extraction, time to resume after a SIGKILL at 50%, and padding with length-sorted batches.

Run: flock /tmp/embetter_bench.lock python benchmarks/bench_streaming.py
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
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
from bench_cache import MODEL_SHAPE, SHARED, bench_model  # noqa: E402

SHARD = 512


def corpus(n: int) -> list[str]:
    """``n`` distinct real texts (SST-2, TREC, the built-in set; numbered copies past the end)."""
    texts = []
    for name in ("sst2", "trec", "new_dataset"):
        texts += pd.read_csv(SHARED / name / f"{name}.csv", keep_default_na=False)["text"].tolist()
    texts = list(dict.fromkeys(texts))
    out, k = list(texts[:n]), 2
    while len(out) < n:
        out += [f"{t} ({k})" for t in texts[: n - len(out)]]
        k += 1
    return out


def child(mode: str, model_dir: str, texts_file: str, out: str) -> None:
    """Runs in a fresh process: extract, then print wall time and peak RSS as JSON."""
    from embetter_plug import TransformerActivationEncoder

    texts = json.loads(Path(texts_file).read_text())
    enc = TransformerActivationEncoder(model_dir, parts=["resid_post", "attn_out", "mlp_out"],
                                       batch_size=32).fit()
    enc.transform(texts[:64])  # warm-up
    t = time.perf_counter()
    if mode == "stream":
        enc.extract_to(out, texts, shard_size=SHARD)
    else:
        X = enc.transform(texts)
        assert X.shape[0] == len(texts)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux
    print(json.dumps({"wall": wall, "rss_mib": rss, "n": len(texts)}))


def spawn(mode, model_dir, texts_file, out) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", mode, str(model_dir),
                          str(texts_file), str(out)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def cli(model_dir, csv, out) -> list[str]:
    return [sys.executable, "-m", "embetter_plug.cli", "extract", "--model", str(model_dir),
            "--data", str(csv), "--out", str(out), "--shard-size", str(SHARD),
            "--parts", "resid_post,attn_out,mlp_out"]


def resume_after_kill(model_dir, texts, tmp) -> dict:
    csv = tmp / "resume.csv"
    pd.DataFrame({"text": texts}).to_csv(csv, index=False)
    t = time.perf_counter()
    subprocess.run(cli(model_dir, csv, tmp / "full"), check=True, capture_output=True)
    full = time.perf_counter() - t
    out, n_shards = tmp / "killed", -(-len(texts) // SHARD)
    proc = subprocess.Popen(cli(model_dir, csv, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    done = 0
    while proc.poll() is None:
        try:
            done = json.loads((out / "manifest.json").read_text())["n_done"]
        except (FileNotFoundError, json.JSONDecodeError):
            done = 0
        if done >= n_shards // 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    done = json.loads((out / "manifest.json").read_text())["n_done"]
    t = time.perf_counter()
    subprocess.run(cli(model_dir, csv, out), check=True, capture_output=True)
    resume = time.perf_counter() - t
    from embetter_plug import load_activations

    same = np.array_equal(load_activations(out)[0], load_activations(tmp / "full")[0])
    return {"full": full, "resume": resume, "done": done, "n_shards": n_shards, "same": same}


def padding(texts) -> tuple[float, float]:
    from embetter_plug.extraction.batching import length_sorted_batches, padding_fraction
    from embetter_plug.extraction.loading import default_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path())
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=256)["input_ids"]]
    in_order = [np.arange(i, min(i + 32, len(texts))) for i in range(0, len(texts), 32)]
    return (padding_fraction(lengths, length_sorted_batches(lengths, 32)),
            padding_fraction(lengths, in_order))


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    model_dir = bench_model(tmp / "model")
    results = {}
    for n in (2000, 20000):
        tf = tmp / f"texts{n}.json"
        tf.write_text(json.dumps(corpus(n)))
        for mode in ("stream", "memory"):
            results[(n, mode)] = r = spawn(mode, model_dir, tf, tmp / f"out_{n}_{mode}")
            print(n, mode, r, flush=True)
    res = resume_after_kill(model_dir, corpus(4000), tmp)
    print(res, flush=True)
    sorted_pad, order_pad = padding(corpus(2000))
    print(sorted_pad, order_pad, flush=True)

    row_kib = MODEL_SHAPE["n_layer"] * 3 * MODEL_SHAPE["n_embd"] * 4 / 1024
    lines = [
        f"Random GPT-2-architecture model ({MODEL_SHAPE['n_layer']} layers, hidden "
        f"{MODEL_SHAPE['n_embd']}), all layers x resid_post/attn_out/mlp_out (float32, "
        f"{row_kib:.1f} KiB per text), batch 32, shards of {SHARD} texts; real texts from SST-2, "
        "TREC and the built-in set. Each run in a fresh process; peak RSS is the process's "
        "maximum resident set (torch and the model included). Texts/s are single runs on 2 "
        "CPU cores and carry run-to-run noise; RSS does not.",
        "",
        "| texts | mode | peak RSS (MiB) | texts/s |",
        "| ---: | --- | ---: | ---: |",
    ]
    for (n, mode), r in results.items():
        name = "streamed to disk (`extract_to`)" if mode == "stream" else "in memory (`transform`)"
        lines.append(f"| {n:,} | {name} | {r['rss_mib']:.0f} | {n / r['wall']:.0f} |")
    lines += [
        "",
        f"Resume: `embetter-plug extract` over 4,000 texts ({res['n_shards']} shards) took "
        f"{res['full']:.1f} s uninterrupted (process start included). Killed with SIGKILL after "
        f"{res['done']} complete shards, the same command finished the rest in "
        f"{res['resume']:.1f} s; the result {'equals' if res['same'] else 'DIFFERS from'} the "
        "uninterrupted run's array exactly.",
        "",
        f"Padding (all-MiniLM-L6-v2 tokenizer, 2,000 texts, batch 32): {sorted_pad:.1%} of the "
        f"tokens fed to the model are padding with length-sorted batches, {order_pad:.1%} in "
        "input order.",
        "",
        "GPU figures (texts/s and tokens/s on CUDA, fraction of bf16 peak) come from "
        "`benchmarks/bench_gpu.py`; see the GPU throughput section.",
    ]
    write_section("bench_streaming", "## Streaming extraction\n\n" + "\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()
