r"""Tiny random vision-language models and vision encoders with working processors, built offline.

Every model is built from a small config with a fixed seed (2 text layers of width 32, a 2-layer
vision tower of width 32 on 32x32 images cut into 8x8 patches) and cached per kind; processors
are assembled from the BPE tokenizer of :mod:`embetter_plug.testing` (plus each processor's
special tokens) and the Pillow image processors (no ``torchvision`` needed). Nothing downloads.

Facts per kind (transformers 5.24; "tower" is the vision encoder inside the model):

llava
    ``LlavaProcessor`` + ``CLIPImageProcessorPil``; placeholder ``"<image>"`` =
    ``config.image_token_id``; ``return_mm_token_type_ids=True`` works. One image becomes 16
    tokens whatever its size (resized and centre-cropped to 32x32; 4x4 patches, the CLS token
    dropped by ``vision_feature_select_strategy="default"``). ``pixel_values`` ``[n_images, 3, 32,
    32]``, nothing else. Tower ``model.model.vision_tower``: ``CLIPVisionModel``, a
    ``PreTrainedModel`` whose ``.config`` is ``config.vision_config`` (``CLIPVisionConfig``);
    blocks ``vision_tower.encoder.layers``, one row per image, 17 tokens (CLS + 16 patches;
    ``vision_tower.embeddings.num_patches`` is 16). ``get_decoder()`` is the ``LlamaModel``.
    Text-only rows in a batch with image rows work.
paligemma
    ``PaliGemmaProcessor`` + ``SiglipImageProcessorPil`` (``image_seq_length`` 16); placeholder
    ``"<image>"`` = ``config.image_token_id``; the processor adds 1,152 ``<locNNNN>``/``<segNNN>``
    tokens and a BOS after the last image token. Always returns ``token_type_ids`` (0 on the
    prefix, 1 on a ``suffix=`` with its EOS; the prefix is attended both ways, so a position's
    activations depend on later prefix tokens) and ``labels``;
    ``return_mm_token_type_ids=True`` adds the modality mask. 16 tokens per image whatever its
    size; ``pixel_values`` ``[n_images, 3, 32, 32]``. Tower ``model.model.vision_tower``:
    ``SiglipVisionModel`` (config ``SiglipVisionConfig``), blocks ``vision_tower.encoder.layers``,
    one row per image, 16 tokens, no CLS (= ``embeddings.num_patches``). ``get_decoder()`` is the
    ``GemmaModel``. Text-only: the processor refuses ``text`` without ``images``, and a text-only
    row next to image rows gets its BOS inserted 6 characters into the text (not supported).
gemma3
    ``Gemma3Processor`` + ``Gemma3ImageProcessorPil`` (no pan-and-scan). The placeholder in the
    text is ``processor.image_token`` = ``"<start_of_image>"`` (the BOI token), expanded to
    ``"\n\n<start_of_image>" + 4 x "<image_soft_token>" + "<end_of_image>\n\n"``;
    ``config.image_token_id`` is the soft token (``tokenizer.image_token_id``), ``boi_token_id``
    / ``eoi_token_id`` the brackets. The modality mask is always returned, as ``token_type_ids``
    (1 on soft tokens; image blocks are attended both ways). Images must be nested per text
    (``[[img], [img]]``): a flat list belongs to the first text. 4 tokens per image whatever its
    size (the 4x4 patches average-pooled to 2x2, ``mm_tokens_per_image``); ``pixel_values``
    ``[n_images, 3, 32, 32]``. Tower ``model.model.vision_tower``: ``SiglipVisionModel``, blocks
    ``vision_tower.encoder.layers``, one row per image, 16 tokens, no CLS. ``get_decoder()`` is
    the ``Gemma3TextModel``. Text-only rows work (``images=[[img], []]``). The projector weight,
    zero at initialisation, is drawn at random here so that images change the activations.
qwen2_vl, qwen2_5_vl
    ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` without the video processor (the stock classes
    cannot be built, nor loaded by ``AutoProcessor``, without ``torchvision``: build them here
    with ``image_processor`` and ``tokenizer`` only) + ``Qwen2VLImageProcessorPil``;
    placeholder ``"<|image_pad|>"`` = ``config.image_token_id`` (a minimal chat template writes
    ``<|vision_start|><|image_pad|><|vision_end|>`` for an image item). The modality mask
    ``mm_token_type_ids`` is always returned and the model requires it with ``image_grid_thw``
    (M-RoPE positions). Images keep their aspect: sides rounded to multiples of 16 pixels
    (between 16x16 and 48x48 pixels in all) and one token per 16x16 pixels, so the count varies
    (24x30 -> 4, 48x20 -> 3). ``pixel_values`` ``[all patches of the batch, 2*3*8*8]``
    (flattened 8x8 patches, 2 frames, in 2x2 merge-group order) and ``image_grid_thw``
    ``[n_images, 3]`` (1, rows, columns of patches). Tower ``model.model.visual``:
    ``Qwen2VisionTransformerPretrainedModel`` / ``Qwen2_5_VisionTransformerPretrainedModel``
    (config ``Qwen2VLVisionConfig`` / ``Qwen2_5_VLVisionConfig``), blocks ``visual.blocks``,
    which see every patch of the batch in one sequence ``[n_patches, 32]`` separated by
    ``cu_seqlens`` (Qwen2.5-VL: in window order, window attention but in block 1), no CLS;
    ``visual.merger`` makes 1 token of 2x2 patches. ``get_decoder()`` is the text model. Text-only
    rows in a batch with image rows work.
idefics3
    ``Idefics3Processor`` + ``Idefics3ImageProcessorPil`` (a minimal chat template); placeholder
    ``"<image>"`` = ``config.image_token_id``. An image is scaled to a longest edge of 64 pixels
    and cut into 32x32 tiles plus the whole image scaled to 32x32; each becomes
    ``<fake_token_around_image><row_i_col_j>`` (``<global-img>`` for the whole one) + 4 image
    tokens (16 patches, pixel-shuffled by ``scale_factor`` 2), so the count varies with the aspect
    (24x30 -> 2x2 tiles + 1 = 20 tokens, 48x20 -> 1x2 + 1 = 12). ``return_mm_token_type_ids=True``
    works but marks each image's whole span (brackets, tags, line breaks), not only ``<image>``.
    ``pixel_values`` ``[n_texts, most tiles in the batch, 3, 32, 32]`` (zero-padded) and
    ``pixel_attention_mask`` ``[n_texts, tiles, 32, 32]`` (all 0 on padding tiles). Tower
    ``model.model.vision_model``: ``Idefics3VisionTransformer`` (a ``PreTrainedModel``, config
    ``Idefics3VisionConfig``), blocks ``vision_model.encoder.layers``, one row per real tile
    (padding tiles dropped), 16 tokens, no CLS; then ``model.model.connector``.
    ``get_decoder()`` is ``model.model.text_model``. Text-only rows in a mixed batch work.
llava_next
    ``LlavaNextProcessor`` + ``LlavaNextImageProcessorPil`` ("anyres" with the grids 32x64,
    64x32, 64x64); placeholder ``"<image>"`` = ``config.image_token_id``;
    ``return_mm_token_type_ids=True`` works. An image becomes its whole self at 32x32 plus the
    32x32 tiles of its best grid: 16 tokens + the tiles' patches with the padding cut off and an
    ``image_newline`` token per row of patches, so the count varies (24x30 -> 36, 48x20 -> 52,
    40x40 -> 88). ``pixel_values`` ``[n_images, most tiles + 1, 3, 32, 32]`` (zero-padded) and
    ``image_sizes`` ``[n_images, 2]`` (height, width). Tower ``model.model.vision_tower``:
    ``CLIPVisionModel`` as in LLaVA, one row per real tile (``[all tiles, 17, 32]``, CLS +
    16). ``get_decoder()`` is the ``LlamaModel``. Text-only rows in a mixed batch work.
chameleon
    ``ChameleonProcessor`` + ``ChameleonImageProcessorPil``; placeholder ``"<image>"`` =
    ``config.image_token_id`` (also ``config.vocabulary_map["<image>"]``), expanded to
    ``<racm3:break>`` + 16 x ``<image>`` + ``<eoss>``; the processor appends a separator token
    (``<reserved08706>``) to every text unless ``return_for_text_completion=True``.
    ``return_mm_token_type_ids=True`` works and also marks the two brackets. No tower: a VQ-GAN
    ``model.model.vqmodel`` (``ChameleonVQVAE``, a ``PreTrainedModel`` with config
    ``ChameleonVQVAEConfig`` = ``config.vq_config``, convolutions only, no blocks) turns an image
    into a grid of discrete codes, each one a vocabulary token (``IMGIMG...Z``) whose embedding
    enters the text stack (``model.get_image_tokens``). 16 tokens per image whatever its size
    (32x32 halved 3 times: 4x4 codes, from a codebook of 16; the real model: 512x512 pixels to
    1,024 codes). ``pixel_values`` ``[n_images, 3, 32, 32]``. ``get_decoder()`` is
    ``model.model`` itself (``ChameleonModel``, blocks ``model.model.layers``; no separate
    language model). Text-only rows in a mixed batch work.

Across kinds: images given nested per text (``[[img], [img, img], []]``, an empty list for a
text-only row) work for every kind; a flat list (spread over the texts in order of their
placeholders) works for all but Gemma-3. Padding follows the tokenizer (right here); with
left padding too, an image row gives the activations it gives alone, for every kind. The whole
processor output, with ``return_mm_token_type_ids=True``, goes into the model's forward.
Every saved folder loads back with ``AutoModelForImageTextToText`` and ``AutoProcessor``, but for
Qwen-VL's processors (see above). The models are built with ``attn_implementation="eager"``.

Vision encoders (``make_tiny_vision``): ``clip`` is ``CLIPVisionModel`` + ``CLIPImageProcessorPil``
(blocks ``encoder.layers``, 17 tokens: CLS + ``embeddings.num_patches``); ``siglip`` is
``SiglipVisionModel`` + ``SiglipImageProcessorPil`` (blocks ``encoder.layers``, 16 tokens, no
CLS, an attention-pooling ``head``); ``vit`` is ``ViTModel`` + ``ViTImageProcessorPil`` (blocks
``layers`` at the top level, 17 tokens: CLS + ``embeddings.patch_embeddings.num_patches``; a
``pooler``); no ``vision_model`` level in 5.x. Each resizes any image to 32x32:
``pixel_values`` ``[n_images, 3, 32, 32]``, one row per image in the blocks.

Examples
--------
>>> from PIL import Image
>>> from embetter_plug.testing import make_tiny_vlm
>>> model, processor = make_tiny_vlm("llava")
>>> batch = processor(text=["a <image> cat"], images=[Image.new("RGB", (24, 30))],
...                   return_tensors="pt")
>>> int((batch["input_ids"] == model.config.image_token_id).sum())
16
"""

