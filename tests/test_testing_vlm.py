"""The tiny offline vision-language and vision-encoder fixtures of ``embetter_plug.testing``."""

import numpy as np
import pytest
import torch

from embetter_plug.testing import (
    VISION_KINDS, VLM_KINDS, make_tiny_vision, make_tiny_vlm, save_tiny_vision, save_tiny_vlm,
)

Image = pytest.importorskip("PIL.Image")

BUILT = VLM_KINDS
NESTED = {"gemma3"}  # its processor reads a flat list of images as all belonging to the first text
# image tokens per image (whatever its size)
N_IMAGE_TOKENS = {"llava": [16] * 3, "paligemma": [16] * 3, "gemma3": [4] * 3,
                  # Qwen-VL: sides rounded to multiples of 16 pixels, one token per 16x16
                  "qwen2_vl": [4, 3, 4], "qwen2_5_vl": [4, 3, 4],
                  # Idefics3: 4 tokens per 32x32 tile, (2x2 or 1x2 tiles) + the whole image
                  "idefics3": [20, 12, 20],
                  # LLaVA-NeXT: 16 for the whole image + its best grid of tiles, unpadded, with
                  # one "newline" per row of patches
                  "llava_next": [36, 52, 36],
                  "chameleon": [16] * 3}


def _images():
    # different sizes and colours in one batch
    return [Image.new("RGB", (24, 30), (200, 10, 10)), Image.new("RGB", (48, 20), (0, 100, 10)),
            Image.new("RGB", (32, 32), (5, 5, 250))]


def _batch(processor, texts, images, kind="llava", **kwargs):
    if kind in NESTED:
        images = [[im] for im in images]
    return processor(text=texts, images=images, return_tensors="pt", padding=True, **kwargs)


def _prompts(processor, n=3):
    words = ["a picture of cats", "dog", "the end of it"]
    return [f"{words[i]} {processor.image_token} here" for i in range(n)]


def _image_positions(model, batch):
    return batch["input_ids"] == model.config.image_token_id


def _image_features(model, batch) -> torch.Tensor:
    """The projected image features the model puts at the image positions, one row per token."""
    keys = ("pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask")
    out = model.get_image_features(**{k: batch[k] for k in keys if k in batch})
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.cat(list(feats)).reshape(-1, model.config.get_text_config().hidden_size)


@pytest.mark.parametrize("kind", BUILT)
def test_vlm_forward_and_image_tokens(kind):
    model, processor = make_tiny_vlm(kind)
    assert model.training is False and model.dtype == torch.float32
    # the whole output, modality mask included, goes into the forward
    batch = _batch(processor, _prompts(processor), _images(), kind, return_mm_token_type_ids=True)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        feats = _image_features(model, batch)
    assert feats.std() > 0
    assert len(out.hidden_states) == model.config.get_text_config().num_hidden_layers + 1
    pos = _image_positions(model, batch)
    # as many placeholder tokens as image features, and the embeddings at those positions are them
    assert pos.sum(1).tolist() == N_IMAGE_TOKENS[kind]
    assert int(pos.sum()) == feats.shape[0]
    torch.testing.assert_close(out.hidden_states[0][pos], feats)
    assert make_tiny_vlm(kind)[0] is model  # cached


def _block_outputs(block, run) -> list:
    """The output shapes of ``block`` while ``run()`` runs."""
    seen = []
    hook = block.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    return seen


def _tower_tokens(model, tower, pixel_values) -> int:
    """Check the tower is a model of its own, configured by ``config.vision_config``; its length."""
    assert type(tower.config) is type(model.config.vision_config)
    with torch.no_grad():
        return tower(pixel_values).last_hidden_state.shape[1]


