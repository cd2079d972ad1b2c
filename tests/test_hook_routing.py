"""Hooks reach only the capture that asked for them: another thread's capture on the same model
(mid-forward, its hooks live) never receives what it did not ask for, and a module that runs
twice per forward is an error even when it is the deepest one asked."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.attention.patterns import attention_patterns
from embetter_plug.testing import make_tiny_model, make_tokenizer

TEXTS = ["the film was great and long", "a plot", "short one here", "and more words to read"]


def _while_paused(model, pause_at, first, second):
    """Run ``first()`` in a thread that stops inside its forward (at ``pause_at``'s output, its
    hooks attached) until ``second()`` has run to the end in this thread; return both results."""
    paused, resume = threading.Event(), threading.Event()
    worker = threading.current_thread()
    out: dict = {}

    def hold(module, args, output):
        if threading.current_thread() is not worker and not resume.is_set():
            paused.set()
            assert resume.wait(60)

    def run_first():
        try:
            out["first"] = first()
        except Exception as exc:  # noqa: BLE001  (reported by the test)
            out["first"] = exc
        finally:
            paused.set()

    handle = pause_at.register_forward_hook(hold)
    t = threading.Thread(target=run_first)
    try:
        t.start()
        assert paused.wait(60)
        try:
            out["second"] = second()
        finally:
            resume.set()
            t.join(60)
    finally:
        handle.remove()
    for v in out.values():
        if isinstance(v, Exception):
            raise v
    return out["first"], out["second"]


@pytest.mark.parametrize("repeat", range(3))
def test_attention_patterns_while_another_thread_transforms_the_same_model(repeat):
    model, tok = make_tiny_model("llama")
    enc = TransformerActivationEncoder(model, tok, layers=[2], batch_size=2).fit()
    want_x = enc.transform(TEXTS)
    want_p = attention_patterns(model, tok, TEXTS, layers=[1])
    x, pats = _while_paused(model, model.layers[1], lambda: enc.transform(TEXTS),
                            lambda: attention_patterns(model, tok, TEXTS, layers=[1]))
    np.testing.assert_allclose(x, want_x, atol=1e-6)
    for got, want in zip(pats, want_p):
        np.testing.assert_allclose(got.pattern, want.pattern, atol=1e-6)


@pytest.mark.parametrize("repeat", range(3))
def test_threads_reading_different_layers_of_a_reused_albert_block(repeat):
    from transformers import AlbertConfig, AutoModel

    tok = make_tokenizer("bpe")
    cfg = AlbertConfig(vocab_size=len(tok), embedding_size=16, hidden_size=32,
                       num_hidden_layers=6, num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    model = AutoModel.from_config(cfg).eval()
    first = TransformerActivationEncoder(model, tok, layers=[0], batch_size=2).fit()
    second = TransformerActivationEncoder(model, tok, layers=[4], parts="mlp_out",
                                          batch_size=2).fit()
    want = first.transform(TEXTS), second.transform(TEXTS)
    got = _while_paused(model, model.embeddings, lambda: first.transform(TEXTS),
                        lambda: second.transform(TEXTS))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-6)


@pytest.mark.parametrize("layers", [[2], [1], [-1]])
def test_a_module_that_runs_twice_is_an_error_when_it_is_the_deepest_asked(layers):
    """Phi's resid_dropout runs on the attention branch, then on the MLP branch, of each block;
    the forward stops only once the block holding it has ended, so the second call is seen."""
    model, tok = make_tiny_model("phi")
    calls = []
    handle = model.layers[-1].resid_dropout.register_forward_hook(lambda *a: calls.append(1))
    try:
        model(**tok(["a b c"], return_tensors="pt"))
    finally:
        handle.remove()
    assert len(calls) == 2  # the premise: it runs twice per forward
    twice = r"module 'layers\.\d\.resid_dropout' .* ran 2 times in one forward pass"
    with pytest.raises(RuntimeError, match=twice):  # the check at fit runs the reading
        TransformerActivationEncoder(model, tok, layers=layers,
                                     parts="layers.{layer}.resid_dropout").fit()
    enc = TransformerActivationEncoder(model, tok, layers=layers, verify=False,
                                       parts="layers.{layer}.resid_dropout").fit()
    with pytest.raises(RuntimeError, match=twice):
        enc.transform(TEXTS)


def test_the_forward_still_stops_after_the_block_holding_the_deepest_module():
    model, tok = make_tiny_model("llama")
    ran = []
    handle = model.layers[2].register_forward_hook(lambda *a: ran.append(1))
    try:
        X = TransformerActivationEncoder(model, tok, layers=[1], parts="mlp_out",
                                         verify=False).fit().transform(TEXTS)  # transform's
    finally:
        handle.remove()
    assert ran == []  # block 2 never ran
    ids = tok(TEXTS[0], return_tensors="pt")
    seen = []
    h = model.layers[1].mlp.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        with torch.no_grad():
            model(**ids)
    finally:
        h.remove()
    np.testing.assert_allclose(X[0, 0, 0], seen[0][0, -1].numpy(), atol=1e-5)  # lasttoken


def test_the_loop_body_of_iter_batches_runs_outside_inference_mode_autocast_and_eval_mode():
    """A training step between batches works; the batches are computed in eval mode, under
    inference mode and autocast, each with the weights as they are when it runs."""
    import copy

    from embetter_plug.extraction.extractor import ActivationExtractor

    model, tok = make_tiny_model("gpt2")
    model = copy.deepcopy(model)
    ext = ActivationExtractor(model, tok, layers=[2], parts=["resid_post"], poolings=["mean"],
                              max_length=32, batch_size=2, autocast_dtype=torch.bfloat16)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for idx, acts in ext.iter_batches(TEXTS):
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
        assert not torch.is_autocast_enabled("cpu")
        assert model.training and model.h[0].attn.training  # the caller's mode
        # the batch equals a forward of the model as it is now, in eval mode under autocast
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            want = ext.extract([TEXTS[i] for i in idx])
        model.train()
        np.testing.assert_array_equal(acts, want)
        seen.append(acts.copy())
        ids = tok(TEXTS[:2], return_tensors="pt", padding=True)
        loss = model(**ids).last_hidden_state.float().pow(2).mean()
        loss.backward()  # raises inside inference mode
        opt.step()
        opt.zero_grad()
    assert len(seen) == 2
