"""GPU throughput, side by side in one run: ours vs a bare ``model(**batch)`` loop, vs sentence-transformers.

    python benchmarks/bench_gpu.py [--n 4000] [--batch-size 64] [--dtype bfloat16]
    python benchmarks/bench_gpu.py --device cpu --smoke --no-write   # a check that it runs

For a GPT-2-small-shaped (12 x 768) and a ~1B Llama-shaped (22 x 2048, TinyLlama's shape) random
model with all-MiniLM-L6-v2's WordPiece vocabulary (real token counts), over real texts:

- ours: the last layer's ``resid_post`` mean-pooled, and every layer's ``resid_post``;
- bare: what one writes by hand, over the same length-sorted batches: tokenize the batch, copy
  it to the device, ``model(**batch)``, mean-pool ``last_hidden_state``, copy back;
- ``SentenceTransformer.encode`` of the same weights (Transformer + mean Pooling, its own
  character-length sorting), all in the same ``dtype``.

It prints texts/s, real (unpadded) tokens/s and the fraction of the GPU's dense bf16 peak that the
model's FLOPs reach (``2 x non-embedding parameters`` per token plus attention), and checks our
device result against a float32 CPU run on a few texts.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _report import write_section  # noqa: E402
from bench_encoder import interleaved, load_texts  # noqa: E402
from embetter_plug import TransformerActivationEncoder
from embetter_plug.extraction import batching as _batching  # noqa: E402
from embetter_plug.extraction.loading import default_model_path  # noqa: E402

# dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, without sparsity)
PEAK_BF16 = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0,
             "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0}


def shapes(smoke: bool) -> dict[str, tuple[str, dict]]:
    if smoke:
        return {"GPT-2-shaped (smoke)": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4)),
                "Llama-shaped (smoke)": ("llama", dict(hidden_size=64, intermediate_size=128,
                                                       num_hidden_layers=2, num_attention_heads=4,
                                                       num_key_value_heads=2))}
    return {"GPT-2-small-shaped (124M)": ("gpt2", dict(n_embd=768, n_layer=12, n_head=12)),
            "Llama ~1B (TinyLlama shape)": ("llama", dict(hidden_size=2048, intermediate_size=5632,
                                                          num_hidden_layers=22,
                                                          num_attention_heads=32,
                                                          num_key_value_heads=4))}


def build(family: str, dims: dict, tok, device, dtype):
    """A random model of ``family`` with ``dims``, made directly on ``device`` in ``dtype``."""
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    ids = dict(vocab_size=len(tok), bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
               pad_token_id=tok.pad_token_id)
    if family == "gpt2":
        cfg, cls = GPT2Config(n_positions=512, **ids, **dims), GPT2Model
    else:
        cfg, cls = LlamaConfig(max_position_embeddings=2048, **ids, **dims), LlamaModel
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(cfg)
    return model.to(dtype).eval()


def model_flops(model, lengths) -> float:
    """Forward FLOPs over texts of ``lengths`` real tokens: 2 x non-embedding params per token
    plus the attention score and value products (4 x length x hidden per token and layer)."""
    cfg = model.config
    emb = sum(p.numel() for n, p in model.named_parameters() if "emb" in n or "wte" in n or "wpe" in n)
    params = sum(p.numel() for p in model.parameters()) - emb
    lengths = np.asarray(lengths, dtype=np.float64)
    return float(2 * params * lengths.sum()
                 + 4 * cfg.num_hidden_layers * cfg.hidden_size * (lengths ** 2).sum())


def bare_loop(model, tok, texts, batches, device, max_length):
    """Tokenize each batch, copy, ``model(**batch)``, mean-pool the last hidden state, copy back."""
    def run():
        out = []
        with torch.inference_mode():
            for b in batches:
                batch = tok([texts[i] for i in b], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(device)
                batch.pop("token_type_ids", None)
                h = model(**batch).last_hidden_state
                m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append(((h * m).sum(1) / m.sum(1)).float().cpu())
        return out
    return run


def sentence_transformer(model, tok, device, dtype):
    """``SentenceTransformer`` (Transformer + mean Pooling) over a saved copy of ``model``."""
    from sentence_transformers import SentenceTransformer

    folder = tempfile.mkdtemp(prefix="bench_gpu_st_")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return SentenceTransformer(folder, device=str(device), model_kwargs={"dtype": dtype})


def peak_tflops(device, override):
    if override:
        return override, "given with --peak-tflops"
    if device.type != "cuda":
        return None, "no GPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():  # most specific names first
        if key in name:
            return value, f"{name}: {value:.0f} TFLOP/s dense bf16 (data sheet)"
    return None, f"{name}: unknown peak, pass --peak-tflops"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny models and few texts")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device on this machine; nothing measured "
                 "(use --device cpu --smoke to check the script).")
    dtype = getattr(torch, args.dtype)
    n = min(args.n, 64) if args.smoke else args.n
    texts, source = load_texts(n)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path())
    peak, peak_note = peak_tflops(device, args.peak_tflops)
    bs = args.batch_size
    lines = [f"{len(texts)} texts from {source}; batch size {bs}; {args.dtype} weights; "
             f"best of {args.repeats} interleaved runs. Peak: {peak_note}.", "",
             "| model | method | texts/s | tokens/s | time vs bare | % of bf16 peak |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for label, (family, dims) in shapes(args.smoke).items():
        model = build(family, dims, tok, device, dtype)
        last = TransformerActivationEncoder(model, tok, layers=-1, token_pooling="mean",
                                            batch_size=bs, device=device, dtype=args.dtype).fit()
        every = TransformerActivationEncoder(model, tok, layers="all", token_pooling="mean",
                                             batch_size=bs, device=device, dtype=args.dtype).fit()
        max_len = last.max_length_
        ids, _ = _batching.tokenize(tok, texts, "", "", max_len)
        lengths = [len(s) for s in ids]
        flops = model_flops(model, lengths)
        bare = bare_loop(model, tok, texts, _batching.length_sorted_batches(lengths, bs), device,
                         max_len)
        st = sentence_transformer(model, tok, device, dtype)
        st.max_seq_length = max_len
        fns = {"bare": bare, "ours, last layer": lambda: last.transform(texts),
               "ours, all layers": lambda: every.transform(texts),
               "SentenceTransformer.encode": lambda: st.encode(texts, batch_size=bs)}
        for fn in fns.values():  # warm-up (kernels, allocator)
            fn()
        t = interleaved(fns, args.repeats)
        for name, secs in t.items():
            util = f"{flops / secs / (peak * 1e12):.1%}" if peak else "n/a"
            lines.append(f"| {label} | {name} | {len(texts) / secs:,.0f} | "
                         f"{sum(lengths) / secs:,.0f} | {secs / t['bare']:.2f}x | {util} |")
        few = texts[:32]
        dev = last.transform(few)
        cpu_model = copy.deepcopy(model).float().cpu()
        exp = TransformerActivationEncoder(cpu_model, tok, layers=-1, token_pooling="mean",
                                           device="cpu", dtype="float32").fit().transform(few)
        rel = np.linalg.norm(dev - exp) / np.linalg.norm(exp)
        lines.append(f"| {label} | check: {args.dtype} on {device.type} vs float32 CPU | "
                     f"relative error {rel:.2%} | | | |")
        del model, cpu_model, last, every, st
        if device.type == "cuda":
            torch.cuda.empty_cache()
    mean_tokens = np.mean(lengths)
    lines += ["", f"Texts average {mean_tokens:.1f} tokens. Tokens/s count real tokens, not "
              "padding; the peak fraction uses the model's FLOPs on those tokens."]
    body = "\n".join(lines)
    if not args.no_write:
        write_section("bench_gpu", "## GPU throughput\n\n" + body)
    sys.stdout.write(body + "\n")


if __name__ == "__main__":
    main()