def test_llava_facts():
    model, processor = make_tiny_vlm("llava")
    batch = _batch(processor, _prompts(processor), _images(), return_mm_token_type_ids=True)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert torch.equal(batch["mm_token_type_ids"].bool(), _image_positions(model, batch))
    tower = model.model.vision_tower
    n = _tower_tokens(model, tower, batch["pixel_values"])
    assert n == tower.embeddings.num_patches + 1 == 17  # CLS + patches, CLS dropped for the LM
    assert model.get_decoder() is model.model.language_model


def test_paligemma_facts():
    model, processor = make_tiny_vlm("paligemma")
    batch = _batch(processor, _prompts(processor), _images(), return_mm_token_type_ids=True)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert torch.equal(batch["mm_token_type_ids"].bool(), _image_positions(model, batch))
    assert not batch["token_type_ids"].any()  # a prefix only: all 0 (attended both ways)
    with_suffix = _batch(processor, _prompts(processor, 1), _images()[:1], suffix=["a dog"])
    n_suffix = len(processor.tokenizer("a dog")["input_ids"]) + 1  # + EOS
    assert with_suffix["token_type_ids"][0].tolist()[-n_suffix:] == [1] * n_suffix
    with pytest.raises(ValueError, match="images"):
        processor(text=["no picture"])
    # the prefix is attended both ways: changing its last token changes the first position
    one = _batch(processor, _prompts(processor, 1), _images()[:1])
    other = dict(one, input_ids=one["input_ids"].clone())
    other["input_ids"][0, -2] = one["input_ids"][0, -3]
    with torch.no_grad():
        first = [model(**b, output_hidden_states=True).hidden_states[-1][0, 0]
                 for b in (one, other)]
    assert not torch.allclose(*first)
    tower = model.model.vision_tower
    assert _tower_tokens(model, tower, batch["pixel_values"]) == tower.embeddings.num_patches == 16
    assert model.get_decoder() is model.model.language_model


