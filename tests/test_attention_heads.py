"""Per-head attention parts against a manual forward of each text alone (no padding)."""

import copy

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.testing import FAMILIES, make_tiny_model

TEXTS = ["a first text here", "b", "a second, longer text with more words in it than the others",
         "short one"]
# output projections by their known paths (not by the package's discovery)
O_PROJ = {"gpt2": "h.{l}.attn.c_proj", "gpt_neox": "layers.{l}.attention.dense",
          "phi": "layers.{l}.self_attn.dense", "opt": "decoder.layers.{l}.self_attn.out_proj",
          "bert": "encoder.layer.{l}.attention.output.dense",
          "roberta": "encoder.layer.{l}.attention.output.dense",
          "distilbert": "transformer.layer.{l}.attention.out_lin"}
LAYERS = [0, 2]


def _o_proj(model, family, layer):
    path = O_PROJ.get(family, "layers.{l}.self_attn.o_proj").format(l=layer)
    return dict(model.named_modules())[path]


def _reference(model, tok, family, texts, layers):
    """Per text (alone, unpadded): o_proj input and output per layer, (tokens, width)."""
    out = []
    for text in texts:
        got = {}
        handles = []
        for layer in layers:
            proj = _o_proj(model, family, layer)
            handles.append(proj.register_forward_hook(
                lambda m, a, o, layer=layer: got.__setitem__(layer, (a[0][0], o[0]))))
        try:
            with torch.no_grad():
                model(**tok([text], return_tensors="pt"))
        finally:
            for h in handles:
                h.remove()
        out.append(got)
    return out


def _pool(x, pooling):
    return x.mean(0) if pooling == "mean" else x[-1]


NAMED = ("gpt2", "gpt_neox", "llama", "gemma2", "bert", "phi")  # both paddings
CASES = [(f, "left", 3) for f in NAMED] + [(f, "right", 2) for f in FAMILIES]


@pytest.mark.parametrize("family,side,batch_size", CASES)
def test_attn_z_and_result_match_output_projection(family, side, batch_size):
    model, tok = make_tiny_model(family, padding_side=side)
    poolings = ["mean", "lasttoken"]
    z = TransformerActivationEncoder(model, tok, layers=LAYERS, parts="attn_z", heads="all",
                                     token_pooling=poolings, batch_size=batch_size)
    res = TransformerActivationEncoder(model, tok, layers=LAYERS, parts=["attn_result"],
                                       token_pooling=poolings, batch_size=batch_size)
    Z, R = z.fit_transform(TEXTS), res.fit_transform(TEXTS)
    n_heads = model.config.num_attention_heads
    d_head = 32 // n_heads
    assert Z.shape == (len(TEXTS), 2, n_heads * 2, d_head)
    assert R.shape == (len(TEXTS), 2, n_heads * 2, 32)
    assert z.layout_.parts[:3] == ("attn_z.h0@mean", "attn_z.h0@lasttoken", "attn_z.h1@mean")
    assert z.layout_.meta["attention"]["n_heads"] == n_heads
    ref = _reference(model, tok, family, TEXTS, LAYERS)
    for i, per_layer in enumerate(ref):
        for li, layer in enumerate(LAYERS):
            z_in, proj_out = (t.numpy() for t in per_layer[layer])
            bias = _o_proj(model, family, layer).bias
            bias = 0.0 if bias is None else bias.detach().numpy()
            for k, pooling in enumerate(poolings):
                want_z = _pool(z_in, pooling).reshape(n_heads, d_head)
                np.testing.assert_allclose(Z[i, li, k::2], want_z, atol=1e-5, rtol=1e-4)
                heads_sum = R[i, li, k::2].sum(0) + bias
                np.testing.assert_allclose(heads_sum, _pool(proj_out, pooling), atol=1e-5,
                                           rtol=1e-4)


