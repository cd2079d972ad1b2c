"""Attention patterns and metrics against the eager implementation's output_attentions."""

import copy

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.attention.patterns import (attention_metrics, attention_patterns, head_scores,
                                              plot_head_heatmap, summarize_metrics)
from embetter_plug.testing import make_tiny_model

LONG = ("a much longer text that runs past the sliding window of sixteen tokens so that the "
        "window really masks something here")
TEXTS = ["a first text here", "b", LONG, "short one"]
VALUE = {"bert": "encoder.layer.{l}.attention.self.value"}
O_PROJ = {"bert": "encoder.layer.{l}.attention.output.dense"}


def _eager_reference(model, tok, text):
    """(layers, heads, S, S) attentions and per-layer (v, o_proj input) of one unpadded text."""
    family = model.config.model_type
    got = {}
    handles = []
    for l in range(3):
        mods = dict(model.named_modules())
        v = mods[VALUE.get(family, "layers.{l}.self_attn.v_proj").format(l=l)]
        o = mods[O_PROJ.get(family, "layers.{l}.self_attn.o_proj").format(l=l)]
        handles.append(v.register_forward_hook(
            lambda m, a, out, l=l: got.__setitem__(("v", l), out[0])))
        handles.append(o.register_forward_hook(
            lambda m, a, out, l=l: got.__setitem__(("z", l), a[0][0])))
    try:
        with torch.no_grad():
            out = copy.deepcopy(model)(**tok([text], return_tensors="pt"), output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    att = np.stack([a[0].numpy() for a in out.attentions]).astype(np.float64)
    return att, {k: t.numpy().astype(np.float64) for k, t in got.items()}


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "bert", "distilbert", "opt"])
@pytest.mark.parametrize("side,batch_size", [("left", 3), ("right", 1)])
def test_patterns_equal_eager_output_attentions(family, side, batch_size):
    model, tok = make_tiny_model(family, padding_side=side)
    pats = attention_patterns(model, tok, TEXTS, layers="all", batch_size=batch_size)
    reference = copy.deepcopy(model)
    if family == "gemma2":
        assert len(pats[2].tokens) > model.config.sliding_window  # the window masks keys
    for text, pat in zip(TEXTS, pats):
        with torch.no_grad():  # on a copy: transformers leaves capturing hooks behind
            out = reference(**tok([text], return_tensors="pt"), output_attentions=True)
        ref = np.stack([a[0].numpy() for a in out.attentions])
        assert pat.tokens == tok.convert_ids_to_tokens(tok([text])["input_ids"][0])
        assert pat.pattern.shape == ref.shape
        np.testing.assert_allclose(pat.pattern, ref, atol=1e-6)
        np.testing.assert_allclose(pat.pattern.sum(-1), 1.0, atol=1e-5)


def test_patterns_sdpa_model_left_as_it_was():
    model, tok = make_tiny_model("llama", padding_side="left")
    sdpa = copy.deepcopy(model)
    sdpa.set_attn_implementation("sdpa")
    a = attention_patterns(model, tok, TEXTS, layers=[1], heads=[0, 3], batch_size=4)
    b = attention_patterns(sdpa, tok, TEXTS, layers=[1], heads=[0, 3], batch_size=2)
    assert sdpa.config._attn_implementation == "sdpa"
    for x, y in zip(a, b):
        assert x.pattern.shape[:2] == (1, 2)
        np.testing.assert_allclose(x.pattern, y.pattern, atol=1e-6)


