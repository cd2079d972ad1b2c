"""TransformerActivationEncoder against independent truth: unpadded manual forwards per text."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pandas as pd
import pytest
import sklearn
import torch
from sklearn.pipeline import make_pipeline

from conftest import assert_same_activations
from embetter_plug import LayerPooler, TransformerActivationEncoder
from embetter_plug.testing import FAMILIES, is_decoder_family, make_tiny_model

PRE_NORM = [f for f in FAMILIES if is_decoder_family(f)]
FINAL_NORM = {"gpt2": "ln_f", "gpt_neox": "final_layer_norm", "phi": "final_layernorm",
              "opt": "decoder.final_layer_norm",
              **{f: "norm" for f in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
                                     "gemma3_text")}}
PARTS = ["resid_pre", "attn_out", "mlp_out", "resid_post"]


@functools.lru_cache(maxsize=None)
def _reference_copy(model):
    """A copy for the manual forwards: transformers leaves (unpicklable) output-capturing hooks
    on a model after ``output_hidden_states=True``; the shared test models stay clean."""
    return copy.deepcopy(model)


def manual_states(model, tok, text):
    """Per-token hidden states of one text, no padding: HF's own output_hidden_states."""
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = _reference_copy(model)(**enc, output_hidden_states=True)
    return [h[0].numpy() for h in out.hidden_states]  # n_layers + 1 entries of (T, H)


def np_pool(h, how):
    """NumPy reference token pooling of one text's (T, H) states."""
    if how == "mean":
        return h.mean(0)
    if how == "max":
        return h.max(0)
    if how == "min":
        return h.min(0)
    if how in ("cls", "first"):
        return h[0]
    if how == "lasttoken":
        return h[-1]
    return h[int(round(how * (len(h) - 1)))]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", FAMILIES)
def test_resid_post_equals_manual_forward(family, side, texts):
    model, tok = make_tiny_model(family, padding_side=side)
    pooling = "lasttoken" if is_decoder_family(family) else "mean"
    enc = TransformerActivationEncoder(model, tok, parts=PARTS, batch_size=5)
    X = enc.fit_transform(texts)
    assert enc.poolings_ == [pooling]  # "auto" resolved by family
    assert X.dtype == np.float32 and X.shape == (len(texts), 3, 4, 32)
    last = model.config.num_hidden_layers - 1
    for i, text in enumerate(texts):
        hs = manual_states(model, tok, text)
        np.testing.assert_allclose(X[i, 0, 0], np_pool(hs[0], pooling), atol=2e-5)  # resid_pre[0]
        for layer in range(last):
            np.testing.assert_allclose(X[i, layer, 3], np_pool(hs[layer + 1], pooling), atol=2e-5)
            np.testing.assert_allclose(X[i, layer + 1, 0], X[i, layer, 3], atol=1e-6)
        if family in FINAL_NORM:  # HF's last entry has the final norm applied; ours must not
            norm = model.get_submodule(FINAL_NORM[family])
            with torch.no_grad():
                normed = norm(torch.from_numpy(X[i, last, 3])[None])[0].numpy()
            np.testing.assert_allclose(normed, hs[-1][-1], atol=5e-5)
            assert not np.allclose(X[i, last, 3], hs[-1][-1], atol=1e-3)
        else:
            np.testing.assert_allclose(X[i, last, 3], np_pool(hs[-1], pooling), atol=2e-5)


@pytest.mark.parametrize("family", PRE_NORM)
@pytest.mark.parametrize("pooling", ["lasttoken", "mean"])
def test_residual_identity_pre_norm(family, pooling, texts):
    model, tok = make_tiny_model(family)
    X = TransformerActivationEncoder(model, tok, parts=PARTS, token_pooling=pooling).fit_transform(texts)
    np.testing.assert_allclose(X[:, :, 0] + X[:, :, 1] + X[:, :, 2], X[:, :, 3], atol=2e-5)
    assert np.abs(X[:, :, 1]).max() > 1e-3 and np.abs(X[:, :, 2]).max() > 1e-3


def test_post_norm_sublayers_are_before_add_and_norm(texts):
    """BERT: resid_post == LN2(mlp_out + LN1(attn_out + resid_pre)) token by token."""
    model, tok = make_tiny_model("bert")
    X = TransformerActivationEncoder(model, tok, parts=PARTS, token_pooling="cls").fit_transform(texts)
    for layer, block in enumerate(model.encoder.layer):
        pre, attn, mlp, post = (torch.from_numpy(X[:, layer, j]) for j in range(4))
        with torch.no_grad():
            mid = block.attention.output.LayerNorm(attn + pre)
            expect = block.output.LayerNorm(mlp + mid)
        np.testing.assert_allclose(post.numpy(), expect.numpy(), atol=2e-5)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_all_poolings_match_numpy_reference(family, texts):
    model, tok = make_tiny_model(family, padding_side="left")
    poolings = ["mean", "max", "min", "cls", "lasttoken", 0.5, 0.25]
    enc = TransformerActivationEncoder(model, tok, layers=[1], token_pooling=poolings)
    X = enc.fit_transform(texts[:8])
    assert enc.layout_.parts == tuple(
        f"resid_post@{p}" for p in ["mean", "max", "min", "cls", "lasttoken", "pos0.5", "pos0.25"])
    for i, text in enumerate(texts[:8]):
        h = manual_states(model, tok, text)[2]
        for j, p in enumerate(poolings):
            np.testing.assert_allclose(X[i, 0, j], np_pool(h, p), atol=2e-5, err_msg=str(p))


