"""Per-head attention parts and metrics: cost against a bare forward, and peak memory by length.

    python benchmarks/bench_attention.py [--n 256] [--n-gpt2 48] [--repeats 3] [--threads T]
    python benchmarks/bench_attention.py --baseline /path/to/older/checkout [--rounds 3]

1. Cost: our encoder reading per-head parts (``attn_z``, ``attn_result``, ``attn_q``) or all
   seven attention metrics in every layer and head, against a bare ``model(**batch)`` over the
   same length-sorted batches (interleaved, least CPU time of ``--repeats``), on the built-in
   MiniLM and a GPT-2-small-shaped random model, both running SDPA.
2. Peak memory at 128, 512 and 2,048 tokens (one text, GPT-2-small-shaped): a bare SDPA forward,
   our metrics (all 12 layers x 12 heads) and an eager forward with ``output_attentions=True``,
   which keeps every layer's pattern; each measured as the rise of the resident set size over
   the run, in a fresh process.

With ``--baseline DIR`` (a checkout of an older commit, e.g. made with ``git worktree add``) the
metric rows and the memory of our metrics are measured for that checkout's package and this one
side by side: fresh processes taking turns (``--rounds`` of each, least CPU time kept), so that a
load on a shared machine weighs on both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _report import write_section  # noqa: E402
import bench_encoder as encoder_bench  # noqa: E402
from bench_encoder import BATCH, bare_forward_fn, load_texts  # noqa: E402
from embetter_plug import TransformerActivationEncoder  # noqa: E402
from embetter_plug.arch.heads import METRICS  # noqa: E402
from embetter_plug.extraction.loading import default_model_path  # noqa: E402

CASES = {"resid_post, attn_out, mlp_out": dict(parts=["resid_post", "attn_out", "mlp_out"]),
         "attn_result, all heads": dict(parts=["attn_result"]),
         "attn_z, all heads": dict(parts=["attn_z"]),
         "attn_q, all heads": dict(parts=["attn_q"]),
         "7 attention metrics, all heads": dict(parts=list(METRICS))}
LENGTHS = (128, 512, 2048)


def gpt2_small_shaped(attn="sdpa"):
    """A random 12 x 768 GPT-2 (12 heads) with MiniLM's vocabulary, 2,048 positions."""
    return encoder_bench.gpt2_small_shaped(attn, n_positions=2048)


def interleaved_cpu(fns: dict, repeats: int) -> dict[str, float]:
    """The least CPU time (all threads of this process) of each, in turns: unlike wall time,
    not inflated by other jobs taking turns on a shared machine."""
    return encoder_bench.interleaved(fns, repeats, clock=time.process_time)


def cost_times(model, tok, texts, repeats, cases=CASES):
    """Least CPU seconds of a bare forward (``"bare"``) and of each case, and the encoders."""
    encs = {k: TransformerActivationEncoder(model, tok, token_pooling="mean", batch_size=BATCH,
                                            **kw).fit() for k, kw in cases.items()}
    bare = bare_forward_fn(model, tok, texts, next(iter(encs.values())).max_length_)
    bare()
    fns = {"bare": bare, **{k: (lambda e=e: e.transform(texts)) for k, e in encs.items()}}
    return interleaved_cpu(fns, repeats), encs


def cost_rows(name, model, tok, texts, repeats):
    t, encs = cost_times(model, tok, texts, repeats)
    return [f"| {name} | {k} | {len(encs[k].layout_.parts)} | {t[k]:.2f} | "
            f"**{t[k] / t['bare']:.2f}x** |" for k in CASES]


METRIC_CASE = "7 attention metrics, all heads"


def load_models():
    from transformers import AutoModel, AutoTokenizer

    path = default_model_path()
    minilm = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    return {"all-MiniLM-L6-v2 (built-in)": (minilm, AutoTokenizer.from_pretrained(path)),
            "GPT-2-small-shaped, random": gpt2_small_shaped()}


def metric_cost(n, n_gpt2, repeats) -> dict:
    """``{model: [bare seconds, metrics seconds]}`` for the current package (one process)."""
    texts, _ = load_texts(n)
    out = {}
    for (name, (model, tok)), k in zip(load_models().items(), (n, n_gpt2)):
        t, _ = cost_times(model, tok, texts[:k], repeats, {METRIC_CASE: CASES[METRIC_CASE]})
        out[name] = [t["bare"], t[METRIC_CASE]]
    return out


