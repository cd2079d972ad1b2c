"""The extraction core: threads, hooks that fire twice, one identity, models left as given,
clones sharing the model, pooling over the text only."""

from __future__ import annotations

import copy
import pickle
import threading
import warnings

import numpy as np
import pytest
import torch

from conftest import assert_same_activations
from embetter_plug import ActivationCache, TransformerActivationEncoder, load_activations
from embetter_plug.extraction.extractor import ActivationExtractor
from embetter_plug.extraction.identity import load_identity
from embetter_plug.testing import make_tiny_model, save_tiny_model


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    return str(save_tiny_model("gpt2", tmp_path_factory.mktemp("m") / "gpt2"))


def test_concurrent_transforms_on_one_encoder_each_get_their_own_rows(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok, layers=[0, 2], parts=["resid_post", "mlp_out"],
                                       token_pooling="mean", batch_size=3).fit()
    # differently sized inputs, so batches differ in shape between the threads
    inputs = [texts[i:i + 4 + i % 5] for i in range(10)]
    expected = [enc.transform(t) for t in inputs]
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    results, errors = [None] * len(inputs), []

    def work(k):
        try:
            for _ in range(3):
                results[k] = enc.transform(inputs[k])
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for got, want in zip(results, expected):
        assert_same_activations(got, want)
    # nothing left behind
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks


def test_a_module_that_runs_twice_per_forward_is_a_clear_error(texts):
    model, tok = make_tiny_model("phi")  # resid_dropout serves both the attention and the MLP
    enc = TransformerActivationEncoder(model, tok, parts="layers.{layer}.resid_dropout",
                                       verify=False).fit()  # the error of transform
    with pytest.raises(RuntimeError, match=r"'layers\.0\.resid_dropout'.*ran 2 times in one "
                                           r"forward pass"):
        enc.transform(texts[:2])


def test_model_kwargs_are_part_of_the_cache_key_and_the_manifest(gpt2_folder, texts, tmp_path):
    plain = TransformerActivationEncoder(gpt2_folder, layers=[1], cache=tmp_path / "c").fit()
    other = TransformerActivationEncoder(gpt2_folder, layers=[1], cache=tmp_path / "c",
                                         model_kwargs={"layer_norm_epsilon": 10.0}).fit()
    assert plain.identity_ != other.identity_
    a, b = plain.transform(texts[:4]), other.transform(texts[:4])
    assert np.abs(a - b).max() > 1e-3  # not the default run's vectors read back
    reference = TransformerActivationEncoder(gpt2_folder, layers=[1],
                                             model_kwargs={"layer_norm_epsilon": 10.0}).fit()
    assert_same_activations(b, reference.transform(texts[:4]))
    # a streamed folder of one model does not take shards of the other
    plain.extract_to(tmp_path / "s", texts[:4])
    with pytest.raises(ValueError, match="differs in.*source"):
        other.extract_to(tmp_path / "s", texts[:4])


def test_a_hub_model_is_keyed_by_its_resolved_commit(tiny_gpt2):
    model, tok = tiny_gpt2
    twin = copy.deepcopy(model)
    model.config._commit_hash, twin.config._commit_hash = "a" * 40, "b" * 40
    try:
        one = load_identity(model, tok, source="org/name")
        two = load_identity(twin, tok, source="org/name")
        assert one["model"] != two["model"]  # revision=None follows 'main', which moved
        assert one == load_identity(model, tok, source="org/name")
    finally:
        model.config._commit_hash = None


def test_weights_changed_since_fit_are_an_error_on_reload(tmp_path, texts):
    folder = save_tiny_model("gpt2", tmp_path / "m")
    enc = TransformerActivationEncoder(str(folder), layers=[0]).fit()
    blob = pickle.dumps(enc)
    model, _ = make_tiny_model("gpt2", seed=1)
    model.save_pretrained(folder)  # other weights in the same folder
    with pytest.raises(ValueError, match="changed since fit"):
        pickle.loads(blob).transform(texts[:2])


def test_a_given_model_is_left_as_it_was(texts):
    model, tok = make_tiny_model("llama")
    model = copy.deepcopy(model)
    model.train()
    impl = model.config._attn_implementation
    enc = TransformerActivationEncoder(model, tok, layers=[1], dtype="float32").fit()
    X = enc.transform(texts[:3])
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert model.config._attn_implementation == impl
    assert next(model.parameters()).device.type == "cpu"
    model.eval()
    with torch.no_grad():  # eval mode was used: dropout off, the same as an eval model
        assert_same_activations(X, TransformerActivationEncoder(model, tok, layers=[1])
                                .fit().transform(texts[:3]))


def test_device_map_and_disk_offloaded_models_are_never_moved(gpt2_folder, texts, tmp_path):
    pytest.importorskip("accelerate")
    ref = TransformerActivationEncoder(gpt2_folder, parts=["resid_post", "mlp_out"]).fit()
    # the embeddings stay in memory, the blocks are offloaded to disk (a model placed entirely
    # on disk cannot be loaded by transformers 4.x)
    kw = {"device_map": "auto", "max_memory": {"cpu": "200KB"},
          "offload_folder": str(tmp_path / "off")}
    big = TransformerActivationEncoder(gpt2_folder, parts=["resid_post", "mlp_out"],
                                       model_kwargs=kw).fit()
    assert getattr(big.model_, "hf_device_map", None)
    assert "disk" in set(big.model_.hf_device_map.values())
    assert big.model_.hf_device_map.get("h", big.model_.hf_device_map.get("h.2")) == "disk"
    assert big.identity_ == ref.identity_  # placement does not change the vectors' identity
    assert_same_activations(big.transform(texts[:5]), ref.transform(texts[:5]))


