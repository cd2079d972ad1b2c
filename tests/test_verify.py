"""The check at fit on the user's own model (``verify=True``, embetter_plug.arch.verify).

Each test builds a model that discovery reads wrong, or whose forward cannot be read in batches,
and checks that ``fit`` refuses it with a message naming the model, the part, the layer and the
error size; where the reading is right, the numbers are checked against the model's own
``hidden_states`` (or the attention call's own tensors).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.arch import blocks as _arch, verify as _verify
from embetter_plug.arch.verify import VerificationError
from embetter_plug.testing import make_tiny_model, make_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["The cat sat on the mat.", "A new dataset of images", "short",
         "Models read text one token at a time, left to right."]


def _hidden_states(model, tok, text):
    with torch.no_grad():
        out = _arch.runner(model)(input_ids=torch.tensor([tok(text)["input_ids"]]),
                                  output_hidden_states=True)
    return [h[0].float().numpy() for h in out.hidden_states]


def _xlm():
    from transformers import AutoModel, XLMConfig

    cfg = XLMConfig(vocab_size=512, emb_dim=32, n_layers=3, n_heads=4, pad_index=0,
                    max_position_embeddings=512)
    torch.manual_seed(0)
    return AutoModel.from_config(cfg).eval()


def test_xlm_is_read_by_its_per_layer_lists():
    """XLM has no block modules: four lists of the layer count sit at its root. Each layer's
    output is its second norm's, not its attention's."""
    model, tok = _xlm(), make_tokenizer("bpe")
    X = TransformerActivationEncoder(model, tok, parts=["resid_pre", "resid_post"],
                                     token_pooling="mean").fit_transform(TEXTS)
    for i, text in enumerate(TEXTS):
        hs = _hidden_states(model, tok, text)
        for layer in range(3):
            np.testing.assert_allclose(X[i, layer, 0], hs[layer].mean(0), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(X[i, layer, 1], hs[layer + 1].mean(0), rtol=1e-4,
                                       atol=1e-4)


def test_a_wrong_block_reading_is_refused_at_fit(monkeypatch):
    """Discovery as it was (the ``attentions`` list taken for the blocks): the check at fit
    refuses it, naming the model, the part, the layer and the error; without the check the
    numbers are wrong."""
    model, tok = _xlm(), make_tokenizer("bpe")
    monkeypatch.setattr(_arch, "_unrolled_lists", lambda exact, order: None)
    assert _arch.find_blocks(model)[0] == "attentions"
    with pytest.raises(VerificationError, match=r"XLMModel \(model_type='xlm'\): part "
                                                r"'resid_(pre|post)' at layer \d .* by [\d.e+-]+ "
                                                r"\(relative max error\).*module paths"):
        TransformerActivationEncoder(model, tok).fit()
    X = TransformerActivationEncoder(model, tok, token_pooling="mean",
                                     verify=False).fit_transform(TEXTS[:1])
    hs = _hidden_states(model, tok, TEXTS[0])
    assert np.abs(X[0, 0, 0] - hs[1].mean(0)).max() > 1e-2  # what the check refused is wrong


def _fnet():
    from transformers import AutoModel, FNetConfig

    cfg = FNetConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                     max_position_embeddings=512, pad_token_id=0)
    torch.manual_seed(0)
    return AutoModel.from_config(cfg).eval()


def test_a_model_whose_numbers_depend_on_the_padding_is_refused_in_batches():
    """FNet mixes tokens by a Fourier transform over the padded length: a padded batch gives
    other numbers than each text alone. Refused at fit in batches; read exactly with
    batch_size=1, where nothing is padded."""
    model, tok = _fnet(), make_tokenizer("bpe")
    with pytest.raises(VerificationError, match=r"FNetModel .*part 'resid_post' at layer 0 of "
                                                r"a text in a padded batch differs .* by "
                                                r"[\d.e+-]+ .*batch_size=1"):
        TransformerActivationEncoder(model, tok, token_pooling="mean", batch_size=4).fit()
    X = TransformerActivationEncoder(model, tok, token_pooling="mean",
                                     batch_size=1).fit_transform(TEXTS)
    for i, text in enumerate(TEXTS):
        hs = _hidden_states(model, tok, text)
        np.testing.assert_allclose(X[i, 0, 0], hs[1].mean(0), rtol=1e-4, atol=1e-4)
    # what the check refused is wrong: the same texts in one padded batch
    Y = TransformerActivationEncoder(model, tok, token_pooling="mean", batch_size=4,
                                     verify=False).fit_transform(TEXTS)
    assert np.abs(Y - X).max() > 1e-2


def test_a_forward_that_fails_inside_the_model_is_the_encoders_error_at_fit(monkeypatch):
    model, tok = make_tiny_model("llama")
    block = model.layers[1]

    def broken(*args, **kwargs):
        raise RuntimeError("The size of tensor a (4) must match the size of tensor b (8)")

    monkeypatch.setattr(block, "forward", broken)
    with pytest.raises(VerificationError, match=r"LlamaModel \(model_type='llama'\): the "
                                                r"model's own forward fails .*RuntimeError: The "
                                                r"size of tensor a.*module paths"):
        TransformerActivationEncoder(model, tok).fit()


def test_verify_is_a_parameter_validated_in_fit_and_off_means_no_forward(tiny_gpt2):
    model, tok = tiny_gpt2
    calls = []
    handle = _arch.runner(model).register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        enc = TransformerActivationEncoder(model, tok, verify="yes")
        assert enc.get_params()["verify"] == "yes"  # stored verbatim
        with pytest.raises(TypeError, match=r"'verify' parameter of TransformerActivationEncoder must "
                                            r"be an instance of 'bool' or an instance of "
                                            r"'numpy.bool'\. Got 'yes' instead"):
            enc.fit()
        assert calls == []
        TransformerActivationEncoder(model, tok, verify=False).fit()
        assert calls == []
        TransformerActivationEncoder(model, tok, batch_size=1).fit()
        assert len(calls) == 1  # one short forward
        TransformerActivationEncoder(model, tok).fit()
        assert len(calls) == 1 + 2  # with batches: the text padded beside a longer one too
    finally:
        handle.remove()


def test_a_model_without_hidden_states_is_checked_as_far_as_it_can_be_and_says_so_once(
        monkeypatch, caplog):
    model, tok = make_tiny_model("llama")
    run = _arch.runner(model)
    original = run.forward

    def no_hidden_states(*args, **kwargs):
        kwargs["output_hidden_states"] = False
        return original(*args, **kwargs)

    monkeypatch.setattr(run, "forward", no_hidden_states)
    monkeypatch.setattr(_verify, "_SAID", set())
    with caplog.at_level(logging.WARNING, logger="embetter_plug"):
        X = TransformerActivationEncoder(model, tok, parts=["resid_post"]).fit_transform(TEXTS)
        TransformerActivationEncoder(model, tok, parts=["resid_post"]).fit()
    said = [r for r in caplog.records if "returns no hidden states" in r.getMessage()]
    assert len(said) == 1 and "LlamaModel" in said[0].getMessage()
    monkeypatch.setattr(run, "forward", original)
    hs = _hidden_states(model, tok, TEXTS[0])
    np.testing.assert_allclose(X[0, 0, 0], hs[1][-1], rtol=1e-4, atol=1e-4)
    # as far as it can be: blocks that do not follow each other are still refused
    monkeypatch.setattr(run, "forward", no_hidden_states)
    monkeypatch.setattr(_arch, "resolve_targets", _swap_last_two_blocks(_arch.resolve_targets))
    with pytest.raises(VerificationError, match=r"'resid_pre' at layer \d .*the output of block"):
        TransformerActivationEncoder(model, tok, parts=["resid_post"]).fit()


def _swap_last_two_blocks(resolve):
    def swapped(model, layers, parts):
        targets = list(resolve(model, layers, parts))
        blocks = _arch.find_blocks(model)[1]
        first, second = blocks[-2], blocks[-1]
        out = []
        for t in targets:
            module = second if t[0] is first else first if t[0] is second else t[0]
            out.append((module, *t[1:]))
        return out

    return swapped


def test_gpt2_keeps_its_upcast_attention_while_tapped():
    """GPT-2 with ``reorder_and_upcast_attn=True`` computes its attention scores in float32 (its
    own ``_upcast_and_reordered_attn``), but only when the implementation is named "eager":
    reading q/k/v through the tap must keep that path. Truth: the untapped model's own query
    projection of block 1 (fed by block 0's attention) in bfloat16."""
    from transformers import GPT2Config, GPT2Model

    cfg = GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                     reorder_and_upcast_attn=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = GPT2Model._from_config(cfg, attn_implementation="eager",
                                   dtype=torch.bfloat16).eval()
    with torch.no_grad():  # sharper attention, so bfloat16 scores differ visibly
        for block in model.h:
            block.attn.c_attn.weight.mul_(8)
    tok = make_tokenizer("bpe")
    texts = ["The cat sat on the mat and looked at the dog", "short"]
    X = TransformerActivationEncoder(model, tok, parts=["attn_q"], layers=[1],
                                     token_pooling="mean").fit_transform(texts)
    for i, text in enumerate(texts):
        seen = {}
        handle = model.h[1].attn.c_attn.register_forward_hook(
            lambda m, a, o: seen.setdefault("qkv", o))
        with torch.no_grad():
            model(input_ids=torch.tensor([tok(text)["input_ids"]]))
        handle.remove()
        q = seen["qkv"][0, :, :64].float().reshape(-1, 4, 16).mean(0).numpy()
        np.testing.assert_allclose(X[i, 0], q, rtol=1e-4, atol=1e-4)


def test_attention_is_found_at_run_time_when_its_forward_is_wrapped(monkeypatch):
    """A forward replaced by a plain wrapper calling the original (as a fused-kernel patch or a
    compile wrapper does) hides the attention call from the source text; the call seen at run
    time still finds the module, and every per-head part matches the attention's own tensors
    (the truth of the any-architecture test, ``_heads_truth.check_heads``)."""
    from _heads_truth import check_heads
    from transformers.models.llama import modeling_llama

    model, tok = make_tiny_model("llama", seed=11)  # a model no check has observed yet
    original = modeling_llama.LlamaAttention.forward

    def wrapped(self, *args, **kwargs):
        return original(self, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", wrapped)
    with pytest.raises(ValueError, match="own code|attention function"):  # from source alone
        TransformerActivationEncoder(model, tok, parts="attn_q", verify=False).fit()
    assert check_heads(model, [TEXTS[3], TEXTS[2]]) == "passed"


def test_verify_extractor_checks_a_runner_of_its_own():
    from embetter_plug.extraction.extractor import ActivationExtractor

    model, tok = _fnet(), make_tokenizer("bpe")
    ext = ActivationExtractor(model, tok, layers=[0, 1], parts=["resid_post"],
                              poolings=["mean"], max_length=64, batch_size=4)
    with pytest.raises(VerificationError, match="padded batch"):
        ext.verify()
    ActivationExtractor(model, tok, layers=[0, 1], parts=["resid_post"], poolings=["mean"],
                        max_length=64, batch_size=1).verify()


def test_the_check_leaves_the_model_as_it_was():
    """The check's forward asks for hidden states, on which transformers installs hooks for
    good; the model comes back without them (and still pickles)."""
    import pickle

    model, tok = make_tiny_model("llama", seed=12)
    before = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    TransformerActivationEncoder(model, tok, parts=["resid_post", "attn_out"]).fit()
    TransformerActivationEncoder(model, tok, parts="attn_q").fit()
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()] == before
    assert model.config._attn_implementation == "eager"
    pickle.loads(pickle.dumps(model))
