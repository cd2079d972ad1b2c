"""The CUDA batch loop: scheduling checked on the CPU; results checked where CUDA exists."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from embetter_plug.extraction._gpu import overlapped_batches


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


def test_cuda_branch_waits_on_each_copy_event_once_and_late(monkeypatch):
    """The ``cuda=True`` branch with CUDA's event and pinned allocation stood in for on the CPU:
    each result is copied into a pinned host buffer, its event is recorded right after the copy
    is queued, and it is waited on only when that batch is handed out (one batch later)."""
    log = []

    class FakeEvent:
        count = 0

        def __init__(self):
            FakeEvent.count += 1
            self.k = FakeEvent.count - 1

        def record(self):
            log.append(("record", self.k))

        def synchronize(self):
            log.append(("sync", self.k))

    real_empty = torch.empty

    def empty(*shape, pin_memory=False, **kw):
        log.append(("pinned",) if pin_memory else ("unpinned",))
        return real_empty(*shape, **kw)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch, "empty", empty)

    def prepare(idx, pin):
        assert pin is True  # host tensors are pinned before their copy on the CUDA path
        return idx, {"x": torch.tensor([float(idx)])}, None

    def run(kwargs, mask):
        log.append(("run", int(kwargs["x"])))
        return kwargs["x"] * 10

    out = []
    for idx, acts in overlapped_batches(prepare, run, iter([0, 1, 2]), cuda=True):
        log.append(("collect", idx))
        out.append((idx, acts.tolist()))
    assert out == [(0, [0.0]), (1, [10.0]), (2, [20.0])]
    assert log == [("run", 0), ("pinned",), ("record", 0),
                   ("run", 1), ("pinned",), ("record", 1), ("sync", 0), ("collect", 0),
                   ("run", 2), ("pinned",), ("record", 2), ("sync", 1), ("collect", 1),
                   ("sync", 2), ("collect", 2)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("chunk", [None, 5])  # 5: several chunks, tokenized ahead in a thread
def test_cuda_path_matches_cpu(family, chunk, texts, monkeypatch):
    from embetter_plug import TransformerActivationEncoder
    from embetter_plug.extraction import batching as _batching
    from embetter_plug.testing import make_tiny_model

    if chunk is not None:
        monkeypatch.setattr(_batching, "chunk_size", lambda batch_size: chunk)
    model, tok = make_tiny_model(family)
    kw = dict(parts=["resid_post", "mlp_out"], batch_size=5, dtype="float32")
    cpu = TransformerActivationEncoder(model, tok, device="cpu", **kw).fit().transform(texts)
    gpu_model = copy.deepcopy(model)  # the shared tiny model stays on the CPU
    gpu = TransformerActivationEncoder(gpu_model, tok, device="cuda", **kw).fit().transform(texts)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