def test_clones_share_a_given_model_and_loads_are_shared(tiny_gpt2, gpt2_folder):
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline

    from embetter_plug import LayerPooler

    model, tok = tiny_gpt2
    pipe = make_pipeline(TransformerActivationEncoder(model, tok), LayerPooler())
    copy_ = clone(pipe)
    assert copy_[0].model is model and copy_[0].tokenizer is tok  # no deep copy of the weights
    assert copy_[0] is not pipe[0] and copy_[1] is not pipe[1]
    a = TransformerActivationEncoder(gpt2_folder).fit()
    b = clone(a).fit()
    assert b.model_ is a.model_  # the same folder and settings: one loaded model
    c = TransformerActivationEncoder(gpt2_folder, model_kwargs={"layer_norm_epsilon": 1.0}).fit()
    assert c.model_ is not a.model_


def test_max_length_above_the_models_limit_warns(tiny_gpt2):
    model, tok = tiny_gpt2
    with pytest.warns(UserWarning, match="max_length=100000 is above the model's limit of 512"):
        enc = TransformerActivationEncoder(model, tok, max_length=100_000).fit()
    assert enc.max_length_ == 512
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TransformerActivationEncoder(model, tok, max_length=64).fit()


@pytest.mark.parametrize("family, side", [("gpt2", "left"), ("gpt2", "right"), ("bert", "right")])
def test_include_prompt_false_pools_the_texts_own_tokens(family, side, texts):
    model, tok = make_tiny_model(family, padding_side=side)
    template = "Question: {text} Answer:"
    enc = TransformerActivationEncoder(model, tok, layers=[1], token_pooling=["mean", "max"],
                                       prompt_template=template, include_prompt=False,
                                       batch_size=4).fit()
    X = enc.transform(texts[:6])
    reference = copy.deepcopy(model)  # transformers leaves capturing hooks behind on the model
    for i, text in enumerate(texts[:6]):
        full = template.format(text=text)
        enc_ = tok(full, return_offsets_mapping=True)
        start = len("Question: ")
        keep = [k for k, (s, e) in enumerate(enc_["offset_mapping"])
                if e > s and start <= s < start + len(text)]
        with torch.no_grad():
            h = reference(torch.tensor([enc_["input_ids"]]), output_hidden_states=True)
        states = h.hidden_states[2][0].numpy()[keep]  # block 1's output, text tokens only
        np.testing.assert_allclose(X[i, 0, 0], states.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(X[i, 0, 1], states.max(0), rtol=1e-4, atol=1e-5)
    # the default pools the template too
    with_prompt = TransformerActivationEncoder(model, tok, layers=[1], token_pooling="mean",
                                               prompt_template=template).fit()
    assert np.abs(with_prompt.transform(texts[:6])[:, 0, 0] - X[:, 0, 0]).max() > 1e-4


def test_probe_layers_names_the_blocks_the_encoder_read(tiny_gpt2, texts):
    from embetter_plug import probe_layers

    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok, layers=[0, 2], parts=["resid_post", "mlp_out"])
    X = enc.fit_transform(texts)
    y = np.arange(len(texts)) % 2
    res = probe_layers(X, y, cv=2, layers=[2], parts=["mlp_out"], dummy=False)
    assert set(res.frame_["layer"]) == {2} and set(res.frame_["part"]) == {"mlp_out"}
    with pytest.raises(ValueError, match=r"block 1 is not in the input; it holds blocks \[0, 2\]"):
        probe_layers(X, y, cv=2, layers=[1])


def test_the_extractor_is_the_one_path_and_matches_transform(tiny_gpt2, texts):
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok, layers=[0, 1], parts=["resid_post", "attn_out"],
                                       batch_size=5).fit()
    ext = ActivationExtractor(model, tok, layers=[0, 1], parts=["resid_post", "attn_out"],
                              poolings=enc.poolings_, max_length=enc.max_length_, batch_size=5)
    out = np.full((len(texts), *ext.shape), np.nan, dtype=np.float32)
    for idx, acts in ext.iter_batches(texts):
        out[idx] = acts
    assert_same_activations(out, enc.transform(texts))
    assert ext.vector_names()[:2] == ["0|resid_post|lasttoken", "0|attn_out|lasttoken"]


def test_streamed_and_cached_results_load_with_their_layout(gpt2_folder, texts, tmp_path):
    enc = TransformerActivationEncoder(gpt2_folder, layers=[0, 2], cache=ActivationCache(tmp_path / "c")).fit()
    X, layout = load_activations(enc.extract_to(tmp_path / "s", texts[:6]))
    assert layout.layers == (0, 2)
    assert_same_activations(X, enc.transform(texts[:6]))
