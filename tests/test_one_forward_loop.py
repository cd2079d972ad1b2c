"""Every forward that reads a model for extraction runs in the extractor's one batch loop."""

import threading

import numpy as np
import pytest

from embetter_plug.extraction import extractor as extraction
from embetter_plug.attention.patterns import attention_metrics, attention_patterns
from embetter_plug.attention.image import image_attention
from embetter_plug.testing import make_tiny_model, make_tiny_vlm

TEXTS = ["a first text here", "b", "a third, somewhat longer text of several words"]


@pytest.fixture
def loop(monkeypatch):
    """Runs of ``ActivationExtractor._batches`` (the sink of each), delegated unchanged, and
    a ``watch(model)`` that records, for each forward of ``model``, whether it ran inside one."""
    original = extraction.ActivationExtractor._batches
    state = threading.local()
    runs, forwards, hooks = [], [], []

    def spy(self, texts, **kwargs):
        runs.append(kwargs.get("sink"))
        inner = original(self, texts, **kwargs)
        while True:
            state.inside = True
            try:
                item = next(inner)
            except StopIteration:
                return
            finally:
                state.inside = False
            yield item

    def watch(model):  # every forward embeds its tokens first
        hooks.append(model.get_input_embeddings().register_forward_pre_hook(
            lambda *a: forwards.append(getattr(state, "inside", False))))

    monkeypatch.setattr(extraction.ActivationExtractor, "_batches", spy)
    yield runs, forwards, watch
    for h in hooks:
        h.remove()


def test_attention_patterns_run_in_the_extractors_loop(loop):
    runs, forwards, watch = loop
    model, tok = make_tiny_model("llama", padding_side="left")
    watch(model)
    pats = attention_patterns(model, tok, TEXTS, layers=[0, 2], batch_size=2)
    assert len(runs) == 1 and runs[0] is not None  # one loop, with the pattern sink
    assert forwards == [True, True]  # two batches, both inside the loop
    assert [len(p.tokens) for p in pats] == [len(tok(t)["input_ids"]) for t in TEXTS]
    np.testing.assert_allclose(pats[0].pattern.sum(-1), 1.0, atol=1e-5)


def test_attention_metrics_run_in_the_extractors_loop(loop):
    runs, forwards, watch = loop
    model, tok = make_tiny_model("gpt2")
    watch(model)
    frame = attention_metrics(model, tok, TEXTS, metrics=["attn_entropy", "attn_sink"],
                              layers=[0, 1], batch_size=2, verify=False)
    assert len(runs) == 1 and runs[0] is None  # the pooled capture: metrics are parts
    assert forwards == [True, True]
    assert len(frame) == len(TEXTS) * 2 * 4 * 2


def test_image_attention_runs_in_the_extractors_loop(loop):
    runs, forwards, watch = loop
    model, processor = make_tiny_vlm("llava")
    watch(model)
    picture = np.random.RandomState(0).randint(0, 255, (30, 24, 3)).astype("uint8")
    att = image_attention(model, processor, {"text": "a cat", "image": picture}, layers=[0])
    assert len(runs) == 1 and runs[0] is not None
    assert forwards == [True]
    assert att.grids[0].shape == (1, 4, 4, 4)


def test_the_cuda_loop_passes_a_sinks_host_results_on():
    """A sink that hands back host objects (patterns) needs no pinned copy in the CUDA loop."""
    from embetter_plug.extraction import _gpu

    batches = [(np.array([0, 1]), "a"), (np.array([2]), "b")]
    out = list(_gpu.overlapped_batches(lambda b, pin: (b[0], {"x": b[1]}, None),
                                       lambda kwargs, mask: [kwargs["x"]], batches, cuda=True))
    assert [(i.tolist(), r) for i, r in out] == [([0, 1], ["a"]), ([2], ["b"])]
