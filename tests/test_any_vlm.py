"""Discovery over every image-text-to-text model type transformers ships (its auto mapping):
tiny random models built from their configs, the language stack read from plain texts against
the language model's own hidden states, and the vision tower found by its configuration.

Processors cannot be built generically offline, so image inputs are checked on the kinds of
``embetter_plug.testing.make_tiny_vlm`` (``test_vision.py``); here the point is that discovery
follows the model on the whole field. The coverage is printed at the end of the run and written
in ``docs/vision.md``.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.arch import blocks as _arch, vision as _vision
from embetter_plug.testing import make_tokenizer

transformers = pytest.importorskip("transformers")
from transformers import CONFIG_MAPPING  # noqa: E402
from transformers.models.auto import modeling_auto  # noqa: E402

from test_any_architecture import (TINY, Refused, _quiet, _short, build_tiny,  # noqa: E402
                                   fit_or_refuse, skip_as)

TYPES = sorted(modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
MAX_PARAMS = 5_000_000
VISION = dict(image_size=32, patch_size=8, depth=2, num_channels=3)
VLM_COVERAGE: dict[str, str] = {}  # model type -> "passed" / "refused: ..." / "skipped: reason"
# read exactly on transformers 5.24/5.25 (docs/vision.md): refused at fit is then a failure
VLM_EXPECTED_EXACT = frozenset("""
aria aya_vision blip blip-2 cosmos3_omni deepseek_vl exaone4_5 fuyu gemma3 gemma4_unified got_ocr2
hyperclovax_vision_v2 idefics2 idefics3 inkling_mm_model instructblip instructblipvideo internvl
kosmos-2 lfm2_vl lighton_ocr llava llava_next llava_next_video llava_onevision minimax_m3_vl
mistral3 mllama ovis2 paligemma qianfan_ocr qwen3_vl qwen3_vl_moe smolvlm video_llama_3
video_llava vipllava
""".split())


def _kwargs(cls) -> dict:
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return {k: v for k, v in {**TINY, **VISION}.items() if k in names}


def _tiny_config(model_type: str):
    """The configuration with tiny sizes in every sub-configuration (text, vision ...)."""
    cls = CONFIG_MAPPING[model_type]
    default = cls()
    subs = {name: type(getattr(default, name))(**_kwargs(type(getattr(default, name))))
            for name in (getattr(default, "sub_configs", None) or {})
            if getattr(default, name, None) is not None}
    return cls(**subs)


@functools.lru_cache(maxsize=None)
def build(model_type: str):
    """``(model, None)`` or ``(None, why it cannot be built tiny offline)``."""
    return build_tiny(lambda: _tiny_config(model_type), MAX_PARAMS)


@pytest.mark.parametrize("model_type", TYPES)
def test_language_stack_and_tower_are_found(model_type):
    model, reason = build(model_type)
    if model is None:
        skip_as(VLM_COVERAGE, model_type, reason)
    if not _vision.reads_images(model):  # images under another name (flattened_patches)
        skip_as(VLM_COVERAGE, model_type, "its forward takes no pixel_values")
    VLM_COVERAGE[model_type] = "failed"
    stack = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else None
    n_text = _arch.config_n_blocks(model.config)
    if stack is None or _arch.runner(model) is not stack or n_text is None:
        skip_as(VLM_COVERAGE, model_type, "no language model behind get_decoder()")
    assert _arch.n_blocks(model) == n_text
    vcfg = getattr(model.config, "vision_config", None)
    if vcfg is not None:
        tower = _vision.find_tower(model)
        assert type(tower.config) is type(vcfg)
        assert _arch.n_blocks(tower) >= 1
    tok = make_tokenizer("bpe")
    vocab = _arch.text_config(model.config).vocab_size
    ids = [i % vocab for i in tok("the cat sat on the mat")["input_ids"]]
    with _quiet(), torch.no_grad():
        try:
            want = stack(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        except Exception as e:  # noqa: BLE001
            skip_as(VLM_COVERAGE, model_type, f"language model's own forward fails: {_short(e)}")
    if max(ids) >= vocab or ids != tok("the cat sat on the mat")["input_ids"]:
        skip_as(VLM_COVERAGE, model_type, "vocabulary smaller than the test tokenizer's")
    enc = TransformerActivationEncoder(model, tok, layers=[0], token_pooling="mean")
    try:  # read exactly, or refused at fit by the check on the model (never for a listed one)
        fit_or_refuse(enc, model, model_type)
    except Refused as exc:
        assert model_type not in VLM_EXPECTED_EXACT, f"{model_type} was exact, now refused: {exc}"
        VLM_COVERAGE[model_type] = f"refused: {' '.join(str(exc).split())[:150]}"
        return
    with _quiet():
        got = enc.transform(["the cat sat on the mat"])
    np.testing.assert_allclose(got[0, 0, 0], want[1][0].mean(0).numpy(), rtol=1e-4, atol=1e-4)
    VLM_COVERAGE[model_type] = "passed"
