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
    ``vision_tower.embeddings.num_patches`` is 16). ``get_decoder()`` is the ``LlamaModel``. Text-only
    rows in a batch with image rows work.
paligemma
    ``PaliGemmaProcessor`` + ``SiglipImageProcessorPil`` (``image_seq_length`` 16); placeholder
    ``"<image>"`` = ``config.image_token_id``; the processor adds 1,152 ``<locNNNN>``/``<segNNN>``
    tokens and a BOS after the last image token. Always returns ``token_type_ids`` (0 on the
    prefix, 1 on a ``suffix=`` with its EOS; the prefix is attended both ways) and ``labels``;
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

Vision encoders (``make_tiny_vision``): ``clip`` is ``CLIPVisionModel`` + ``CLIPImageProcessorPil``
(blocks ``encoder.layers``, 17 tokens: CLS + ``embeddings.num_patches``); ``siglip`` is
``SiglipVisionModel`` + ``SiglipImageProcessorPil`` (blocks ``encoder.layers``, 16 tokens, no
CLS, an attention-pooling ``head``); ``vit`` is ``ViTModel`` + ``ViTImageProcessorPil`` (blocks
``layers`` at the top level, 17 tokens: CLS + ``embeddings.patch_embeddings.num_patches``; a
``pooler``). No ``vision_model`` level in 5.x. All resize any image to 32x32: ``pixel_values`` ``[n_images, 3, 32, 32]``.

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

VLM_KINDS = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "paligemma", "gemma3",
             "chameleon")
VISION_KINDS = ("clip", "siglip", "vit")

SEED = 0
IMAGE_SIZE = 32
PATCH = 8
N_PATCHES = (IMAGE_SIZE // PATCH) ** 2
GEMMA3_TOKENS = 4  # Gemma-3 average-pools the 4x4 patches of an image to 2x2 soft tokens
# text stack: Llama-like sizes shared by every kind (GQA with 2 key/value heads)
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512)
_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=IMAGE_SIZE, patch_size=PATCH)


def _tokenizer(named: dict | None = None, extra: tuple = (), padding_side: str = "right"):
    """The BPE test tokenizer with the named special tokens (``image_token`` ...) and ``extra`` ones."""
    from transformers import PreTrainedTokenizerFast

    from .testing import make_tokenizer  # imported here: testing re-exports this module

    tok = PreTrainedTokenizerFast(
        tokenizer_object=make_tokenizer("bpe").backend_tokenizer, pad_token="<pad>", bos_token="<s>",
        eos_token="</s>", extra_special_tokens=dict(named or {}), padding_side=padding_side,
        model_max_length=4096, model_input_names=["input_ids", "attention_mask"],
    )
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)})
    return tok


def _text_ids(tok) -> dict:
    return dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)


