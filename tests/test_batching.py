"""Chunked tokenization and its background prefetch, checked against direct computation."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

from embetter_plug import TransformerActivationEncoder
from embetter_plug.extraction import batching as _batching


def test_prefetch_computes_the_next_item_while_the_current_one_is_used():
    started = [threading.Event() for _ in range(3)]

    def items():
        for k in range(3):
            started[k].set()
            yield k

    got = []
    for k in _batching.prefetch(items()):
        got.append(k)
        if k < 2:
            # without a background thread item k + 1 would not start until asked for
            assert started[k + 1].wait(timeout=10), "next item was not computed ahead"
    assert got == [0, 1, 2]
    assert list(_batching.prefetch(iter([]))) == []


def test_prefetch_reraises_errors_from_the_producer():
    def items():
        yield 1
        raise RuntimeError("tokenizer failed")

    it = _batching.prefetch(items())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="tokenizer failed"):
        next(it)


def test_plan_chunks_sorts_within_chunks_and_covers_every_row_once(monkeypatch, tiny_gpt2, texts):
    _, tok = tiny_gpt2
    monkeypatch.setattr(_batching, "chunk_size", lambda batch_size: 7)
    plans = list(_batching.plan_chunks(tok, texts, "", "", 512, 3))
    assert len(plans) == int(np.ceil(len(texts) / 7))
    batches = [b for p in plans for b in p.batches]
    assert len(batches) == _batching.n_batches(len(texts), 3)
    rows = np.concatenate([idx for idx, _ in batches])
    assert sorted(rows.tolist()) == list(range(len(texts)))
    direct = tok(texts)["input_ids"]
    for c, plan in enumerate(plans):
        chunk_rows = np.concatenate([idx for idx, _ in plan.batches])
        assert set(chunk_rows.tolist()) == set(range(7 * c, min(len(texts), 7 * c + 7)))
        lengths = [len(direct[i]) for i in chunk_rows]
        assert lengths == sorted(lengths, reverse=True)  # longest first within the chunk
        for idx, seqs in plan.batches:
            assert seqs == [direct[i] for i in idx]


@pytest.mark.parametrize("n_texts,batch_size", [(0, 4), (1, 4), (4096, 32), (5000, 32), (9000, 1000)])
def test_n_batches_counts_what_plan_chunks_forms(n_texts, batch_size):
    size = _batching.chunk_size(batch_size)
    expected = sum(int(np.ceil(min(size, n_texts - lo) / batch_size))
                   for lo in range(0, n_texts, size))
    assert _batching.n_batches(n_texts, batch_size) == expected


def test_chunked_encoding_equals_one_chunk(monkeypatch, tiny_gpt2, texts):
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok, parts=["resid_post", "mlp_out"],
                                       batch_size=2).fit()
    whole = enc.transform(texts)
    monkeypatch.setattr(_batching, "chunk_size", lambda batch_size: 5)
    np.testing.assert_allclose(enc.transform(texts), whole, rtol=1e-5, atol=1e-6)


def test_truncation_warning_comes_once_across_chunks(monkeypatch, tiny_gpt2, caplog):
    model, tok = tiny_gpt2
    monkeypatch.setattr(_batching, "chunk_size", lambda batch_size: 2)
    long = " ".join(["dataset"] * 600)  # over the model's 512 positions
    texts = ["short", long, long + " a", "tiny", long + " b", "end"]
    enc = TransformerActivationEncoder(model, tok, batch_size=1).fit()
    with warnings.catch_warnings(record=True) as w, caplog.at_level("INFO", "embetter_plug"):
        warnings.simplefilter("always")
        enc.transform(texts)
    msgs = [str(x.message) for x in w if "truncated" in str(x.message)]
    assert len(msgs) == 1  # said once, when the first chunk with a long text is tokenized
    # each chunk's count is logged (texts run in sorted order after deduplication: the first
    # chunk holds two long ones, the second one)
    assert "2 text(s) longer than max_length=512 tokens truncated (2 of 6" in caplog.text
    assert "1 text(s) longer than max_length=512 tokens truncated (4 of 6" in caplog.text


def test_encoder_tokenizes_ahead_in_a_thread_where_prefetch_is_on(monkeypatch, tiny_gpt2, texts):
    model, tok = tiny_gpt2
    enc = TransformerActivationEncoder(model, tok, batch_size=2).fit()
    whole = enc.transform(texts)
    threads = []
    original = _batching.tokenize

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(_batching, "tokenize", spy)
    monkeypatch.setattr(_batching, "chunk_size", lambda batch_size: 5)
    enc.transform(texts)
    assert threads and all(t == "MainThread" for t in threads)  # the CPU path: no thread
    threads.clear()
    monkeypatch.setattr(_batching, "PREFETCH_ON", ("cpu",))  # as on CUDA
    np.testing.assert_allclose(enc.transform(texts), whole, rtol=1e-5, atol=1e-6)
    assert len(threads) == 5 and all(t.startswith("embetter-tokenize") for t in threads)
