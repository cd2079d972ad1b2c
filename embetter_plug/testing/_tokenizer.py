"""The tokenizers of the tiny models: trained in a second on the built-in example texts.

Apart from :mod:`embetter_plug.testing` so that the vision-language fixtures can use them too.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def _corpus() -> tuple[str, ...]:
    from ..datasets import load_builtin_dataset

    return tuple(load_builtin_dataset()["text"])


@functools.lru_cache(maxsize=None)
def _backend(kind: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers, decoders

    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<end_of_turn>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(_corpus(), trainer)
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
            show_progress=False,
        )
        tok.train_from_iterator(_corpus(), trainer)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
    return tok


def make_tokenizer(kind: str = "bpe", padding_side: str = "right"):
    """A fresh ``PreTrainedTokenizerFast``: ``"bpe"`` (decoder style) or ``"wordpiece"`` (BERT style)."""
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        special = dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    else:
        special = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                       sep_token="[SEP]", mask_token="[MASK]")
    # no token_type_ids (the default of transformers 5; 4.x would return them, and GPT-2 adds an
    # embedding of them), so the inputs are the same on every supported version
    return PreTrainedTokenizerFast(
        tokenizer_object=_backend(kind), padding_side=padding_side, model_max_length=512,
        model_input_names=["input_ids", "attention_mask"], **special
    )
