"""The CUDA batch loop: scheduling checked on the CPU; results checked where CUDA exists."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from embetter_plug._gpu import overlapped_batches


def test_next_batch_is_prepared_before_the_current_result_is_collected():
    log = []

    def prepare(idx, pin):
        log.append(("prepare", idx))
        return idx, {"x": torch.tensor([float(idx)])}, None

    def run(kwargs, mask):
        log.append(("run", int(kwargs["x"])))
        return kwargs["x"] * 10

    out = []
    for idx, acts in overlapped_batches(prepare, run, [0, 1, 2], cuda=False):
        log.append(("collect", idx))
        out.append((idx, acts.tolist()))
    assert out == [(0, [0.0]), (1, [10.0]), (2, [20.0])]
    assert log == [("prepare", 0), ("run", 0), ("prepare", 1), ("run", 1), ("prepare", 2),
                   ("collect", 0), ("run", 2), ("collect", 1), ("collect", 2)]
    assert list(overlapped_batches(prepare, run, [], cuda=False)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_cuda_path_matches_cpu(family, texts):
    from embetter_plug import TransformerActivationEncoder
    from embetter_plug.testing import make_tiny_model

    model, tok = make_tiny_model(family)
    kw = dict(parts=["resid_post", "mlp_out"], batch_size=5, dtype="float32")
    cpu = TransformerActivationEncoder(model, tok, device="cpu", **kw).fit().transform(texts)
    gpu_model = copy.deepcopy(model)  # the shared tiny model stays on the CPU
    gpu = TransformerActivationEncoder(gpu_model, tok, device="cuda", **kw).fit().transform(texts)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