from __future__ import annotations

import functools
from pathlib import Path

from ._vlm_kinds import BUILDERS, vision

VLM_KINDS = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "paligemma", "gemma3",
             "chameleon")
VISION_KINDS = ("clip", "siglip", "vit")


def _check(kind: str, kinds: tuple) -> None:
    if kind not in kinds:
        raise ValueError(f"kind={kind!r} is not one of {kinds}.")


@functools.lru_cache(maxsize=None)
def _vlm_model(kind: str, seed: int):
    import torch
    from transformers import AutoModelForImageTextToText

    config, _ = BUILDERS[kind]()
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="eager").eval()
    for name, param in model.named_parameters():
        # Gemma-3 starts its projector at zero, which would leave images without any effect
        if name.endswith("mm_input_projection_weight"):
            torch.nn.init.normal_(param.data, std=0.02)
    return model


@functools.lru_cache(maxsize=None)
def _vision_model(kind: str, seed: int):
    import torch
    from transformers import AutoModel

    config, _ = vision(kind)
    torch.manual_seed(seed)
    return AutoModel.from_config(config, attn_implementation="eager").eval()


def make_tiny_vlm(kind: str = "llava", *, seed: int = 0):
    """Return ``(model, processor)``: a tiny random vision-language model of ``kind``.

    ``kind`` is one of :data:`VLM_KINDS`. The model is the ``*ForConditionalGeneration`` class
    (what ``AutoModelForImageTextToText`` loads), float32, in eval mode with eager attention,
    built once per ``(kind, seed)`` and shared; the processor is fresh on every call (tests may
    change its tokenizer's ``padding_side``, right by default). The module docstring of
    ``embetter_plug.testing._vlm`` lists the facts of each kind (placeholder, image tokens per
    image, image tensors, where the vision tower and its blocks are).

    Examples
    --------
    >>> from PIL import Image
    >>> model, processor = make_tiny_vlm("qwen2_vl")
    >>> batch = processor(text=["a <|image_pad|> cat", "no image"],
    ...                   images=[[Image.new("RGB", (48, 20))], []], padding=True,
    ...                   return_tensors="pt")
    >>> batch["image_grid_thw"].tolist(), batch["mm_token_type_ids"].sum(1).tolist()
    ([[1, 2, 6]], [3, 0])
    """
    _check(kind, VLM_KINDS)
    return _vlm_model(kind, seed), BUILDERS[kind]()[1]


