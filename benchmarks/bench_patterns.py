"""Attention patterns and metrics through the extractor's one loop: CPU time before and after.

    python benchmarks/bench_patterns.py --baseline /path/to/older/package [--n 64] [--rounds 3]

``--baseline`` is a folder holding an older ``embetter_plug`` package (``git archive <commit>
embetter_plug | tar -x -C DIR``). Fresh processes take turns, the older package's and this
one's (``--rounds`` of each); each times, on the built-in MiniLM (SDPA, 6 layers x 12 heads),
``attention_patterns`` of ``--n`` texts (every layer and head, batches of 8) and
``attention_metrics`` of the same texts (all 7 metrics, every head), as CPU time of the process
(not inflated by other jobs taking turns on a shared machine); the least of the rounds is kept.
The patterns of both sides are compared (largest absolute difference).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def one_side(n: int, save: str) -> dict:
    """Time both calls in this process (after a warm-up); save the patterns to ``save``."""
    import warnings

    import numpy as np
    from transformers import AutoModel, AutoTokenizer

    from bench_encoder import load_texts
    from embetter_plug.extraction.loading import default_model_path
    from embetter_plug.attention.patterns import attention_metrics, attention_patterns

    path = default_model_path()
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts, _ = load_texts(n)
    warnings.simplefilter("ignore")
    attention_patterns(model, tok, texts[:4])  # warm-up
    t0 = time.process_time()
    pats = attention_patterns(model, tok, texts, batch_size=8)
    t_pat = time.process_time() - t0
    t0 = time.process_time()
    attention_metrics(model, tok, texts, batch_size=8)
    t_met = time.process_time() - t0
    np.savez(save, *[p.pattern for p in pats])
    return {"patterns": t_pat, "metrics": t_met}


def compare(args) -> list[str]:
    import numpy as np

    here = Path(__file__).resolve().parent.parent
    sides = {"before": Path(args.baseline).resolve(), "after": here}
    best: dict = {}
    tmp = Path(tempfile.mkdtemp())
    for r in range(args.rounds):
        for side, where in sides.items():
            env = dict(os.environ, PYTHONPATH=str(where))
            out = subprocess.run([sys.executable, __file__, "--side", str(args.n),
                                  str(tmp / f"{side}.npz")], capture_output=True, text=True,
                                 check=True, env=env)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            for k, v in got.items():
                best[(side, k)] = min(best.get((side, k), v), v)
    a, b = np.load(tmp / "before.npz"), np.load(tmp / "after.npz")
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
    lines = ["| call | before, CPU s | after, CPU s | after / before |", "| --- | --- | --- | --- |"]
    for k, label in (("patterns", f"attention_patterns, {args.n} texts, all layers and heads"),
                     ("metrics", f"attention_metrics, {args.n} texts, 7 metrics, all heads")):
        lines.append(f"| {label} | {best[('before', k)]:.2f} | {best[('after', k)]:.2f} | "
                     f"**{best[('after', k)] / best[('before', k)]:.2f}x** |")
    lines += ["", f"Largest absolute difference between the two sides' patterns: {diff:.1e}."]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="folder holding the older embetter_plug package")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--side", nargs=2, metavar=("N", "SAVE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(one_side(int(args.side[0]), args.side[1])))
        return
    if not args.baseline:
        ap.error("--baseline is required")
    from _report import write_section

    body = ["## Attention patterns and metrics through the extractor's loop", "",
            "`attention_patterns` now runs through `ActivationExtractor`'s batch loop with a "
            "pattern sink instead of a loop of its own; `attention_metrics` ran through it "
            "before too (its row checks that nothing changed). Least CPU time of "
            f"{args.rounds} rounds, fresh processes taking turns; the machine was shared with "
            "other jobs, so compare the two columns (measured side by side), not the absolute "
            "seconds.", "", *compare(args)]
    write_section("bench_patterns", "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