def test_independent_of_batch_size_order_and_padding_side(texts):
    model, tok_r = make_tiny_model("llama", padding_side="right")
    _, tok_l = make_tiny_model("llama", padding_side="left")
    kw = dict(parts=["resid_post", "mlp_out"], token_pooling=["mean", "lasttoken"])
    base = TransformerActivationEncoder(model, tok_r, batch_size=1, **kw).fit_transform(texts)
    other = TransformerActivationEncoder(model, tok_l, batch_size=7, **kw).fit(texts)
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(other.transform([texts[i] for i in perm]), base[perm], atol=2e-5)


def test_duplicates_are_computed_once_and_returned_in_place(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok).fit()
    calls = []
    h = model.h[0].register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        X = enc.transform([texts[0], texts[1], texts[0]])
    finally:
        h.remove()
    assert sum(calls) == 2
    assert_same_activations(X[0], X[2])


def test_forward_stops_after_deepest_requested_layer(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    ran = {"h1": 0, "h2": 0, "ln_f": 0}
    n_before = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    hooks = [model.h[1].register_forward_hook(lambda *a: ran.__setitem__("h1", ran["h1"] + 1)),
             model.h[2].register_forward_hook(lambda *a: ran.__setitem__("h2", ran["h2"] + 1)),
             model.ln_f.register_forward_hook(lambda *a: ran.__setitem__("ln_f", ran["ln_f"] + 1))]
    try:
        TransformerActivationEncoder(model, tok, layers=[0], parts="mlp_out",
                                     verify=False).fit_transform(texts[:4])
        assert ran == {"h1": 0, "h2": 0, "ln_f": 0}
        TransformerActivationEncoder(model, tok, layers=[1], parts="resid_pre",
                                     verify=False).fit_transform(texts[:4])
        assert ran["h1"] == 0  # resid_pre of block 1 is its input: block 1 itself never runs
    finally:
        for h in hooks:
            h.remove()
    n_after = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]
    assert n_after == n_before  # the encoder's hooks are all removed