def _numpy_metrics(att, vals, layer, n_kv, w_o):
    """Mean over queries of each metric, (heads,) each, from the full pattern and values."""
    p = att[layer]  # (H, S, S)
    H, S, _ = p.shape
    v = vals[("v", layer)].reshape(S, n_kv, -1)
    vnorm = np.linalg.norm(v, axis=-1)[:, np.repeat(np.arange(n_kv), H // n_kv)].T  # (H, S)
    z = vals[("z", layer)].reshape(S, H, -1)
    i, j = np.arange(S)[:, None], np.arange(S)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    cum = np.cumsum(-np.sort(-p, axis=-1), axis=-1)
    dens = np.array([[np.searchsorted(cum[h, q], 0.9) + 1 for q in range(S)] for h in range(H)])
    res = np.stack([np.linalg.norm(z[:, h] @ w_o[h], axis=-1) for h in range(H)])
    return {"attn_entropy": ent, "attn_sink": p[:, :, 0], "attn_distance": (p * abs(i - j)).sum(-1),
            "attn_density": np.minimum(dens, S), "attn_value_norm": vnorm,
            "attn_result_norm": res, "attn_weighted_value_norm": np.einsum("hqk,hk->hq", p, vnorm)}


@pytest.mark.parametrize("family,impl", [("llama", "eager"), ("llama", "sdpa"),
                                         ("gemma2", "eager"), ("bert", "sdpa")])
def test_metrics_equal_numpy_from_full_pattern(family, impl):
    model, tok = make_tiny_model(family, padding_side="left")
    eager = model
    if impl == "sdpa":
        model = copy.deepcopy(model)
        model.set_attn_implementation("sdpa")
    frame = attention_metrics(model, tok, TEXTS, layers=[0, 2], batch_size=3)
    assert model.config._attn_implementation == impl
    _assert_metrics_equal_numpy(frame, eager, tok, family)


def _assert_metrics_equal_numpy(frame, eager, tok, family):
    """Every metric of layers 0 and 2 in ``frame`` equals the NumPy reference of the eager model."""
    from embetter_plug.arch.heads import METRICS

    n_kv = getattr(eager.config, "num_key_value_heads", None) or 4
    for t, text in enumerate(TEXTS):
        att, vals = _eager_reference(eager, tok, text)
        for layer in (0, 2):
            mods = dict(eager.named_modules())
            o = mods[O_PROJ.get(family, "layers.{l}.self_attn.o_proj").format(l=layer)]
            w_o = o.weight.detach().numpy().T.reshape(4, 8, 32).astype(np.float64)
            want = _numpy_metrics(att, vals, layer, n_kv, w_o)
            for m in METRICS:
                got = frame[(frame.text == t) & (frame.layer == layer) & (frame.metric == m)]
                np.testing.assert_allclose(got.sort_values("head")["value"].to_numpy(),
                                           want[m].mean(-1), rtol=1e-4, atol=1e-5, err_msg=m)


@pytest.mark.parametrize("family,impl,side", [("llama", "sdpa", "left"), ("bert", "sdpa", "right"),
                                              ("llama", "eager", "right")])
def test_metrics_in_query_chunks_equal_numpy(family, impl, side, monkeypatch):
    """One query row at a time (as where a layer's pattern does not fit): the same metrics,
    and, under SDPA, a layer output pieced from the rows that later layers read correctly."""
    from embetter_plug.attention import parts as _attn_parts

    monkeypatch.setattr(_attn_parts, "CHUNK_BYTES", 1)
    model, tok = make_tiny_model(family, padding_side=side)
    eager = model
    if impl == "sdpa":
        model = copy.deepcopy(model)
        model.set_attn_implementation("sdpa")
    seen = []
    original = _attn_parts.pattern_metrics
    monkeypatch.setattr(_attn_parts, "pattern_metrics", lambda call, *a, **k: seen.append(
        _attn_parts.query_chunk(call)) or original(call, *a, **k))
    frame = attention_metrics(model, tok, TEXTS, layers=[0, 2], batch_size=2)
    assert set(seen) == {1}
    _assert_metrics_equal_numpy(frame, eager, tok, family)


def test_metrics_flow_through_encoder_and_summary_heatmap(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    model, tok = make_tiny_model("gpt2")
    enc = TransformerActivationEncoder(model, tok, layers=[0, 1], heads=[1, 2],
                                       parts=["attn_entropy", "attn_sink"])
    X = enc.fit_transform(TEXTS)
    assert X.shape == (4, 2, 4, 1)
    assert enc.layout_.parts == ("attn_entropy.h1", "attn_entropy.h2", "attn_sink.h1",
                                 "attn_sink.h2")
    frame = attention_metrics(model, tok, TEXTS, metrics=["attn_entropy"], layers=[0, 1],
                              heads=[1, 2], query_reduction="lasttoken")
    np.testing.assert_allclose(frame["value"].to_numpy().reshape(4, 2, 2), X[:, :, :2, 0])
    table = head_scores(summarize_metrics(frame), "attn_entropy")
    assert table.shape == (2, 2) and list(table.columns) == [1, 2]
    ax = plot_head_heatmap(table, title="entropy")
    assert ax.get_xlabel() == "head"
    pats = attention_patterns(model, tok, ["x < y </script>"], layers=[1])
    assert pats[0].plot(1, 0).get_title() == "layer 1, head 0"
    page = pats[0].to_html(tmp_path / "pattern.html").read_text()
    data = page.split('id="pattern-data">')[1].split("</script>")[0]  # the text cannot end it
    import json

    (view,) = json.loads(data)
    assert view["text"] == "x < y </script>" and view["tokens"] == list(pats[0].tokens)
    np.testing.assert_allclose(view["pattern"], pats[0].pattern, atol=5.1e-5)
    assert page.count("<script>") == 1 and "http" not in page


def _no_forward(model):
    calls = []
    return calls, model.register_forward_pre_hook(lambda *a: calls.append(1))


def test_pattern_errors_before_forward(monkeypatch):
    from embetter_plug.attention import parts as _attn_parts

    model, tok = make_tiny_model("llama")
    flash = copy.deepcopy(model)
    flash.config._attn_implementation = "flash_attention_2"  # never run: refused before
    calls, hook = _no_forward(flash)
    try:
        with pytest.raises(ValueError, match="'flash_attention_2'.*attn_implementation='sdpa'"):
            attention_patterns(flash, tok, TEXTS)
        with pytest.raises(ValueError, match="'flash_attention_2'"):
            TransformerActivationEncoder(flash, tok, parts="attn_entropy").fit_transform(TEXTS)
    finally:
        hook.remove()
    assert calls == [] and flash.config._attn_implementation == "flash_attention_2"

    monkeypatch.setattr(_attn_parts, "free_memory", lambda module: 1000)
    calls, hook = _no_forward(model)
    try:
        with pytest.raises(MemoryError, match="batch_size=1 or less"):
            attention_patterns(model, tok, TEXTS)
        with pytest.raises(MemoryError, match="only 0.00 GiB is free"):
            TransformerActivationEncoder(model, tok, parts="attn_sink",
                                         verify=False).fit_transform(TEXTS)
        # norms need no pattern: no estimate
        TransformerActivationEncoder(model, tok, parts="attn_value_norm",
                                     verify=False).fit_transform(TEXTS)
    finally:
        hook.remove()
    assert len(calls) == 1
    with pytest.raises(ValueError, match="did you mean"):
        attention_metrics(model, tok, TEXTS, metrics=["attn_sinc"])
    assert model.config._attn_implementation == "eager"


def test_metric_parts_through_cache_and_streaming(tmp_path):
    from embetter_plug import load_activations

    model, tok = make_tiny_model("llama")
    kw = dict(parts=["attn_density", "attn_weighted_value_norm"], heads=[0, 3], layers=[1, 2])
    want = TransformerActivationEncoder(model, tok, **kw).fit_transform(TEXTS)
    cached = TransformerActivationEncoder(model, tok, cache=tmp_path / "cache", **kw).fit()
    np.testing.assert_allclose(cached.transform(TEXTS[:2]), want[:2], atol=1e-6)
    np.testing.assert_allclose(cached.transform(TEXTS), want, atol=1e-6)  # 2 read, 2 computed
    streamed = TransformerActivationEncoder(model, tok, batch_size=2, **kw).fit()
    X, layout = load_activations(streamed.extract_to(tmp_path / "stream", TEXTS))
    np.testing.assert_allclose(np.asarray(X), want, atol=1e-6)
    assert layout.parts == ("attn_density.h0", "attn_density.h3", "attn_weighted_value_norm.h0",
                            "attn_weighted_value_norm.h3")


def test_pattern_metrics_need_no_psutil(monkeypatch):
    """A plain install has no psutil: the memory check reads the host itself, and the pattern
    metrics and patterns equal those computed with psutil present."""
    import sys

    import psutil

    from embetter_plug._utils import available_ram

    model, tok = make_tiny_model("llama")
    enc = TransformerActivationEncoder(model, tok, layers=[0, 1], parts=["attn_entropy", "attn_sink"])
    before = enc.fit_transform(TEXTS)
    pattern_before = attention_patterns(model, tok, TEXTS[:1])[0]
    expected = psutil.virtual_memory().available
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    free = available_ram()
    assert free is not None and abs(free - expected) < 0.2 * expected
    np.testing.assert_allclose(enc.fit_transform(TEXTS), before, rtol=1e-6, atol=1e-6)
    after = attention_patterns(model, tok, TEXTS[:1])[0]
    np.testing.assert_allclose(after.pattern, pattern_before.pattern, rtol=1e-6, atol=1e-6)


def test_query_reduction_reduces_over_query_tokens_and_token_pooling_is_its_old_name():
    model, tok = make_tiny_model("llama")
    frame = attention_metrics(model, tok, TEXTS, metrics=["attn_entropy", "attn_sink"],
                              layers=[2], query_reduction="max")
    for t, text in enumerate(TEXTS):
        att, _ = _eager_reference(model, tok, text)
        p = att[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)  # (heads, queries)
        for m, per_query in (("attn_entropy", entropy), ("attn_sink", p[:, :, 0])):
            got = frame[(frame.text == t) & (frame.metric == m)].sort_values("head")["value"]
            np.testing.assert_allclose(got.to_numpy(), per_query.max(-1), rtol=1e-4, atol=1e-5)
    with pytest.warns(FutureWarning, match=r"`token_pooling` was renamed `query_reduction`.*"
                                           r"query_reduction='max'"):
        old = attention_metrics(model, tok, TEXTS, metrics=["attn_entropy", "attn_sink"],
                                layers=[2], token_pooling="max")
    pd_testing = pytest.importorskip("pandas").testing
    pd_testing.assert_frame_equal(old, frame)