def make_tiny_vision(kind: str = "clip", *, seed: int = 0):
    """Return ``(model, image_processor)``: a tiny random vision encoder of ``kind``.

    ``kind`` is one of :data:`VISION_KINDS` (``CLIPVisionModel``, ``SiglipVisionModel``,
    ``ViTModel``), with the Pillow image processor of the family resizing to 32x32; built once
    per ``(kind, seed)`` and shared.

    Examples
    --------
    >>> from PIL import Image
    >>> model, images = make_tiny_vision("siglip")
    >>> model(**images(Image.new("RGB", (40, 24)), return_tensors="pt")).last_hidden_state.shape
    torch.Size([1, 16, 32])
    """
    _check(kind, VISION_KINDS)
    return _vision_model(kind, seed), vision(kind)[1]


def _save(model, processor, path: str | Path) -> Path:
    from ..extraction.loading import hf_progress

    path = Path(path)
    with hf_progress(False):
        model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_vlm(kind: str, path: str | Path, *, seed: int = 0) -> Path:
    """Write :func:`make_tiny_vlm`'s model and processor to ``path`` as a Hugging Face folder.

    ``AutoModelForImageTextToText`` and ``AutoProcessor`` load it back offline, except the
    processors of ``qwen2_vl``/``qwen2_5_vl``, which ``AutoProcessor`` cannot load without
    ``torchvision`` (``AutoImageProcessor`` and ``AutoTokenizer`` can).

    Examples
    --------
    >>> from transformers import AutoModelForImageTextToText
    >>> folder = save_tiny_vlm("llava", "tiny-llava")
    >>> type(AutoModelForImageTextToText.from_pretrained(folder)).__name__
    'LlavaForConditionalGeneration'
    """
    return _save(*make_tiny_vlm(kind, seed=seed), path)


def save_tiny_vision(kind: str, path: str | Path, *, seed: int = 0) -> Path:
    """Write :func:`make_tiny_vision`'s model and image processor to ``path`` (``AutoModel`` and
    ``AutoImageProcessor`` load it back offline)."""
    return _save(*make_tiny_vision(kind, seed=seed), path)


__all__ = ["VLM_KINDS", "VISION_KINDS", "make_tiny_vlm", "make_tiny_vision", "save_tiny_vlm",
           "save_tiny_vision"]
