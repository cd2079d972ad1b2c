"""Image+text extraction: cost of our encoder against a bare forward over the same samples.

    python benchmarks/bench_vision.py [--n 48] [--repeats 3]

Two random models in the shapes of small real ones (weights do not change the cost):

- a LLaVA-shaped vision-language model: a CLIP tower (6 blocks, width 384, 224x224 images in
  16x16 patches: 196 image tokens) and a Llama language stack (6 blocks, width 512);
- a ViT-shaped vision encoder (6 blocks, width 384, 224x224, 16x16 patches) on the digits.

Our side is ``encoder.transform(samples)`` reading ``resid_post`` of every language block (or
every tower block) with two poolings; the bare side runs ``model(**batch)`` over the same
batches the processor made. Preparing the batches (decoding, resizing, tokenizing) is the same
work on both sides, so it is timed on its own and left out of both: the ratio is the capture's
cost, ``(encoder - preparation) / bare forward``. Wall-clock time (``--clock cpu``: CPU time of
this process, which counts the threads' spinning too), interleaved runs, least of
``--repeats``; run it on a quiet machine (the load average is recorded).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _report import write_section  # noqa: E402
from bench_encoder import interleaved, load_texts  # noqa: E402
from embetter_plug import TransformerActivationEncoder  # noqa: E402
from embetter_plug.inputs import multimodal as _mm_batching  # noqa: E402
from embetter_plug.inputs.samples import check_inputs  # noqa: E402
from embetter_plug.testing import make_tiny_vlm  # noqa: E402

BATCH = 16


def llava_shaped():
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = make_tiny_vlm("llava")[1].tokenizer
    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=384, intermediate_size=1536,
                                       num_hidden_layers=6, num_attention_heads=6,
                                       image_size=224, patch_size=16),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1408,
                                num_hidden_layers=6, num_attention_heads=8,
                                num_key_value_heads=4, max_position_embeddings=1024),
        image_token_id=tok.convert_tokens_to_ids(tok.image_token))
    model = LlavaForConditionalGeneration(cfg).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 224},
                                           crop_size={"height": 224, "width": 224}),
        tokenizer=tok, patch_size=16, num_additional_image_tokens=1,
        vision_feature_select_strategy="default")
    return model, processor


def vit_shaped():
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                               num_attention_heads=6, image_size=224, patch_size=16)).eval()
    return model, ViTImageProcessor(size={"height": 224, "width": 224})


def case(name, model, processor, samples, params, repeats, tower=False,
         clock=time.perf_counter):
    enc = TransformerActivationEncoder(model, processor=processor, batch_size=BATCH,
                                       **params).fit()
    checked = check_inputs(samples)
    vision_only = not hasattr(processor, "tokenizer")
    pad = 0 if vision_only else processor.tokenizer.pad_token_id

    def prepare():
        return list(_mm_batching.plan_batches(processor, checked, BATCH, vision_only=vision_only,
                                              max_length=None, pad_id=pad))

    batches = prepare()
    forward = model if vision_only else model.model

    def bare():
        with torch.inference_mode():
            for _, inputs, *_ in batches:
                if tower:  # the tower alone, as ours stops after its last block
                    model.model.vision_tower(inputs["pixel_values"])
                else:
                    forward(**inputs)

    t = interleaved({"ours": lambda: enc.transform(samples), "prepare": prepare, "bare": bare},
                    repeats, clock=clock)
    ratio = (t["ours"] - t["prepare"]) / t["bare"]
    return (f"| {name} | {len(samples)} | {t['prepare']:.2f} | {t['bare']:.2f} | "
            f"{t['ours']:.2f} | {ratio:.3f}x |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    load = os.getloadavg()[0]
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rng = np.random.default_rng(0)
    texts, _ = load_texts(args.n)
    sizes = [(int(rng.integers(160, 400)), int(rng.integers(160, 400))) for _ in range(args.n)]
    pictures = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    pairs = [{"text": t, "image": im} for t, im in zip(texts, pictures)]
    from sklearn.datasets import load_digits

    digits = load_digits().images[:args.n] / 16.0
    rows = [
        case("LLaVA-shaped, language stack (`resid_post`, image:mean + text:mean)",
             *llava_shaped(), pairs, dict(token_pooling=["image:mean", "text:mean"]),
             args.repeats, clock=clock),
        case("LLaVA-shaped, vision tower (`vision.resid_post`, cls + image:mean)",
             *llava_shaped(), pairs,
             dict(parts="vision.resid_post", token_pooling=["cls", "image:mean"]), args.repeats,
             tower=True, clock=clock),
        case("ViT-shaped encoder on digits (`resid_post`, cls + image:mean)", *vit_shaped(),
             list(digits), dict(token_pooling=["cls", "image:mean"]), args.repeats, clock=clock),
        case("tiny LLaVA of the tests (width 32), language stack (`resid_post`, image:mean + "
             "text:mean)", *make_tiny_vlm("llava"), pairs,
             dict(token_pooling=["image:mean", "text:mean"]), args.repeats, clock=clock),
    ]
    body = ("## Images and text (`bench_vision`)\n\n"
            "Capture cost of image+text extraction: `(encoder - preparation) / bare forward`, "
            f"{'wall-clock' if args.clock == 'wall' else 'CPU'} seconds of the whole set (least "
            f"of the repeats, interleaved; load average {load:.1f} when the run started), batch "
            f"{BATCH}. Preparation (decoding, resizing, tokenizing, collating) is the same on "
            "both sides. The tower row's bare forward is the tower alone (ours stops after its "
            "last block). On the tiny model of the tests a forward takes microseconds, so the "
            "fixed cost per batch of the hooks and pooling weighs most there.\n\n"
            "| case | samples | preparation s | bare forward s | encoder s | capture cost |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(body)
    write_section("bench_vision", body)


if __name__ == "__main__":
    main()