def test_module_paths_and_fixed_paths(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(
        model, tok, layers=[0, 2], token_pooling="mean",
        parts=["mlp_out", "transformer.h.{layer}.mlp", "h.1.attn"])
    X = enc.fit_transform(texts[:6])
    np.testing.assert_allclose(X[:, :, 0], X[:, :, 1], atol=1e-6)
    ref = TransformerActivationEncoder(model, tok, layers=[1], parts="attn_out",
                                       token_pooling="mean").fit_transform(texts[:6])
    np.testing.assert_allclose(X[:, 0, 2], ref[:, 0, 0], atol=1e-6)
    np.testing.assert_allclose(X[:, 1, 2], ref[:, 0, 0], atol=1e-6)  # repeats along layers
    with pytest.raises(ValueError, match=r"close matches: .*h\.1\.mlp"):
        TransformerActivationEncoder(model, tok, parts="h.1.mpl").fit()
    with pytest.raises(ValueError, match="hidden size"):
        TransformerActivationEncoder(model, tok, parts="h.{layer}.mlp.c_fc").fit_transform(texts[:2])


def test_local_folder_and_pickle_without_weights(tmp_path, texts):
    import pickle

    from embetter_plug.testing import save_tiny_model

    folder = save_tiny_model("llama", tmp_path / "tiny")
    model, tok = make_tiny_model("llama")
    ref = TransformerActivationEncoder(model, tok).fit_transform(texts[:5])
    enc = TransformerActivationEncoder(str(folder)).fit()
    np.testing.assert_allclose(enc.transform(texts[:5]), ref, atol=1e-5)
    blob = pickle.dumps(enc)
    n_weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert len(blob) < n_weight_bytes / 4  # weights are not in the pickle
    again = pickle.loads(blob)
    assert "model_" not in vars(again)
    np.testing.assert_allclose(again.transform(texts[:5]), ref, atol=1e-5)


def test_a_relative_folder_survives_a_pickle_loaded_elsewhere(tmp_path, texts, monkeypatch):
    import pickle
    import shutil

    from embetter_plug.testing import save_tiny_model

    save_tiny_model("gpt2", tmp_path / "work" / "gpt2")  # a folder named like a hub model
    monkeypatch.chdir(tmp_path / "work")
    enc = TransformerActivationEncoder("gpt2").fit()
    ref = enc.transform(texts[:3])
    blob = pickle.dumps(enc)
    monkeypatch.chdir(tmp_path)  # elsewhere, where "gpt2" is no folder
    assert_same_activations(pickle.loads(blob).transform(texts[:3]), ref)
    assert enc.layout_.meta["model"] == str(tmp_path / "work" / "gpt2")
    shutil.move(tmp_path / "work" / "gpt2", tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=r"model folder '.*work/gpt2' this estimator was "
                                                r"fitted with no longer exists; set model="):
        pickle.loads(blob).transform(texts[:3])


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a machine without CUDA")
def test_unpickled_on_a_machine_without_the_fitted_device(tmp_path, texts, caplog):
    import pickle

    from embetter_plug.testing import save_tiny_model

    folder = save_tiny_model("gpt2", tmp_path / "tiny")
    enc = TransformerActivationEncoder(str(folder)).fit()
    ref = enc.transform(texts[:3])
    enc.device_ = torch.device("cuda")  # as if it had been fitted on a GPU with device="auto"
    auto = pickle.loads(pickle.dumps(enc))
    with caplog.at_level("WARNING", logger="embetter_plug"):
        np.testing.assert_allclose(auto.transform(texts[:3]), ref, atol=1e-6)
    assert auto.device_.type == "cpu" and "lacks" in caplog.text
    enc.device = "cuda"  # fitted with an explicit device: no silent move
    pinned = pickle.loads(pickle.dumps(enc))
    with pytest.raises(ValueError, match=r"fitted on cuda \(device='cuda'\).*fit again"):
        pinned.transform(texts[:3])


def test_bfloat16_is_close_and_recorded(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    ref = TransformerActivationEncoder(model, tok).fit_transform(texts[:8])
    enc = TransformerActivationEncoder(model, tok, dtype="bfloat16").fit()
    X = enc.transform(texts[:8])
    assert enc.layout_.meta["dtype"] == "bfloat16" and X.dtype == np.float32
    rel = np.linalg.norm(X - ref) / np.linalg.norm(ref)
    assert 0 < rel < 0.05
    assert next(model.parameters()).dtype == torch.float32  # the user's model is not converted


def test_flatten_feature_names_and_layout(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok, layers=[-1, 0], parts=["rs", "attn"], flatten=True)
    X = enc.fit_transform(texts[:3])
    assert enc.layout_.layers == (2, 0) and enc.layout_.parts == ("resid_post", "attn_out")
    names = enc.get_feature_names_out()
    assert X.shape == (3, 2 * 2 * 32) and len(names) == X.shape[1]
    assert names[0] == "layer2__resid_post__0" and names[32] == "layer2__attn_out__0"
    assert names[-1] == "layer0__attn_out__31"


@pytest.mark.slow
def test_minilm_mean_pooling_matches_sentence_transformers(minilm_path):
    from sentence_transformers import SentenceTransformer

    from embetter_plug import load_builtin_dataset

    texts = load_builtin_dataset("test")["text"].tolist()[:48]
    st = SentenceTransformer(minilm_path, device="cpu")
    unnormalised = SentenceTransformer(modules=[st[0], st[1]], device="cpu")
    ref = unnormalised.encode(texts, batch_size=16, convert_to_numpy=True)
    enc = TransformerActivationEncoder(layers=-1, batch_size=16, device="cpu").fit()
    X = enc.transform(texts)
    assert enc.poolings_ == ["mean"]
    np.testing.assert_allclose(X[:, 0, 0], ref, atol=2e-5)


def test_set_output_pandas(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    df = TransformerActivationEncoder(model, tok, layers=[1], flatten=True).set_output(
        transform="pandas").fit_transform(texts[:3])
    assert df.shape == (3, 32) and df.columns[0] == "layer1__resid_post__0"
    # the index of a pandas input is kept
    series = pd.Series(texts[:3], index=[10, 20, 30])
    df = TransformerActivationEncoder(model, tok, layers=[1], flatten=True).set_output(
        transform="pandas").fit_transform(series)
    assert list(df.index) == [10, 20, 30]
    assert_same_activations(
        df.to_numpy(), TransformerActivationEncoder(model, tok, layers=[1]).fit_transform(
            texts[:3]).reshape(3, -1))
    # 4-D activations cannot be a DataFrame: they pass through, so a pipeline's set_output works
    enc = TransformerActivationEncoder(model, tok).set_output(transform="pandas").fit()
    assert isinstance(enc.transform(texts[:3]), np.ndarray)
    pipe = make_pipeline(TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"]),
                         LayerPooler(layers=[1], parts=[1])).set_output(transform="pandas")
    out = pipe.fit_transform(texts[:3])
    assert isinstance(out, pd.DataFrame) and out.shape == (3, 32)
    assert_same_activations(out.to_numpy(), pipe[0].transform(texts[:3])[:, 1, 1])
    with sklearn.config_context(transform_output="pandas"):
        out = make_pipeline(TransformerActivationEncoder(model, tok), LayerPooler()).fit_transform(
            texts[:3])
    assert isinstance(out, pd.DataFrame) and out.shape == (3, 3 * 32)
    with pytest.raises(ValueError, match=r"set_output\(transform='arrow'\) is not supported"):
        enc.set_output(transform="arrow")
