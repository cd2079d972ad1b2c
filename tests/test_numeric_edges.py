"""Edges where numbers went wrong without a word: mean pooling under autocast, cache entries of
parts with different widths, position tables shorter than the tokenizer's limit."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.testing import make_tiny_model, make_tokenizer

TEXTS = ["the film was great", "a plot that made no sense", "short"]


def test_mean_pooling_under_autocast_is_float32_and_exact():
    from embetter_plug.extraction.token_pooling import make_pooler

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=gen) * 10 + 3
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0] * 2 + [1] * 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = make_pooler(mask, ["mean", "max"])(hidden)
    assert out.dtype == torch.float32
    h, m = hidden.double().numpy(), mask.numpy().astype(bool)
    want = np.stack([h[b][m[b]].mean(0) for b in range(3)])
    np.testing.assert_allclose(out[:, 0].numpy(), want, rtol=1e-6, atol=1e-6)


def test_states_longer_than_the_batch_are_refused_not_pooled():
    """A model that pads inside its forward (to a multiple of a chunk) hands back more
    positions than the batch has tokens: a clear error, never a mask laid over the wrong rows."""
    from embetter_plug.extraction.token_pooling import make_pooler

    mask = torch.ones(2, 5, dtype=torch.long)
    pool = make_pooler(mask, ["mean", "lasttoken"])
    assert pool(torch.ones(2, 5, 4)).shape == (2, 2, 4)
    with pytest.raises(ValueError, match=r"states for 8 positions where the batch has 5 tokens"):
        pool(torch.ones(2, 8, 4))


def test_parts_of_different_widths_share_a_cache_entry(tmp_path, monkeypatch):
    from embetter_plug.extraction.extractor import ActivationExtractor

    model, tok = make_tiny_model("llama")
    resid = TransformerActivationEncoder(model, tok, cache=tmp_path).fit()
    heads = TransformerActivationEncoder(model, tok, parts="attn_z", cache=tmp_path).fit()
    assert resid.layout_.hidden_size != heads.layout_.hidden_size
    want_r = TransformerActivationEncoder(model, tok).fit().transform(TEXTS)
    want_z = TransformerActivationEncoder(model, tok, parts="attn_z").fit().transform(TEXTS)
    resid.transform(TEXTS)
    heads.transform(TEXTS)  # adds the head vectors to the same entries
    computed = []
    original = ActivationExtractor.extract

    def counted(self, texts, on_batch=None):
        computed.extend(texts)
        return original(self, texts, on_batch=on_batch)

    monkeypatch.setattr(ActivationExtractor, "extract", counted)
    np.testing.assert_allclose(resid.transform(TEXTS), want_r, atol=1e-6)
    np.testing.assert_allclose(heads.transform(TEXTS), want_z, atol=1e-6)
    assert computed == []  # both read from disk: neither evicted the other


def _roberta_with_an_unlimited_tokenizer():
    model, tok = make_tiny_model("roberta")
    tok = copy.deepcopy(tok)
    tok.model_max_length = int(1e30)  # "no limit", as many tokenizers say
    return model, tok


def test_max_length_never_exceeds_robertas_position_table():
    model, tok = _roberta_with_an_unlimited_tokenizer()
    table = model.embeddings.position_embeddings.num_embeddings
    limit = table - model.config.pad_token_id - 1  # positions start at padding_idx + 1
    text = " ".join(["the film was great and the plot made no sense"] * 80)
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert len(ids) > table  # the premise: the text is longer than the table
    enc = TransformerActivationEncoder(model, tok, layers=[0], token_pooling="mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X = enc.fit_transform([text])
    assert enc.max_length_ == limit
    cut = tok(text, truncation=True, max_length=limit, return_tensors="pt")
    with torch.no_grad():
        h = model(**cut, output_hidden_states=True).hidden_states[1][0].numpy()
    np.testing.assert_allclose(X[0, 0, 0], h.mean(0), rtol=1e-4, atol=1e-5)
    with pytest.warns(UserWarning, match=rf"max_length=600 is above the model's limit of "
                                         rf"{limit} tokens"):
        assert TransformerActivationEncoder(model, tok, max_length=600).fit().max_length_ == limit


def test_attention_patterns_cut_texts_by_the_encoders_rule():
    """A model whose position table (64) is shorter than its tokenizer's limit (512)."""
    from transformers import GPT2Config, GPT2Model

    from embetter_plug.attention.patterns import attention_patterns

    tok = make_tokenizer("bpe")
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4,
                                 n_positions=64, pad_token_id=0)).eval()
    text = " ".join(["the film was great and the plot made no sense"] * 20)
    assert len(tok(text)["input_ids"]) > 64
    enc = TransformerActivationEncoder(model, tok).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (pat,) = attention_patterns(model, tok, [text], layers=[1])
    assert len(pat.tokens) == enc.max_length_ == 64
    ids = torch.tensor([tok.convert_tokens_to_ids(pat.tokens)])
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"
    with torch.no_grad():
        att = eager(ids, output_attentions=True).attentions[1][0].numpy()
    np.testing.assert_allclose(pat.pattern[0], att, atol=1e-5)