def test_gemma3_facts():
    model, processor = make_tiny_vlm("gemma3")
    tok = processor.tokenizer
    assert processor.image_token == "<start_of_image>" != tok.image_token
    assert model.config.image_token_id == tok.image_token_id
    batch = _batch(processor, _prompts(processor), _images(), "gemma3")
    # the modality mask comes as token_type_ids (1 on the soft image tokens)
    assert torch.equal(batch["token_type_ids"].bool(), _image_positions(model, batch))
    tower = model.model.vision_tower
    assert _tower_tokens(model, tower, batch["pixel_values"]) == tower.embeddings.num_patches == 16
    assert model.get_decoder() is model.model.language_model


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_vl_facts(kind):
    model, processor = make_tiny_vlm(kind)
    batch = _batch(processor, _prompts(processor), _images())
    # flattened patches of every image, 2 frames x 3 channels x 8 x 8 pixels each
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 2, 6], [1, 4, 4]]
    assert batch["pixel_values"].shape == (16 + 12 + 16, 2 * 3 * 8 * 8)
    assert torch.equal(batch["mm_token_type_ids"].bool(), _image_positions(model, batch))
    tower = model.model.visual
    assert type(tower.config) is type(model.config.vision_config)
    merged = []
    seen = _block_outputs(tower.blocks[0], lambda: merged.append(
        tower(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output))
    assert seen == [(44, 32)]  # the blocks see all patches of the batch in one sequence
    assert merged[0].shape == (11, 32)  # 2x2 patches merged into one token
    assert model.get_decoder() is model.model.language_model
    # the chat template brackets the placeholder
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a cat"}]}],
        tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>a cat" in chat


def test_idefics3_facts():
    model, processor = make_tiny_vlm("idefics3")
    batch = _batch(processor, _prompts(processor), _images(), return_mm_token_type_ids=True)
    # tiles padded to the batch's most: [texts, tiles, 3, 32, 32], and a mask of real pixels
    assert batch["pixel_values"].shape == (3, 5, 3, 32, 32)
    assert batch["pixel_attention_mask"].flatten(2).all(-1).sum(1).tolist() == [5, 3, 5]
    pos = _image_positions(model, batch)
    # the modality mask covers each image's whole span (brackets, tile tags, line breaks)
    span = batch["mm_token_type_ids"].bool()
    assert (span >= pos).all() and (span.sum(1) > pos.sum(1)).all()
    ids = batch["input_ids"][0][span[0]].tolist()
    tok = processor.tokenizer
    assert ids[0] == tok.convert_tokens_to_ids("<fake_token_around_image>") == ids[-1]
    tower = model.model.vision_model
    assert _tower_tokens(model, tower, batch["pixel_values"][0]) == tower.embeddings.num_patches
    seen = _block_outputs(tower.encoder.layers[0], lambda: model(**batch))
    assert seen == [(5 + 3 + 5, 16, 32)]  # one row per real tile, no CLS
    assert model.get_decoder() is model.model.text_model
    chat = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a cat"}]}],
        tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>User:<image> a cat<end_of_utterance>\nAssistant:"


def test_llava_next_facts():
    model, processor = make_tiny_vlm("llava_next")
    images = _images()[:2] + [Image.new("RGB", (40, 40))]
    batch = _batch(processor, _prompts(processor), images, return_mm_token_type_ids=True)
    assert batch["image_sizes"].tolist() == [[30, 24], [20, 48], [40, 40]]  # (height, width)
    assert batch["pixel_values"].shape == (3, 5, 3, 32, 32)  # whole image + tiles, padded
    pos = _image_positions(model, batch)
    assert pos.sum(1).tolist() == [36, 52, 88]
    assert torch.equal(batch["mm_token_type_ids"].bool(), pos)
    tower = model.model.vision_tower
    seen = _block_outputs(tower.encoder.layers[0], lambda: model(**batch))
    assert seen == [(3 + 3 + 5, 17, 32)]  # one row per real tile, CLS + 16 patches
    assert type(tower.config) is type(model.config.vision_config)
    assert model.get_decoder() is model.model.language_model


def test_chameleon_facts():
    model, processor = make_tiny_vlm("chameleon")
    tok = processor.tokenizer
    batch = _batch(processor, _prompts(processor), _images(), return_mm_token_type_ids=True)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    pos = _image_positions(model, batch)
    assert model.config.image_token_id == tok.image_token_id
    # the modality mask also covers the <racm3:break> ... <eoss> brackets
    assert (batch["mm_token_type_ids"].sum(1) == pos.sum(1) + 2).all()
    # the image becomes 16 discrete codes (a 4x4 VQ grid), which are tokens of the vocabulary
    codes = model.get_image_tokens(batch["pixel_values"])
    assert codes.shape == (3, 16)
    names = set(tok.convert_ids_to_tokens(codes.flatten().tolist()))
    assert names and all(n.startswith("IMGIMG") for n in names)
    assert type(model.model.vqmodel.config) is type(model.config.vq_config)
    assert model.get_decoder() is model.model  # no separate language model


# one image row and one text-only row: images as a flat list or nested per text
LAYOUTS = {"flat": lambda im: [im], "nested": lambda im: [[im], []]}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind", [k for k in BUILT if k != "paligemma"])
def test_text_only_row_in_a_mixed_batch(kind, layout):
    model, processor = make_tiny_vlm(kind)
    texts = _prompts(processor, 1) + ["no picture in this row at all"]
    images = LAYOUTS[layout](_images()[0])
    if kind in NESTED and layout == "flat":
        with pytest.raises(ValueError, match="number of"):
            processor(text=texts, images=images, return_tensors="pt", padding=True)
        return
    mixed = processor(text=texts, images=images, return_tensors="pt", padding=True)
    alone = processor(text=texts[1:], return_tensors="pt")
    with torch.no_grad():
        got = model(**mixed, output_hidden_states=True).hidden_states[-1][1]
        want = model(**alone, output_hidden_states=True).hidden_states[-1][0]
    keep = mixed["attention_mask"][1].bool()  # right padding: the real tokens come first
    torch.testing.assert_close(got[keep], want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", BUILT)
def test_left_padded_image_row(kind):
    model, processor = make_tiny_vlm(kind)
    processor.tokenizer.padding_side = "left"
    texts = _prompts(processor, 1) + [" ".join(["plain words"] * 60)]  # longer than any image
    images = [_images()[:1], []]
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    alone = processor(text=texts[:1], images=images[:1], return_tensors="pt")
    keep = batch["attention_mask"][0].bool()
    assert not keep[0]  # padded on the left
    with torch.no_grad():
        got = model(**batch, output_hidden_states=True).hidden_states[-1][0]
        want = model(**alone, output_hidden_states=True).hidden_states[-1][0]
    torch.testing.assert_close(got[keep], want, atol=1e-5, rtol=1e-4)


def test_paligemma_text_only_row_is_garbled():
    # the processor inserts BOS after the last "<image>" of each text, and at character 6 of a
    # text without one
    _, processor = make_tiny_vlm("paligemma")
    batch = processor(text=_prompts(processor, 1) + ["no picture"], images=[[_images()[0]], []],
                      padding=True)
    assert processor.tokenizer.decode(batch["input_ids"][1]).startswith("no pic<s>ture")


@pytest.mark.parametrize("kind", VISION_KINDS)
def test_vision_forward(kind):
    model, images = make_tiny_vision(kind)
    batch = images(images=_images(), return_tensors="pt")
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    # a one-colour 32x32 image is only rescaled and normalised
    px = images(images=_images()[2:], return_tensors="pt")["pixel_values"][0, :, 0, 0].numpy()
    want = (np.array([5, 5, 250]) / 255 - np.array(images.image_mean)) / np.array(images.image_std)
    np.testing.assert_allclose(px, want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    blocks = model.layers if kind == "vit" else model.encoder.layers
    assert len(blocks) == model.config.num_hidden_layers
    emb = model.embeddings
    n_patches = emb.num_patches if kind != "vit" else emb.patch_embeddings.num_patches
    cls = 0 if kind == "siglip" else 1
    assert out.last_hidden_state.shape == (3, n_patches + cls, model.config.hidden_size)
    assert n_patches == (32 // 8) ** 2


def test_unknown_kind():
    with pytest.raises(ValueError, match="not one of"):
        make_tiny_vlm("blip")
    with pytest.raises(ValueError, match="not one of"):
        make_tiny_vision("llava")


def test_save_and_load_llava(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = make_tiny_vlm("llava")
    save_tiny_vlm("llava", tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is type(model) and type(loaded_processor) is type(processor)
    batch = _batch(processor, _prompts(processor), _images())
    again = _batch(loaded_processor, _prompts(processor), _images())
    assert torch.equal(batch["input_ids"], again["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**again).logits, model(**batch).logits)


def test_save_and_load_clip(tmp_path):
    from transformers import AutoImageProcessor, AutoModel

    model, images = make_tiny_vision("clip")
    save_tiny_vision("clip", tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    loaded_images = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    batch = images(_images(), return_tensors="pt")
    again = loaded_images(_images(), return_tensors="pt")
    torch.testing.assert_close(again["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**again).last_hidden_state,
                                   model(**batch).last_hidden_state)


def test_built_the_same_in_a_fresh_process():
    import json
    import subprocess
    import sys

    code = ("import json, sys; from embetter_plug.testing import make_tiny_vlm;"
            "m, _ = make_tiny_vlm('llava');"
            "sums = [float(p.detach().double().sum()) for p in m.parameters()];"
            "sys.stdout.write(json.dumps(sums))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=300)

    def sums(model):
        return [float(p.detach().double().sum()) for p in model.parameters()]

    here = sums(make_tiny_vlm("llava")[0])
    assert json.loads(run.stdout) == here
    assert sums(make_tiny_vlm("llava", seed=1)[0]) != here
