"""Configs and processors of the tiny vision-language and vision models of ``testing``.

One builder per kind returns ``(config, processor)``; the sizes are shared: 2 text layers of width
32 (4 heads, 2 key/value heads), a 2-layer vision tower of width 32 on 32x32 images cut into 8x8
patches. Processors use the BPE test tokenizer with each processor's special tokens and the Pillow
image processors, so nothing needs ``torchvision`` or a download.

Examples
--------
>>> from embetter_plug.testing._vlm_kinds import BUILDERS
>>> config, processor = BUILDERS["llava"]()
>>> config.vision_config.image_size, processor.image_token
(32, '<image>')
"""

from __future__ import annotations

import functools

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
    """The BPE test tokenizer with named special tokens (``image_token`` ...) and ``extra`` ones."""
    from transformers import PreTrainedTokenizerFast

    from ._tokenizer import make_tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=make_tokenizer("bpe").backend_tokenizer, pad_token="<pad>",
        bos_token="<s>", eos_token="</s>", extra_special_tokens=dict(named or {}),
        padding_side=padding_side, model_max_length=4096,
        model_input_names=["input_ids", "attention_mask"],
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


def vision(kind: str):
    """``(config, image processor)`` of the vision encoder ``kind`` (clip, siglip, vit)."""
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

    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return get_image_processor_class_from_name(cls)(size=square, **kwargs)


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
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'text' %} {{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


CHAMELEON_CODES = 16  # VQ codebook size


def _chameleon_code(i: int) -> str:
    """The vocabulary name of VQ code ``i`` (digits written as letters A-J, as Chameleon's own)."""
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(i)) + "Z"


def _chameleon():
    from transformers import ChameleonConfig, ChameleonProcessor, ChameleonVQVAEConfig
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name

    tok = _tokenizer({"image_token": "<image>", "boi_token": "<racm3:break>", "eoi_token": "<eoss>",
                      "sep_token": "<reserved08706>"},
                     extra=tuple(_chameleon_code(i) for i in range(CHAMELEON_CODES)))
    images = get_image_processor_class_from_name("ChameleonImageProcessorPil")(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    # 3 halvings of 32x32 pixels: 4x4 = 16 codes per image (the real model: 32x32 = 1,024)
    processor = ChameleonProcessor(image_processor=images, tokenizer=tok,
                                   image_seq_length=N_PATCHES)
    # channel counts of the VQ encoder are multiples of 32 (GroupNorm with 32 groups)
    vq = ChameleonVQVAEConfig(embed_dim=8, num_embeddings=CHAMELEON_CODES, latent_channels=8,
                              resolution=IMAGE_SIZE, base_channels=32,
                              channel_multiplier=[1, 1, 1, 1], num_res_blocks=1,
                              attn_resolutions=[])
    config = ChameleonConfig(**_TEXT, **_text_ids(tok), vq_config=vq,
                             vocabulary_map=tok.get_vocab())
    return config, processor


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
        vision_start_token_id=tok.vision_start_token_id,
        vision_end_token_id=tok.vision_end_token_id)
    return config, processor


# kind -> a function returning (config, processor)
BUILDERS = {"llava": _llava, "paligemma": _paligemma, "gemma3": _gemma3,
             "qwen2_vl": functools.partial(_qwen_vl, "2"),
             "qwen2_5_vl": functools.partial(_qwen_vl, "2.5"), "idefics3": _idefics3,
             "llava_next": _llava_next, "chameleon": _chameleon}


__all__ = ["BUILDERS", "vision", "IMAGE_SIZE", "PATCH", "N_PATCHES", "GEMMA3_TOKENS"]