def _qkv_reference(model, text, layer):
    """Llama: q (after rotary), k (after rotary), v per head from q/k/v_proj and rotary."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = model.layers[layer].self_attn
    got = {}
    h1 = attn.register_forward_pre_hook(
        lambda m, a, kw: got.update(x=kw["hidden_states"], pe=kw["position_embeddings"]),
        with_kwargs=True)
    try:
        with torch.no_grad():
            model(**make_tiny_model("llama")[1]([text], return_tensors="pt"))
    finally:
        h1.remove()
    x, (cos, sin) = got["x"], got["pe"]
    with torch.no_grad():
        q = attn.q_proj(x).view(1, -1, 4, 8).transpose(1, 2)
        k = attn.k_proj(x).view(1, -1, 2, 8).transpose(1, 2)
        v = attn.v_proj(x).view(1, -1, 2, 8).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q[0].numpy(), k[0].numpy(), v[0].numpy()  # (heads, S, d)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_qkv_per_head_gqa(side, impl):
    model, tok = make_tiny_model("llama", padding_side=side)
    if impl == "sdpa":
        model = copy.deepcopy(model)
        model.set_attn_implementation("sdpa")
    out = {}
    for part, heads in [("attn_q", "all"), ("attn_k", "all"), ("attn_v", [1])]:
        enc = TransformerActivationEncoder(model, tok, layers=[1], parts=part, heads=heads,
                                           token_pooling="mean", batch_size=3)
        out[part] = enc.fit_transform(TEXTS)
    assert out["attn_q"].shape[2] == 4 and out["attn_k"].shape[2] == 2  # GQA: 2 kv heads
    assert model.config._attn_implementation == impl  # left as it was
    for i, text in enumerate(TEXTS):
        q, k, v = _qkv_reference(model, text, 1)
        np.testing.assert_allclose(out["attn_q"][i, 0], q.mean(1), atol=1e-5)
        np.testing.assert_allclose(out["attn_k"][i, 0], k.mean(1), atol=1e-5)
        np.testing.assert_allclose(out["attn_v"][i, 0, 0], v[1].mean(0), atol=1e-5)


def test_result_with_max_pooling_projects_each_head():
    model, tok = make_tiny_model("gpt2")
    enc = TransformerActivationEncoder(model, tok, layers=[1], parts="attn_result", heads=[2],
                                       token_pooling="max")
    X = enc.fit_transform(TEXTS[:2])
    w = model.h[1].attn.c_proj.weight.detach().numpy()  # Conv1D: (in, out)
    for i, per_layer in enumerate(_reference(model, tok, "gpt2", TEXTS[:2], [1])):
        z = per_layer[1][0].numpy()
        np.testing.assert_allclose(X[i, 0, 0], (z[:, 16:24] @ w[16:24]).max(0), atol=1e-5)


def test_tl_aliases_and_probe_per_head():
    from embetter_plug import LayerPooler, probe_layers

    model, tok = make_tiny_model("gpt2")
    a = TransformerActivationEncoder(model, tok, layers=[0], parts="blocks.{l}.attn.hook_z",
                                     heads=[0, 3]).fit_transform(TEXTS)
    b = TransformerActivationEncoder(model, tok, layers=[0], parts="attn_z",
                                     heads=[0, -1]).fit_transform(TEXTS)
    np.testing.assert_array_equal(a, b)
    enc = TransformerActivationEncoder(model, tok, layers=[0, 1], parts="attn_result", heads=[0, 1])
    texts = TEXTS * 4
    X = enc.fit_transform(texts)
    y = np.arange(len(texts)) % 2
    res = probe_layers(X, y, cv=2, dummy=False)
    assert set(res.frame_["part"]) == {"attn_result.h0", "attn_result.h1"}
    pooled = LayerPooler(layers=[1], parts=["attn_result.h1"]).fit_transform(X)
    np.testing.assert_array_equal(pooled, np.asarray(X)[:, 1, 1])
    every = LayerPooler(layers=[0], parts="attn_result").fit_transform(X)  # every head
    np.testing.assert_array_equal(every, np.asarray(X)[:, 0].reshape(len(texts), -1))


def test_bad_input_before_forward():
    model, tok = make_tiny_model("llama")
    calls = []
    hook = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="out of range.*2 key/value heads"):
            TransformerActivationEncoder(model, tok, parts="attn_k", heads=[3]).fit(TEXTS)
        with pytest.raises(ValueError, match="4 attention heads"):
            TransformerActivationEncoder(model, tok, parts="attn_z", heads=4).fit(TEXTS)
        with pytest.raises(ValueError, match="did you mean.*attn_entropy"):
            TransformerActivationEncoder(model, tok, parts="attn_entrpy").fit(TEXTS)
        with pytest.raises(ValueError, match="different widths.*one encoder per width"):
            TransformerActivationEncoder(model, tok, parts=["attn_z", "resid_post"]).fit(TEXTS)
        with pytest.raises(ValueError, match="applies to attention parts"):
            TransformerActivationEncoder(model, tok, parts="resid_post", heads=1).fit(TEXTS)
        with pytest.raises(ValueError, match="attention_patterns"):
            TransformerActivationEncoder(model, tok, parts="hook_pattern").fit(TEXTS)
        with pytest.raises(ValueError, match=r"layers=\[1\]"):
            TransformerActivationEncoder(model, tok, parts="blocks.1.attn.hook_z").fit(TEXTS)
    finally:
        hook.remove()
    assert calls == []


def test_threads_share_one_model_and_leave_it_as_it_was():
    from concurrent.futures import ThreadPoolExecutor

    model, tok = make_tiny_model("llama", padding_side="left")
    encs = [TransformerActivationEncoder(model, tok, parts=p, heads="all", batch_size=1).fit()
            for p in (["attn_q"], ["attn_entropy", "attn_sink"], ["resid_post"], ["attn_z"])]
    texts = TEXTS * 2
    serial = [e.transform(texts) for e in encs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda e: e.transform(texts), encs * 2))
    for got, want in zip(parallel, serial * 2):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert model.config._attn_implementation == "eager"
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_sdpa_kept_and_no_pattern_unless_asked(monkeypatch):
    """q/k/v and norm metrics run the model's SDPA and never the eager softmax; a pattern
    metric computes the pattern for the requested layers only."""
    from transformers import AttentionInterface
    from transformers.models.llama import modeling_llama

    model, tok = make_tiny_model("llama")
    model = copy.deepcopy(model)
    model.set_attn_implementation("sdpa")
    calls = {"sdpa": 0, "eager": 0}
    sdpa, eager = AttentionInterface._global_mapping["sdpa"], modeling_llama.eager_attention_forward

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", count("sdpa", sdpa))
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", count("eager", eager))
    TransformerActivationEncoder(model, tok, parts=["attn_q"], batch_size=4, verify=False).fit_transform(TEXTS)
    TransformerActivationEncoder(model, tok, parts=["attn_value_norm"], verify=False,
                                 batch_size=4).fit_transform(TEXTS)
    # layers 0, 1 and 2, twice: the forward stops once the block holding the last module read
    # has ended (a module running twice in it would be seen)
    assert calls == {"sdpa": 6, "eager": 0}
    TransformerActivationEncoder(model, tok, parts=["attn_entropy"], layers=[1], verify=False,
                                 batch_size=4).fit_transform(TEXTS)
    # one layer's pattern, whose eager call also gives that layer's output: no SDPA there
    assert calls == {"sdpa": 7, "eager": 1}


def test_attn_result_of_a_disk_offloaded_model(tmp_path):
    """accelerate keeps an offloaded projection's weight on the meta device between forwards;
    attn_result and attn_result_norm read it from the offload folder."""
    pytest.importorskip("accelerate", minversion="1.1")
    from embetter_plug.testing import save_tiny_model

    folder = str(save_tiny_model("gpt2", tmp_path / "gpt2"))
    kw = {"device_map": "auto", "max_memory": {"cpu": "200KB"},
          "offload_folder": str(tmp_path / "off")}
    for part, pooling in [("attn_result", "mean"), ("attn_result", "max"),
                          ("attn_result_norm", "mean")]:
        big = TransformerActivationEncoder(folder, parts=part, layers=[0, 2],
                                           token_pooling=pooling, model_kwargs=kw).fit()
        assert "disk" in set(big.model_.hf_device_map.values())
        assert big.model_.h[2].attn.c_proj.weight.device.type == "meta"
        ref = TransformerActivationEncoder(folder, parts=part, layers=[0, 2],
                                           token_pooling=pooling).fit()
        np.testing.assert_allclose(big.transform(TEXTS), ref.transform(TEXTS), atol=1e-5)
