"""``bench_encoder`` for two checkouts of embetter_plug, run in turns on one machine, so a commit
is compared with an earlier one under the same load:

    python benchmarks/ab_encoder.py /path/to/checkout-before /path/to/checkout-after \
        --rounds 3 --n 300 --n-gpt2 48 --repeats 3

Each round runs this file's ``bench_encoder`` once per checkout (the order alternates between
rounds) in its own process, with that checkout's package imported; nothing is written to
RESULTS.md. Printed: every ratio of the benchmark per run, and the median of each over the
rounds per checkout. Ratios (time over time in one process) are what to compare on a loaded
machine; the absolute rates move with the load.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

_CHILD = """
import json, os, sys
root, here, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, root); sys.path.insert(1, here)
import embetter_plug, bench_encoder
assert os.path.realpath(embetter_plug.__file__).startswith(os.path.realpath(root) + os.sep)
out = []
bench_encoder.write_section = lambda name, body: out.append(body)
bench_encoder.sys.stdout = open(os.devnull, "w")
if argv[0] == "--overhead-only":  # the MiniLM capture-overhead row alone
    from transformers import AutoModel, AutoTokenizer
    default_model_path = bench_encoder.default_model_path
    texts, _ = bench_encoder.load_texts(int(argv[2]))
    p = default_model_path()
    model, tok = AutoModel.from_pretrained(p).eval(), AutoTokenizer.from_pretrained(p)
    out.append(bench_encoder.overhead_rows("all-MiniLM-L6-v2", model, tok, texts,
                                           int(argv[-1]))[0])
else:
    bench_encoder.main(argv)
print(json.dumps(out[0]), file=sys.__stdout__)
"""

# (name, pattern): the figures read from bench_encoder's text
FIGURES = [
    ("capture overhead MiniLM (ours/bare time)", r"all-MiniLM.*\*\*([\d.]+)x\*\*"),
    ("capture overhead GPT-2-shaped (ours/bare time)", r"GPT-2-small-shaped.*\*\*([\d.]+)x\*\*"),
    ("speed-up over sentence-transformers", r"ours \(`layers=-1.*\*\*([\d.]+)x\*\*"),
    ("layers 0-1 / all layers time", r"layers 0-1 only.*\*\*([\d.]+)x\*\*"),
    ("bfloat16 / float32 time", r"all 6 layers, bfloat16.*\*\*([\d.]+)x\*\*"),
    ("MiniLM ours texts/s", r"all-MiniLM[^|]*\|[^|]*\|[^|]*\| (\d+) \|"),
]


def run_once(root: str, argv: list[str], bench_dir: str = HERE) -> dict[str, float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=root)
    res = subprocess.run([sys.executable, "-c", _CHILD, root, bench_dir, *argv], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"bench_encoder failed on {root}:\n{res.stderr[-3000:]}")
    body = json.loads(res.stdout.strip().splitlines()[-1])
    found = {name: re.search(pat, body) for name, pat in FIGURES}
    return {name: float(m.group(1)) for name, m in found.items() if m is not None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--n-gpt2", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overhead-only", action="store_true",
                    help="only the MiniLM capture-overhead row (ab_capture_overhead's figure)")
    ap.add_argument("--own-benchmarks", action="store_true",
                    help="run each checkout's own benchmarks/bench_encoder.py (for checkouts whose "
                         "module paths differ, e.g. across the package layout move)")
    args = ap.parse_args(argv)
    child = ["--n", str(args.n), "--n-gpt2", str(args.n_gpt2), "--repeats", str(args.repeats)]
    child = ["--overhead-only", *child] if args.overhead_only else child
    roots = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    runs: dict[str, list] = {"before": [], "after": []}
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for side in order:
            bench_dir = os.path.join(roots[side], "benchmarks") if args.own_benchmarks else HERE
            figures = run_once(roots[side], child, bench_dir)
            runs[side].append(figures)
            print(f"round {r + 1} {side}: {json.dumps(figures)}", flush=True)
    print("\n| figure | before (median) | after (median) | after / before |")
    print("| --- | --- | --- | --- |")
    for name, _ in FIGURES:
        if name not in runs["before"][0]:
            continue
        b = statistics.median(f[name] for f in runs["before"])
        a = statistics.median(f[name] for f in runs["after"])
        print(f"| {name} | {b:.3f} | {a:.3f} | {a / b:.3f} |")


if __name__ == "__main__":
    main()