def _run_with(package_dir, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(package_dir))
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def baseline_lines(baseline: Path, args) -> list[str]:
    """Before (``baseline``'s package) and after (this one), fresh processes taking turns."""
    here = Path(__file__).resolve().parent.parent
    sides = {"before": baseline.resolve(), "after": here}
    commits = {k: subprocess.run(["git", "-C", str(v), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()
               for k, v in sides.items()}
    flags = ["--n", str(args.n), "--n-gpt2", str(args.n_gpt2), "--repeats", str(args.repeats),
             "--threads", str(args.threads or torch.get_num_threads())]
    best: dict = {}
    for _ in range(args.rounds):
        for side, where in sides.items():
            for model, (bare, ours) in _run_with(where, ["--cost-json", *flags]).items():
                b = best.setdefault((side, model), [bare, ours])
                b[0], b[1] = min(b[0], bare), min(b[1], ours)
    lines = ["| model | side (commit) | bare forward, CPU s | 7 metrics, all heads, CPU s | "
             "metrics / bare |", "| --- | --- | --- | --- | --- |"]
    for (side, model), (bare, ours) in best.items():
        lines.append(f"| {model} | {side} ({commits[side]}) | {bare:.2f} | {ours:.2f} | "
                     f"**{ours / bare:.2f}x** |")
    lines += ["", "Peak memory of the metrics (rise of the resident set size, MiB, one text, "
              "GPT-2-small-shaped, all 12 layers x 12 heads; a fresh process each):", "",
              "| tokens | before | after |", "| --- | --- | --- |"]
    for tokens in LENGTHS:
        got = {side: _run_with(where, ["--memory-case", "metrics", str(tokens)])["mib"]
               for side, where in sides.items()}
        lines.append(f"| {tokens} | {got['before']:.0f} | {got['after']:.0f} |")
    return lines


class _PeakRSS:
    """Highest resident set size seen while the block runs, polled every millisecond."""

    def __enter__(self):
        import psutil

        self._proc, self._stop = psutil.Process(), False
        self.base = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop:
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()


def memory_case(case: str, tokens: int) -> dict:
    """Run one case in this process; return the peak RSS rise in MiB."""
    model, tok = gpt2_small_shaped("eager" if case == "output_attentions" else "sdpa")
    ids = torch.randint(1000, 20000, (1, tokens))
    mask = torch.ones_like(ids)
    text = tok.decode(torch.randint(1000, 20000, (tokens + 64,)))  # cut to `tokens` tokens
    enc = TransformerActivationEncoder(model, tok, parts=list(METRICS), token_pooling="mean",
                                       max_length=tokens, batch_size=1).fit()
    assert len(enc.tokenizer_(text, truncation=True, max_length=tokens)["input_ids"]) == tokens
    with torch.inference_mode():
        model(input_ids=ids[:, :16], attention_mask=mask[:, :16])  # warm-up
    with _PeakRSS() as rss:
        with torch.inference_mode():
            if case == "bare":
                model(input_ids=ids, attention_mask=mask)
            elif case == "output_attentions":
                out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
                del out
            else:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the text is cut to `tokens` on purpose
                    enc.transform([text])
    return {"mib": (rss.peak - rss.base) / 2**20}


def memory_rows():
    rows = []
    for tokens in LENGTHS:
        got = {}
        for case in ("bare", "metrics", "output_attentions"):
            res = subprocess.run([sys.executable, __file__, "--memory-case", case, str(tokens)],
                                 capture_output=True, text=True, check=True)
            got[case] = json.loads(res.stdout.strip().splitlines()[-1])["mib"]
        stored = 12 * 12 * tokens * tokens * 4 / 2**20
        rows.append(f"| {tokens} | {got['bare']:.0f} | {got['metrics']:.0f} | "
                    f"{got['output_attentions']:.0f} | {stored:.0f} |")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--n-gpt2", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own choice)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a checkout of an older commit to measure side by side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory-case", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cost-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_case:
        print(json.dumps(memory_case(args.memory_case[0], int(args.memory_case[1]))))
        return
    if args.cost_json:
        print(json.dumps(metric_cost(args.n, args.n_gpt2, args.repeats)))
        return
    if args.baseline:
        lines = [f"{args.n} texts ({args.n_gpt2} for the GPT-2-shaped model), batch size {BATCH}, "
                 f"mean pooling, {args.threads or torch.get_num_threads()} torch thread(s), both "
                 "models run SDPA; least CPU time of "
                 f"{args.rounds} rounds x {args.repeats} repeats, the two sides in turns (load "
                 f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores when the run "
                 "started).", ""] + baseline_lines(args.baseline, args)
        body = "\n".join(lines)
        write_section("bench_attention_before_after",
                      "## Attention metrics before and after the one-pass rewrite\n\n" + body)
        sys.stdout.write(body + "\n")
        return
    from transformers import AutoModel, AutoTokenizer

    texts, source = load_texts(args.n)
    path = default_model_path()
    minilm = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    mtok = AutoTokenizer.from_pretrained(path)
    g2, g2tok = gpt2_small_shaped()
    lines = [f"{len(texts)} texts from {source} ({min(args.n_gpt2, len(texts))} for the "
             f"GPT-2-shaped model); batch size {BATCH}; mean pooling; {torch.get_num_threads()} "
             f"torch threads; least CPU time (`time.process_time`) of {args.repeats} "
             "interleaved runs; both models run SDPA. CPU time of this process, not wall "
             f"time, is measured (load average {os.getloadavg()[0]:.1f} on "
             f"{os.cpu_count()} cores when the run started).",
             "", "### Cost against a bare forward over the same batches", "",
             "| model | parts (every layer) | entries per layer | CPU seconds | ours / bare |",
             "| --- | --- | --- | --- | --- |"]
    lines += cost_rows("all-MiniLM-L6-v2 (built-in)", minilm, mtok, texts, args.repeats)
    lines += cost_rows("GPT-2-small-shaped, random", g2, g2tok, texts[:args.n_gpt2], args.repeats)
    del g2, minilm
    lines += ["", "### Peak memory by sequence length (one text, GPT-2-small-shaped)", "",
              "Rise of the resident set size during the run, MiB (a fresh process each). "
              "Metrics: all 7, 12 layers x 12 heads. `output_attentions`: an eager forward that "
              "returns every layer's pattern. Last column: the size of all patterns "
              "(12 x 12 x S^2 float32), computed, not measured.", "",
              "| tokens | bare SDPA forward | our metrics | eager `output_attentions` | "
              "all patterns (computed) |", "| --- | --- | --- | --- | --- |"]
    lines += memory_rows()
    body = "\n".join(lines)
    write_section("bench_attention", "## Inside attention: per-head parts and metrics\n\n" + body)
    sys.stdout.write(body + "\n")


if __name__ == "__main__":
    main()
