"""The identity of a model object is exact and taken at every cached transform: weights changed
after ``fit`` (an ablation, a training step, any single value) never bring old vectors back from
a cache, and hooks the identity cannot see are refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from embetter_plug import TransformerActivationEncoder
from embetter_plug.extraction.identity import check_cacheable, weights_digest
from embetter_plug.testing import make_tiny_model

TEXTS = ["the film was great", "a plot that made no sense", "short", "and one more text here"]


@pytest.fixture
def model_tok():
    model, tok = make_tiny_model("gpt2")
    return copy.deepcopy(model), tok  # private: the tests change its weights and hooks


def _direct(model, tok):
    """Truth: the same settings without a cache, on the model as it is now."""
    return TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"]).fit() \
        .transform(TEXTS)


def _cached(model, tok, folder):
    return TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"],
                                        cache=folder).fit()


def _zero_two_rows(model):
    model.h[1].mlp.c_fc.weight.data[5:7] = 0  # through .data: no version counter moves


def _update_all_in_place(model):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=gen))


def _one_value_between_samples(model):
    w = model.h[0].attn.c_attn.weight  # 32 x 96: a sample of 64 values leaves most out
    w.data.view(-1)[w.numel() // 64 + 1] += 0.5


@pytest.mark.parametrize("change", [_zero_two_rows, _update_all_in_place,
                                    _one_value_between_samples])
@pytest.mark.parametrize("refit", [False, True])
def test_weights_changed_after_fit_get_new_vectors_from_the_same_cache(change, refit, model_tok,
                                                                       tmp_path):
    model, tok = model_tok
    enc = _cached(model, tok, tmp_path)
    before = enc.transform(TEXTS)
    change(model)
    truth = _direct(model, tok)
    assert not np.allclose(truth, before, atol=1e-6)  # the change moves the vectors
    after = (_cached(model, tok, tmp_path) if refit else enc).transform(TEXTS)
    np.testing.assert_allclose(after, truth, atol=1e-5)


def test_a_training_step_after_fit_gets_new_vectors(model_tok, tmp_path):
    model, tok = model_tok
    enc = _cached(model, tok, tmp_path)
    before = enc.transform(TEXTS)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.tensor([[1, 2, 3, 4]])
    model.train()
    model(ids).last_hidden_state.pow(2).mean().backward()
    opt.step()
    model.eval()
    after = enc.transform(TEXTS)
    np.testing.assert_allclose(after, _direct(model, tok), atol=1e-5)
    assert not np.allclose(after, before, atol=1e-6)


def test_a_steering_hook_is_refused_with_a_cache_before_any_forward(model_tok, tmp_path):
    model, tok = model_tok
    enc = _cached(model, tok, tmp_path)
    enc.transform(TEXTS)
    calls = []

    def steer_hook(module, args, output):
        calls.append(1)
        return output + 1.0 if torch.is_tensor(output) else (output[0] + 1.0, *output[1:])

    steer = model.h[1].register_forward_hook(steer_hook)
    try:
        with pytest.raises(ValueError, match=r"cache= cannot be used while GPT2Model has forward "
                                             r"hooks .*\['h\.1 \(forward_hooks\)'\].*handle"):
            enc.transform(TEXTS)
        assert calls == []  # refused before the forward
        # without a cache the hook is honoured: the steered vectors come back
        steered = TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"]).fit()
        plain = steered.transform(TEXTS)
    finally:
        steer.remove()
    assert not np.allclose(plain, enc.transform(TEXTS), atol=1e-3)


def test_global_hooks_are_refused_and_the_encoders_own_hooks_are_not(model_tok, tmp_path):
    model, tok = model_tok
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: None)
    try:
        with pytest.raises(ValueError, match="every module"):
            check_cacheable(model)
    finally:
        handle.remove()
    check_cacheable(model)
    # a capture running in another thread holds hooks of the encoder's own: those are allowed
    from embetter_plug.extraction.hooks import hook_manager

    manager = hook_manager(model)
    with manager.attached({(id(model.h[0]), "post"): model.h[0]}):
        manager.check_others(lambda ours: check_cacheable(model, ours))
        with pytest.raises(ValueError, match=r"h\.0 \(forward_hooks\)"):
            check_cacheable(model)  # not knowing which are ours, the capture's hook is foreign
        enc = _cached(model, tok, tmp_path)
        np.testing.assert_allclose(enc.transform(TEXTS), _direct(model, tok), atol=1e-5)


def test_weights_digest_covers_buffers_and_adapter_state():
    model, _ = make_tiny_model("llama")
    model = copy.deepcopy(model)
    before = weights_digest(model)
    assert weights_digest(model) == before
    buf_name, buf = next(iter(model.named_buffers()))  # rotary inv_freq: not in state_dict
    buf.data[0] += 1
    assert weights_digest(model) != before
    buf.data[0] -= 1
    assert weights_digest(model) == before

    class Adapted(torch.nn.Module):  # the attributes PEFT's tuner layers carry
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.active_adapters = ["default"]
            self.disable_adapters = False

    m = Adapted()
    d0 = weights_digest(m)
    m.disable_adapters = True
    d1 = weights_digest(m)
    m.disable_adapters, m.active_adapters = False, ["other"]
    assert len({d0, d1, weights_digest(m)}) == 3


def test_a_disk_offloaded_model_instance_fits_and_is_identified_by_its_real_weights(tmp_path):
    """accelerate keeps offloaded weights on the meta device between forwards; the identity
    reads them from the offload folder: the same digest as the model loaded whole."""
    pytest.importorskip("accelerate", minversion="1.1")
    from transformers import AutoModel

    from embetter_plug.testing import save_tiny_model

    folder = str(save_tiny_model("gpt2", tmp_path / "gpt2"))
    big = AutoModel.from_pretrained(folder, device_map="auto", max_memory={"cpu": "200KB"},
                                    offload_folder=str(tmp_path / "off"))
    assert "disk" in set(big.hf_device_map.values())
    assert big.h[2].attn.c_proj.weight.device.type == "meta"
    whole = AutoModel.from_pretrained(folder)
    assert weights_digest(big) == weights_digest(whole)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    enc = TransformerActivationEncoder(big, tok, cache=tmp_path / "c").fit()
    ref = TransformerActivationEncoder(whole, tok).fit()
    assert enc.identity_ == ref.identity_
    np.testing.assert_allclose(enc.transform(TEXTS), ref.transform(TEXTS), atol=1e-5)
    np.testing.assert_allclose(enc.transform(TEXTS), ref.transform(TEXTS), atol=1e-5)  # read


def test_transformers_own_output_recording_hooks_are_not_refused(tmp_path):
    """transformers keeps hooks that record hidden states on some models (a vision tower after
    a forward with output_hidden_states): they never change an output, so a cache works."""
    from embetter_plug.testing import make_tiny_vlm

    model, processor = make_tiny_vlm("llava")
    tower = model.model.vision_tower
    with torch.no_grad():
        tower(pixel_values=torch.zeros(1, 3, 32, 32), output_hidden_states=True)
    recorders = [fn for m in model.modules() for fn in m._forward_hooks.values()
                 if fn.__module__ == "transformers.utils.output_capturing"]
    if not recorders:
        pytest.skip("this transformers version keeps no output-recording hooks")
    check_cacheable(model)
