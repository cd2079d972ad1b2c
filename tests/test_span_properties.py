"""Property-based tests of the text-span and pooling arithmetic: random templates (with and
without a prefix or a suffix), texts, ``max_length``, padding sides, ``include_prompt`` and
poolings, checked against a forward of each text alone with ``output_hidden_states``.

The tokenizer is word-level (one token per word, ``<s> ... </s>`` around), so the truth is
plain arithmetic on words: a text longer than ``max_length`` keeps its first words, the
template stays whole, and the text's own tokens are the words between prefix and suffix.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from embetter_plug import TransformerActivationEncoder  # noqa: E402
from embetter_plug.testing import make_tiny_model  # noqa: E402

WORDS = ("the film was great plot made no sense at all a long slow story with fine acting "
         "question answer please rate it").split()
TEMPLATE_WORDS = ["Q:", "A:", "Review:", "Rating:", "<end>", "Text:"]
SPECIALS = ["<pad>", "<s>", "</s>"]
POOLINGS = ["mean", "max", "min", "lasttoken", "first"]


@functools.lru_cache(maxsize=None)
def word_tokenizer(side: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS + TEMPLATE_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side=side,
                                   model_max_length=512, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", model_input_names=["input_ids",
                                                                        "attention_mask"])


@functools.lru_cache(maxsize=None)
def model_of(family: str):
    return make_tiny_model(family)[0]


def truth(model, tok, text, prefix, suffix, max_length, pooling, include_prompt, layer):
    """Pooled hidden state of one text run alone, by word arithmetic."""
    p, s = prefix.split(), suffix.split()
    budget = max_length - 2 - len(p) - len(s)
    kept = text.split()[:budget]
    ids = tok(" ".join(p + kept + s), return_tensors="pt")
    assert ids["input_ids"].shape[1] == 2 + len(p) + len(kept) + len(s)
    with torch.no_grad():
        h = model(**ids, output_hidden_states=True).hidden_states[layer + 1][0].numpy()
    if pooling == "lasttoken":
        return h[-1]
    if pooling == "first":
        return h[0]
    rows = h[1 + len(p):1 + len(p) + len(kept)] if not include_prompt else h
    return getattr(rows, pooling)(0)


texts_st = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12)
                    .map(" ".join), min_size=1, max_size=4)
template_st = st.tuples(st.lists(st.sampled_from(TEMPLATE_WORDS), max_size=2),
                        st.lists(st.sampled_from(TEMPLATE_WORDS), max_size=2))


@settings(deadline=None, max_examples=20, derandomize=True)
@given(texts=texts_st, template=template_st, extra=st.integers(1, 12),
       family=st.sampled_from(["llama", "bert"]), side=st.sampled_from(["left", "right"]),
       include_prompt=st.booleans(), pooling=st.sampled_from(POOLINGS),
       batch_size=st.integers(1, 3))
def test_pooled_vectors_equal_each_text_run_alone(texts, template, extra, family, side,
                                                  include_prompt, pooling, batch_size):
    pre, post = template
    prefix = " ".join(pre) + " " if pre else ""
    suffix = " " + " ".join(post) if post else ""
    max_length = 2 + len(pre) + len(post) + extra  # room for at least one word of text
    model, tok = model_of(family), word_tokenizer(side)
    enc = TransformerActivationEncoder(model, tok, layers=[0, 1], token_pooling=pooling,
                                       prompt_template=prefix + "{text}" + suffix,
                                       include_prompt=include_prompt, max_length=max_length,
                                       batch_size=batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation is the point here
        X = enc.fit_transform(texts)
    for i, text in enumerate(texts):
        for li, layer in enumerate([0, 1]):
            want = truth(model, tok, text, prefix, suffix, max_length, pooling, include_prompt,
                         layer)
            np.testing.assert_allclose(X[i, li, 0], want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"text {i} {text!r}, layer {layer}")


def test_a_truncated_text_with_a_suffix_pools_its_own_words_only():
    """The case that was wrong: the span end came from the uncut text, so the pooled vector
    was the mean over the kept words and the suffix."""
    model, tok = model_of("llama"), word_tokenizer("right")
    text = "the film was great plot made no sense at all"
    enc = TransformerActivationEncoder(model, tok, layers=[0], token_pooling="mean",
                                       prompt_template="Review: {text} Rating: <end>",
                                       include_prompt=False, max_length=8).fit()
    X = enc.transform([text])
    want = truth(model, tok, text, "Review: ", " Rating: <end>", 8, "mean", False, 0)
    np.testing.assert_allclose(X[0, 0, 0], want, rtol=1e-4, atol=1e-5)