def _llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = _tokenizer({"image_token": "<image>"})
    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=PATCH,
                               vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    config = LlavaConfig(vision_config=CLIPVisionConfig(**_TOWER, projection_dim=32),
                         text_config=LlamaConfig(**_TEXT, **_text_ids(tok)),
                         image_token_id=tok.image_token_id, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    return config, processor


_PINPOINTS = [[IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE],
              [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]


def _llava_next():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextProcessor
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

    tok = _tokenizer({"image_token": "<image>"})
    # "anyres": the image resized into the best of the pinpoint grids, cut into 32x32 tiles
    images = get_image_processor_class_from_name("LlavaNextImageProcessorPil")(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=_PINPOINTS)
    processor = LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=PATCH,
                                   vision_feature_select_strategy="default",
                                   num_additional_image_tokens=1)
    config = LlavaNextConfig(vision_config=CLIPVisionConfig(**_TOWER, projection_dim=32),
                             text_config=LlamaConfig(**_TEXT, **_text_ids(tok)),
                             image_token_id=tok.image_token_id, image_grid_pinpoints=_PINPOINTS,
                             vision_feature_layer=-1, image_seq_length=N_PATCHES)
    return config, processor


def _vision(kind: str):
    import transformers as tf
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if kind == "clip":
        images = get_image_processor_class_from_name("CLIPImageProcessorPil")(
            size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
        return tf.CLIPVisionConfig(**_TOWER, projection_dim=32), images
    name = {"siglip": ("SiglipVisionConfig", "SiglipImageProcessorPil"),
            "vit": ("ViTConfig", "ViTImageProcessorPil")}[kind]
    return getattr(tf, name[0])(**_TOWER), get_image_processor_class_from_name(name[1])(size=square)


def _siglip_images(cls: str = "SiglipImageProcessorPil", **kwargs):
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

    return get_image_processor_class_from_name(cls)(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                                    **kwargs)


def _paligemma():
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaProcessor, SiglipVisionConfig

    tok = _tokenizer({"image_token": "<image>"})
    images = _siglip_images()
    images.image_seq_length = N_PATCHES  # read by PaliGemmaProcessor
    processor = PaliGemmaProcessor(image_processor=images, tokenizer=tok)  # adds 1,152 <loc>/<seg>
    config = PaliGemmaConfig(vision_config=SiglipVisionConfig(**_TOWER, vision_use_head=False),
                             text_config=GemmaConfig(**_TEXT, head_dim=8, **_text_ids(tok)),
                             image_token_id=tok.image_token_id, projection_dim=32, hidden_size=32,
                             vocab_size=len(tok))
    return config, processor


def _gemma3():
    from transformers import Gemma3Config, Gemma3Processor, Gemma3TextConfig, SiglipVisionConfig

    tok = _tokenizer({"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                      "eoi_token": "<end_of_image>"})
    processor = Gemma3Processor(image_processor=_siglip_images("Gemma3ImageProcessorPil"),
                                tokenizer=tok, image_seq_length=GEMMA3_TOKENS)
    text = Gemma3TextConfig(**_TEXT, head_dim=8, query_pre_attn_scalar=8, sliding_window=16,
                            layer_types=["sliding_attention", "full_attention"], **_text_ids(tok))
    config = Gemma3Config(vision_config=SiglipVisionConfig(**_TOWER, vision_use_head=False),
                          text_config=text, mm_tokens_per_image=GEMMA3_TOKENS,
                          image_token_id=tok.image_token_id, boi_token_id=tok.boi_token_id,
                          eoi_token_id=tok.eoi_token_id)
    return config, processor


def _idefics3():
    from transformers import Idefics3Config, Idefics3Processor, Idefics3VisionConfig, LlamaConfig
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

    rows_cols = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
    tok = _tokenizer({"image_token": "<image>"}, extra=(
        "<fake_token_around_image>", "<global-img>", "<end_of_utterance>") + rows_cols)
    # an image is scaled to a longest edge of 64 pixels and cut into 32x32 tiles, + the whole
    images = get_image_processor_class_from_name("Idefics3ImageProcessorPil")(
        size={"longest_edge": 2 * IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE})
    processor = Idefics3Processor(image_processor=images, tokenizer=tok,
                                  image_seq_len=N_PATCHES // 4, chat_template=_IDEFICS3_TEMPLATE)
    config = Idefics3Config(vision_config=Idefics3VisionConfig(**_TOWER),
                            text_config=LlamaConfig(**_TEXT, **_text_ids(tok)), scale_factor=2,
                            image_token_id=tok.image_token_id, pad_token_id=tok.pad_token_id)
    return config, processor


_IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'text' %} {{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


_QWEN_SPECIAL = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                 "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
# a minimal chat template: each image item of a message becomes the bracketed placeholder
_QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=None)
def _image_only(name: str):
    """``name`` (a Qwen-VL processor) without its video processor, which needs ``torchvision``."""
    import transformers as tf
    from transformers.processing_utils import ProcessorMixin

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.image_token_id = tokenizer.image_token, tokenizer.image_token_id
        self.video_token, self.video_token_id = tokenizer.video_token, tokenizer.video_token_id
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return type(name, (getattr(tf, name),), {"__init__": __init__, "__module__": __name__})


def _qwen_vl(version: str):
    import transformers as tf
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

    tok = _tokenizer(_QWEN_SPECIAL, extra=("<|im_start|>", "<|im_end|>"))
    # 8x8 patches merged 2x2: sides become multiples of 16, between 16x16 and 48x48 pixels
    images = get_image_processor_class_from_name("Qwen2VLImageProcessorPil")(
        patch_size=PATCH, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": 16 * 16, "longest_edge": 48 * 48})
    name = {"2": "Qwen2VL", "2.5": "Qwen2_5_VL"}[version]
    processor = _image_only(f"{name}Processor")(image_processor=images, tokenizer=tok,
                                                chat_template=_QWEN_TEMPLATE)
    text = getattr(tf, f"{name}TextConfig")(
        **_TEXT, **_text_ids(tok),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]})
    vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=PATCH,
                  spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        vision.update(mlp_ratio=2)
    else:  # Qwen2.5-VL: gated MLP, window attention on all but the full-attention blocks
        vision.update(intermediate_size=64, out_hidden_size=32, window_size=16,
                      fullatt_block_indexes=[1])
    config = getattr(tf, f"{name}Config")(
        text_config=text, vision_config=getattr(tf, f"{name}VisionConfig")(**vision),
        image_token_id=tok.image_token_id, video_token_id=tok.video_token_id,
        vision_start_token_id=tok.vision_start_token_id, vision_end_token_id=tok.vision_end_token_id)
    return config, processor


_BUILDERS = {"llava": _llava, "paligemma": _paligemma, "gemma3": _gemma3,
             "qwen2_vl": functools.partial(_qwen_vl, "2"),
             "qwen2_5_vl": functools.partial(_qwen_vl, "2.5"), "idefics3": _idefics3,
             "llava_next": _llava_next}


def _check(kind: str, kinds: tuple) -> None:
    if kind not in kinds:
        raise ValueError(f"kind={kind!r} is not one of {kinds}.")


@functools.lru_cache(maxsize=None)
def _vlm_model(kind: str):
    import torch
    from transformers import AutoModelForImageTextToText

    config, _ = _BUILDERS[kind]()
    torch.manual_seed(SEED)
    model = AutoModelForImageTextToText.from_config(config, attn_implementation="eager").eval()
    for name, param in model.named_parameters():
        if name.endswith("mm_input_projection_weight"):  # Gemma-3 starts it at zero: no image signal
            torch.nn.init.normal_(param.data, std=0.02)
    return model


@functools.lru_cache(maxsize=None)
def _vision_model(kind: str):
    import torch
    from transformers import AutoModel

    config, _ = _vision(kind)
    torch.manual_seed(SEED)
    return AutoModel.from_config(config, attn_implementation="eager").eval()


def make_tiny_vlm(kind: str = "llava"):
    """Return ``(model, processor)``: a tiny random vision-language model of ``kind``.

    ``kind`` is one of :data:`VLM_KINDS`. The model is the ``*ForConditionalGeneration`` class
    (what ``AutoModelForImageTextToText`` loads), float32, in eval mode, built once per kind with
    a fixed seed and shared; the processor is fresh on every call.
    """
    _check(kind, VLM_KINDS)
    if kind not in _BUILDERS:
        raise NotImplementedError(f"No tiny {kind!r} model yet; available: {tuple(_BUILDERS)}.")
    return _vlm_model(kind), _BUILDERS[kind]()[1]


def make_tiny_vision(kind: str = "clip"):
    """Return ``(model, image_processor)``: a tiny random vision encoder of ``kind``.

    ``kind`` is one of :data:`VISION_KINDS` (``CLIPVisionModel``, ``SiglipVisionModel``,
    ``ViTModel``), with the Pillow image processor of the family resizing to 32x32.
    """
    _check(kind, VISION_KINDS)
    return _vision_model(kind), _vision(kind)[1]


def _save(model, processor, path: str | Path) -> Path:
    from ._loading import hf_progress

    path = Path(path)
    with hf_progress(False):
        model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_vlm(kind: str, path: str | Path) -> Path:
    """Write :func:`make_tiny_vlm`'s model and processor to ``path`` (``AutoModelForImageTextToText``
    and ``AutoProcessor`` load it back offline)."""
    return _save(*make_tiny_vlm(kind), path)


def save_tiny_vision(kind: str, path: str | Path) -> Path:
    """Write :func:`make_tiny_vision`'s model and image processor to ``path`` (``AutoModel`` and
    ``AutoImageProcessor`` load it back offline)."""
    return _save(*make_tiny_vision(kind), path)


__all__ = ["VLM_KINDS", "VISION_KINDS", "make_tiny_vlm", "make_tiny_vision", "save_tiny_vlm",
           "save_tiny_vision"]
